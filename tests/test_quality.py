"""Quality flags (scfdata/quality/, `scfdata quality-shard` + `scfdata quality`) on generated datasets
written as real base shards: injected duplicates (within and across shards and files, on rounding
boundaries), near duplicates, energy and force outliers, dipole disagreements and renormalised charges are
all flagged, and clean configs are not; the fast search agrees with a brute-force comparison of all pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scfdata import fields, quality
from scfdata.cli import main
from scfdata.columns import Columns
from scfdata.h5io import write_columns
from scfdata.quality import keys as quality_keys

E0 = {1: -13.6, 6: -1029.0, 8: -2041.0}


def _clean_config(rng, source) -> dict:
    n = int(rng.integers(3, 17))
    numbers = rng.choice([1, 6, 8], n)
    pos = rng.uniform(0, 2.0 * n ** (1 / 3), (n, 3))
    q = rng.normal(0, 0.3, n)
    q -= q.mean()
    return {"numbers": numbers, "positions": pos, "energy": sum(E0[z] for z in numbers) + n * rng.normal(0, 0.01),
            "forces": rng.normal(0, 0.5, (n, 3)), "charges": q, "dipole": (q[:, None] * pos).sum(0),
            "cell": np.zeros((3, 3)), "pbc": np.zeros(3, bool), "source": source}


def _columns(configs: list[dict], extra_config: dict | None = None) -> Columns:
    n = len(configs)
    if not n:  # an empty shard: the bookkeeping arrays only
        cols = Columns(n_atoms=np.zeros(0, np.int64))
        cols.configs.update(cell=np.zeros((0, 3, 3)), pbc=np.zeros((0, 3), bool), source=np.zeros((0, 2), np.int64))
        cols.atoms.update(numbers=np.zeros(0, np.int64), positions=np.zeros((0, 3)))
        return cols
    cols = Columns(n_atoms=[len(c["numbers"]) for c in configs])
    cols.configs.update(
        cell=np.array([c["cell"] for c in configs]).reshape(n, 3, 3), pbc=np.array([c["pbc"] for c in configs]),
        source=np.array([c["source"] for c in configs], dtype=np.int64).reshape(n, 2),
        energy=np.array([c["energy"] for c in configs]), dipole=np.array([c["dipole"] for c in configs]).reshape(n, 3),
        total_charge=np.array([c.get("total_charge", 0.0) for c in configs]))
    cols.atoms.update(numbers=np.concatenate([c["numbers"] for c in configs]).astype(np.int64),
                      positions=np.concatenate([c["positions"] for c in configs]),
                      forces=np.concatenate([c["forces"] for c in configs]),
                      charges=np.concatenate([c["charges"] for c in configs]))
    cols.masks.update(energy=np.array([c.get("energy_mask", True) for c in configs]),
                      forces=np.array([c.get("forces_mask", True) for c in configs]),
                      charges=np.ones(n, bool), total_charge=np.ones(n, bool),
                      dipole=np.array([c.get("dipole_mask", [True] * 3) for c in configs]).reshape(n, 3))
    for name, (values, mask) in (extra_config or {}).items():
        cols.configs[name] = values
        cols.masks[name] = mask
    return cols


def _run(tmp_path, shards: list[list[dict]], settings: dict | None = None, extra=None) -> tuple:
    """Write the shards as base files, run both commands; (flags per shard, originals, tsv rows, meta)."""
    bases, sketches = [], []
    prov = {"inputs": [{"path": "a.extxyz"}, {"path": "b.extxyz"}]}
    text = json.dumps(settings or {})
    for k, configs in enumerate(shards):
        bases.append(str(write_columns(tmp_path / f"base{k}.h5", _columns(configs, extra and extra[k]),
                                       provenance=prov)))
        sketches.append(str(tmp_path / f"sketch{k}.npz"))
        assert main(["quality-shard", bases[-1], "--settings", text, "-o", sketches[-1]]) == 0
    npz, tsv = tmp_path / "quality.npz", tmp_path / "flags.tsv"
    assert main(["quality", "--base", *bases, "--sketches", *sketches, "--settings", text, "-o", str(npz),
                 "--flags", str(tsv)]) == 0
    with np.load(npz, allow_pickle=False) as z:
        names = [str(x) for x in z["flag_names"]]
        flags = np.concatenate([z[f"flags_{k}"] for k in range(len(shards))])
        original = np.concatenate([z[f"original_{k}"] for k in range(len(shards))])
        meta = json.loads(str(z["meta"]))
    lines = tsv.read_text().splitlines()
    assert lines[0] == "file\tframe\tflag\tdetail"
    rows = [ln.split("\t") for ln in lines[1:]]
    by_flag = {name: set(np.flatnonzero(flags & (1 << i)).tolist()) for i, name in enumerate(names)}
    return by_flag, original, rows, meta, sketches


def _translate_noise(rng, c: dict, noise: float) -> dict:
    """A near duplicate: translated by up to 5 Å, every atom moved by less than ``noise``."""
    d = rng.normal(size=c["positions"].shape)
    d *= noise * rng.uniform(0.2, 1.0, (len(d), 1)) / np.linalg.norm(d, axis=1, keepdims=True)
    return {**c, "positions": c["positions"] + rng.uniform(-5, 5, 3) + d}


def _dataset(seed: int = 1):
    """Three shards (shard 2 from file b) of >= 500 clean configs plus injected cases; the expected flags
    as global positions (shard order)."""
    rng = np.random.default_rng(seed)
    shards = [[_clean_config(rng, (0 if k < 2 else 1, 1000 * k + i)) for i in range(200)] for k in range(3)]
    expect = {name: set() for name in quality.FLAG_NAMES}
    originals = {}

    def add(k, cfg, flag, original):  # appended to the last shard (file b): earlier positions stay valid
        shards[k].append({**cfg, "source": (1, 1000 * k + len(shards[k]))})
        g = sum(len(s) for s in shards[:k]) + len(shards[k]) - 1
        expect[flag].add(g)
        originals[g] = original

    def glob(k, i):
        return sum(len(s) for s in shards[:k]) + i

    for k, i in [(0, 5), (0, 6), (1, 7), (1, 8), (2, 9), (2, 10)]:  # exact copies, also across shards/files
        add(2, shards[k][i], "duplicate", glob(k, i))
    for _ in range(2):  # one content three more times
        add(2, shards[0][20], "duplicate", glob(0, 20))
    for k, i in [(0, 30), (0, 31), (1, 32), (1, 33), (2, 34), (2, 35), (0, 36), (1, 37)]:
        add(2, _translate_noise(rng, shards[k][i], 0.009), "near_duplicate", glob(k, i))
    for k, i in [(0, 50), (1, 51), (2, 52), (0, 53), (1, 54)]:
        c = shards[k][i]
        shards[k][i] = {**c, "energy": c["energy"] + 0.5 * len(c["numbers"])}
        expect["energy_outlier"].add(glob(k, i))
    c = shards[1][60]
    shards[1][60] = {**c, "energy": c["energy"] + 1e5}  # absurd: must not move every E0
    expect["energy_outlier"].add(glob(1, 60))
    for k, i in [(0, 70), (1, 71), (2, 72), (0, 73), (1, 74)]:
        f = shards[k][i]["forces"].copy()
        f[1] = [30.0, 0, 0]
        shards[k][i] = {**shards[k][i], "forces": f}
        expect["force_outlier"].add(glob(k, i))
    for k, i in [(0, 80), (1, 81), (2, 82)]:  # dipole in Debye instead of e·Å
        c = shards[k][i]
        shards[k][i] = {**c, "dipole": c["dipole"] * 4.8 + [1.0, 0, 0]}
        expect["dipole_disagreement"].add(glob(k, i))
    # masked targets never flag: absurd values under a False mask
    c = shards[0][90]
    shards[0][90] = {**c, "energy": 1e9, "energy_mask": False, "forces": c["forces"] * 1e6, "forces_mask": False,
                     "dipole": c["dipole"] + 100, "dipole_mask": [False] * 3}
    return shards, expect, originals


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    shards, expect, originals = _dataset()
    return (*_run(tmp_path_factory.mktemp("q"), shards), expect, originals, shards)


def test_injected_cases_flagged_and_clean_configs_not(flagged):
    by_flag, original, rows, meta, _, expect, originals, shards = flagged
    n = sum(len(s) for s in shards)
    assert meta["n_configs"] == n >= 500
    for name in quality.FLAG_NAMES:
        if name == "charge_renormalised":
            continue
        missed = expect[name] - by_flag[name]
        extra = by_flag[name] - expect[name]
        assert not missed, f"{name}: missed {sorted(missed)}"
        assert len(extra) <= 2, f"{name}: false positives {sorted(extra)}"
    assert not by_flag["charge_renormalised"]
    for g, o in originals.items():
        assert original[g] == o
    assert (original[original >= 0] < np.flatnonzero(original >= 0)).all()  # the first copy comes first
    flagged_any = set().union(*by_flag.values())
    assert (original[sorted(set(range(n)) - by_flag["duplicate"] - by_flag["near_duplicate"])] == -1).all()
    assert 90 not in flagged_any  # masked absurd values
    assert meta["counts"] == {k: len(v) for k, v in by_flag.items()}
    assert meta["e0"]["refit_without"] >= 1
    for sym, z in (("H", 1), ("C", 6), ("O", 8)):
        assert meta["e0"]["values"][sym] == pytest.approx(E0[z], abs=0.02)


def test_flags_tsv_rows_name_file_frame_and_first_copy(flagged):
    _, original, rows, _, _, expect, originals, shards = flagged
    assert len(rows) == sum(len(v) for v in flagged[0].values())
    dup_rows = [r for r in rows if r[2] == "duplicate"]
    # the duplicate of shard 1's config 7 (file a, frame 1007) sits in file b
    row = next(r for r in dup_rows if "a.extxyz:1007" in r[3])
    assert row[0] == "b.extxyz" and row[3].startswith("duplicate of a.extxyz:1007")
    near = [r for r in rows if r[2] == "near_duplicate"]
    assert all("max |Δr|" in r[3] and float(r[3].split("max |Δr| ")[1].split(" ")[0]) < 0.01 for r in near)
    eo = next(r for r in rows if r[2] == "energy_outlier" and r[1] == "1060")
    assert eo[0] == "a.extxyz" and "robust sigmas" in eo[3]
    fo = next(r for r in rows if r[2] == "force_outlier" and r[1] == "70")
    assert fo[0] == "a.extxyz" and "max |F| 30 eV/Å on atom 1" in fo[3]


def test_rounding_boundary_duplicates(tmp_path):
    """Pairs constructed to straddle a rounding cell of the exact key (and of the near key) are found."""
    rng = np.random.default_rng(5)
    base = [_clean_config(rng, (0, i)) for i in range(40)]
    cfgs, pairs = list(base[8:]), []  # base[:8] only as templates (a shifted template is its duplicate)
    for i in range(4):
        c = base[i]
        n = len(c["numbers"])
        ptr = np.array([0, n])
        a = quality_keys._directions(np.arange(n), 0)
        abar = a.mean(axis=0)
        f = quality_keys._features(c["positions"], ptr, [0], False)[0, 0]
        h = 2 * quality.EXACT_TOLERANCE
        target = (np.floor(f / h) + 1) * h - 2e-8
        orig = {**c, "positions": c["positions"] + abar / (abar @ abar) * (target - f), "source": (0, 100 + i)}
        copy = {**orig, "positions": orig["positions"] + 9e-7 * a, "source": (0, 200 + i)}
        cfgs += [orig, copy]
        pairs.append((len(cfgs) - 2, len(cfgs) - 1, "duplicate"))
        # near: move feature 1 just below a cell boundary, then a copy whose centred atoms move < 0.005 Å across it
        c = base[4 + i]
        n = len(c["numbers"])
        ptr = np.array([0, n])
        a1 = quality_keys._directions(np.arange(n), 1)
        w = a1 - a1.mean(axis=0)
        gain = (w * a1).sum() / n
        g = quality_keys._features(c["positions"], ptr, [1], True)[0, 0]
        size = 0.01 * (1 + 1e-6) + 1e-12
        shifted = c["positions"] + w * (((np.floor(g / size) + 1) * size - 1e-5 - g) / gain)
        near_o = {**c, "positions": shifted, "source": (0, 300 + i)}
        near_c = {**c, "positions": shifted + 0.005 * w / np.abs(w).max() / np.sqrt(3) + [1.5, -2.0, 0.7],
                  "source": (0, 400 + i)}
        cfgs += [near_o, near_c]
        pairs.append((len(cfgs) - 2, len(cfgs) - 1, "near_duplicate"))
    by_flag, original, _, _, sketches = _run(tmp_path, [cfgs])
    with np.load(sketches[0]) as z:
        ex, nr = z["exact_key"], z["near_key"]
    for o, c, flag in pairs:
        assert c in by_flag[flag] and original[c] == o
        if flag == "duplicate":
            assert int(ex[c] - ex[o]) == 1  # the copy's rounded key is the neighbouring cell's
        else:
            assert ex[c] != ex[o] and nr[c] != nr[o]
    assert by_flag["duplicate"] | by_flag["near_duplicate"] == {c for _, c, _ in pairs}


def _brute_force(positions: list[np.ndarray], tol: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs, in order: exact duplicate of the first copy, else near duplicate of an unflagged config."""
    n = len(positions)
    kind, original = np.zeros(n, int), np.full(n, -1)
    for i in range(n):
        for j in range(i):
            if np.linalg.norm(positions[i] - positions[j], axis=1).max() <= 1e-6:
                kind[i], original[i] = 1, original[j] if kind[j] == 1 else j
                break
        if kind[i]:
            continue
        for j in range(i):
            d = positions[i] - positions[j]
            if not kind[j] and np.linalg.norm(d - d.mean(axis=0), axis=1).max() <= tol:
                kind[i], original[i] = 2, j
                break
    return kind, original


def test_agrees_with_brute_force_on_dense_near_duplicates():
    """Many copies, near copies and chains of near copies of a few configs (one composition): the fast
    search (in-memory loader and gatherer) equals the all-pairs comparison."""
    rng = np.random.default_rng(11)
    numbers = np.array([8, 1, 1, 6, 1])
    seeds = [rng.uniform(0, 3, (5, 3)) for _ in range(6)]
    pos = []
    for _ in range(300):
        p = seeds[rng.integers(len(seeds))] if rng.random() < 0.5 else pos[rng.integers(len(pos))] if pos else seeds[0]
        r = rng.random()
        step = 0.0 if r < 0.3 else 5e-7 if r < 0.45 else 0.006
        d = rng.normal(size=p.shape)
        pos.append(p + step * d / np.linalg.norm(d, axis=1, keepdims=True) + (rng.uniform(-3, 3, 3) if r > 0.45 else 0))
    n = len(pos)
    ptr = np.arange(n + 1) * 5
    allpos = np.concatenate(pos)
    sk = quality.shard_sketch(np.tile(numbers, n), allpos, ptr, np.zeros((n, 3, 3)), np.zeros((n, 3), bool),
                              tolerance=0.01)
    sk.update(source=np.column_stack([np.zeros(n, int), np.arange(n)]), inputs=np.array(["x"]))

    def gather(ids):
        return {"numbers": np.tile(numbers, len(ids)), "positions": np.concatenate([pos[i] for i in ids]),
                "ptr": np.arange(len(ids) + 1) * 5, "cell": np.zeros((len(ids), 3, 3)),
                "pbc": np.zeros((len(ids), 3), bool)}

    shards, meta = quality.flag_dataset(1, lambda k: sk, gather, {})
    kind, original = _brute_force(pos, 0.01)
    got = np.where(shards[0]["flags"] & quality.BIT["duplicate"], 1,
                   np.where(shards[0]["flags"] & quality.BIT["near_duplicate"], 2, 0))
    assert (kind == 1).sum() > 50 and (kind == 2).sum() > 30
    np.testing.assert_array_equal(got, kind)
    np.testing.assert_array_equal(shards[0]["original"], original)
    assert meta["duplicates"]["identical_copies"] >= 50


def test_candidates_grow_linearly():
    """2,000 distinct configs of one composition and 500 identical copies: few candidate pairs to check."""
    rng = np.random.default_rng(2)
    n, m = 2000, 8
    pos = rng.uniform(0, 4, (n, m, 3))
    pos = np.concatenate([pos, np.repeat(pos[:1], 500, axis=0)])
    total = len(pos)
    numbers = np.tile(np.array([8, 1, 1, 8, 1, 1, 6, 1]), total)
    sk = quality.shard_sketch(numbers, pos.reshape(-1, 3), np.arange(total + 1) * m, np.zeros((total, 3, 3)),
                              np.zeros((total, 3), bool), tolerance=0.01)
    sk.update(source=np.column_stack([np.zeros(total, int), np.arange(total)]), inputs=np.array(["x"]))

    def gather(ids):
        return {"numbers": numbers[: len(ids) * m], "positions": pos[ids].reshape(-1, 3),
                "ptr": np.arange(len(ids) + 1) * m, "cell": np.zeros((len(ids), 3, 3)),
                "pbc": np.zeros((len(ids), 3), bool)}

    shards, meta = quality.flag_dataset(1, lambda k: sk, gather, {})
    assert meta["counts"]["duplicate"] == 500 and meta["counts"]["near_duplicate"] == 0
    assert meta["duplicates"]["identical_copies"] == 500
    assert meta["duplicates"]["candidate_pairs"] < 50
    assert (shards[0]["original"][n:] == 0).all()


def test_charge_renormalised_from_the_ingest_field(tmp_path, monkeypatch):
    """Contract E: /configs/charge_renormalisation (written by ingest with renormalise_charges) non-zero."""
    if "charge_renormalisation" not in fields.FIELDS:  # the ingest branch declares it; until then, here
        monkeypatch.setitem(fields.FIELDS, "charge_renormalisation", fields.Field(
            "charge_renormalisation", "config", (), "float64", "e", "total_charge - sum(q) before the shift",
            target=False))
    rng = np.random.default_rng(3)
    cfgs = [_clean_config(rng, (0, i)) for i in range(30)]
    values = np.zeros(30)
    values[[3, 17]] = [0.012, -0.4]
    values[20] = 0.5  # masked: the config has no total charge, never flagged
    mask = np.ones(30, bool)
    mask[20] = False
    by_flag, _, rows, meta, _ = _run(tmp_path, [cfgs], extra=[{"charge_renormalisation": (values, mask)}])
    assert by_flag["charge_renormalised"] == {3, 17}
    row = next(r for r in rows if r[2] == "charge_renormalised" and r[1] == "17")
    assert "-0.4 e" in row[3]


def test_enabled_false_writes_zero_flags_and_header(tmp_path):
    rng = np.random.default_rng(4)
    cfgs = [_clean_config(rng, (0, i)) for i in range(10)]
    bases = [str(write_columns(tmp_path / f"b{k}.h5", _columns(cfgs[5 * k:5 * k + 5]))) for k in range(2)]
    bases.append(str(write_columns(tmp_path / "b2.h5", _columns([]))))  # an empty shard
    out, tsv = tmp_path / "q.npz", tmp_path / "f.tsv"
    assert main(["quality", "--base", *bases, "--settings", '{"enabled": false}', "-o", str(out),
                 "--flags", str(tsv)]) == 0
    assert tsv.read_text() == "file\tframe\tflag\tdetail\n"
    with np.load(out, allow_pickle=False) as z:
        assert [len(z[f"flags_{k}"]) for k in range(3)] == [5, 5, 0]
        assert all(not z[f"flags_{k}"].any() and (z[f"original_{k}"] == -1).all() for k in range(3))
        assert z["flags_0"].dtype == np.uint32 and z["original_0"].dtype == np.int64
        assert list(z["flag_names"]) == list(quality.FLAG_NAMES)
        assert json.loads(str(z["meta"]))["settings"]["enabled"] is False


@pytest.mark.parametrize("settings, message", [
    ({"drop": ["duplicat"]}, "quality.drop: unknown flag 'duplicat' (did you mean 'duplicate'?)"),
    ({"outlier_sigma": 0}, "quality.outlier_sigma: expected a number > 0"),
    ({"near_duplicate_tolerance": -1}, "quality.near_duplicate_tolerance: expected a number >= 0"),
    ({"enabled": "yes"}, "quality.enabled: expected true or false"),
    ({"dipole_tol": 1}, "quality: unknown key 'dipole_tol'"),
])
def test_bad_settings_one_line(tmp_path, capsys, settings, message):
    rng = np.random.default_rng(0)
    base = str(write_columns(tmp_path / "b.h5", _columns([_clean_config(rng, (0, 0))])))
    assert main(["quality-shard", base, "--settings", json.dumps(settings), "-o", str(tmp_path / "s.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_cells_and_pbc(tmp_path):
    """Periodic copies need the same cell (and pbc); an open-boundary config's cell plays no part; the same
    geometry in another charge state is not a duplicate."""
    rng = np.random.default_rng(8)
    c = _clean_config(rng, (0, 0))
    box = np.eye(3) * 10.0
    periodic = {**c, "cell": box, "pbc": np.ones(3, bool)}
    cfgs = [_clean_config(rng, (0, i)) for i in range(1, 25)] + [
        periodic, {**periodic, "cell": box * 1.01}, {**periodic, "pbc": np.array([True, True, False])},
        {**periodic, "positions": periodic["positions"] + 3e-7},  # 24..27
        c, {**c, "cell": box * 2.0},  # 28, 29: open boundary, another cell
        {**c, "total_charge": 1.0}, {**c, "total_charge": 1.0}]  # 30, 31: another charge state of 28
    by_flag, original, _, _, _ = _run(tmp_path, [cfgs])
    assert by_flag["duplicate"] == {27, 29, 31} and original[27] == 24 and original[29] == 28 and original[31] == 30
    assert not by_flag["near_duplicate"]


def test_empty_shards(tmp_path):
    by_flag, original, rows, meta, _ = _run(tmp_path, [[], []])
    assert meta["n_configs"] == 0 and not rows and len(original) == 0


def test_shard_count_does_not_change_the_flags(flagged, tmp_path):
    """The same configs in one shard instead of three: the same flags, originals and rows."""
    by_flag, original, rows, _, _, _, _, shards = flagged
    one = _run(tmp_path, [[c for s in shards for c in s]])
    assert one[0] == by_flag and one[2] == rows
    np.testing.assert_array_equal(one[1], original)


def test_damaged_sketch_is_a_one_line_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = str(write_columns(tmp_path / "b.h5", _columns([_clean_config(rng, (0, 0))])))
    bad = tmp_path / "s.npz"
    bad.write_text("not a sketch")
    code = main(["quality", "--base", base, "--sketches", str(bad), "-o", str(tmp_path / "q.npz"),
                 "--flags", str(tmp_path / "f.tsv")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "s.npz: not a readable quality sketch" in err
    assert not (tmp_path / "q.npz").exists() and not (tmp_path / "f.tsv").exists()


def test_copies_do_not_make_the_robust_energy_centre_flag_distinct_configs(tmp_path):
    """60 copies of one config and 40 distinct ones (10 meV/atom spread): the copies are duplicates, and the
    median/MAD over the distinct configs flags none of the 40 as an energy outlier (with the copies counted,
    the MAD is 0 and all 40 would be)."""
    rng = np.random.default_rng(5)
    base = _clean_config(rng, (0, 0))
    configs = [{**base, "source": (0, i)} for i in range(60)]
    configs += [_clean_config(rng, (0, 60 + i)) for i in range(40)]
    by_flag, _, _, _, _ = _run(tmp_path, [configs])
    assert by_flag["duplicate"] == set(range(1, 60))
    assert by_flag["energy_outlier"] == set(), by_flag["energy_outlier"]


def test_an_exact_copy_of_a_near_duplicate_names_the_near_duplicate(tmp_path):
    """A, B within 0.005 Å of A, C a bit-identical copy of B: C is a duplicate of B (within 1e-6 Å), not of A."""
    rng = np.random.default_rng(6)
    a = _clean_config(rng, (0, 0))
    b = {**_translate_noise(rng, a, 0.005), "source": (0, 1)}
    c = {**b, "source": (0, 2)}
    fillers = [_clean_config(rng, (0, 3 + i)) for i in range(30)]
    by_flag, original, rows, _, _ = _run(tmp_path, [[a, b, c, *fillers]], {"near_duplicate_tolerance": 0.01})
    assert by_flag["near_duplicate"] == {1} and by_flag["duplicate"] == {2}
    assert original[1] == 0 and original[2] == 1
    [detail] = [r[3] for r in rows if r[2] == "duplicate"]
    assert detail.startswith("duplicate of a.extxyz:1"), detail


def test_charged_configs_are_not_compared_for_the_dipole(tmp_path):
    """A +1 e config 10 Å from the origin: its Σ q r about 0 differs from a DFT dipole taken about its centre
    by ~10 e·Å; the origin is the DFT code's choice, so charged configs are not flagged, neutral ones are."""
    rng = np.random.default_rng(7)
    configs = [_clean_config(rng, (0, i)) for i in range(30)]
    charged = _clean_config(rng, (0, 30))
    q = charged["charges"] + 1.0 / len(charged["charges"])
    pos = charged["positions"] + 10.0
    charged.update(charges=q, positions=pos, total_charge=1.0,
                   dipole=(q[:, None] * (pos - pos.mean(axis=0))).sum(0))
    flipped = _clean_config(rng, (0, 31))
    flipped["dipole"] = -flipped["dipole"] + np.array([2.0, 0.0, 0.0])  # neutral, wrong sign: flagged
    by_flag, _, _, _, _ = _run(tmp_path, [configs + [charged, flipped]])
    assert by_flag["dipole_disagreement"] == {31}


def test_drop_with_quality_disabled_is_refused():
    with pytest.raises(ValueError, match="quality.drop: duplicate listed while quality.enabled is false"):
        quality.check_settings({"enabled": False, "drop": ["duplicate"]})
