"""Split and assemble consume the quality flags (results/<ds>/quality.npz, written here with np.savez as the
quality step writes it): duplicates land in their first copy's split under every `by:`, `--drop` turns flags
into rejects with the counts reconciled, and the flag counts travel into the provenance and the manifest.

Real extxyz inputs (two files, three shards, one NaN frame rejected by ingest), real `scfdata index`,
`ingest`, `derive molecules`, `split` and `assemble`; the expected numbers are counted from the injected
flags directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from scfdata.cli import main
from scfdata.h5io import ScfdataFile
from scfdata.split import SPLIT_NAMES, read_split, tie_duplicates
from scfdata.verify import verify

FLAG_NAMES = ["duplicate", "near_duplicate", "energy_outlier", "force_outlier", "charge_renormalised",
              "dipole_disagreement"]
BIT = {n: 1 << i for i, n in enumerate(FLAG_NAMES)}
KEYS = {"info_keys": {"energy": "REF_energy"}, "arrays_keys": {"forces": "REF_forces"}}
N_A, N_B = 14, 10
# (file, frame) -> (file, frame) of the first copy; every pair across shards (shards: a0-7 | a8-13 b0-1 | b2-9)
DUPLICATES = {(1, 2): (0, 1), (1, 5): (0, 1), (1, 7): (1, 0), (0, 12): (0, 4)}
NEAR_DUPLICATES = {(1, 9): (0, 2)}
FLAGS = {(0, 6): ["energy_outlier"], (1, 7): ["duplicate", "energy_outlier"], (0, 3): ["force_outlier"],
         **{k: ["duplicate"] for k in DUPLICATES if k != (1, 7)}, **{k: ["near_duplicate"] for k in NEAR_DUPLICATES}}
NAN_FRAME = (0, 13)
MOLECULES = {"H2O": ([8, 1, 1], [[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]]),
             "CH4": ([6, 1, 1, 1, 1], [[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                                       [0.63, -0.63, -0.63]]),
             "NH3": ([7, 1, 1, 1], [[0, 0, 0], [0.94, 0, -0.38], [-0.47, 0.81, -0.38], [-0.47, -0.81, -0.38]])}


def _frame(rng, i: int) -> Atoms:
    """One or two molecules (kinds by i), randomly rotated, with energy and forces."""
    kinds = [list(MOLECULES)[i % 3]] + ([list(MOLECULES)[(i // 3) % 3]] if i % 2 else [])
    numbers, positions = [], []
    for m, kind in enumerate(kinds):
        z, pos = MOLECULES[kind]
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        numbers += z
        positions.append(np.asarray(pos) @ q.T + [3.5 * m, 0, 0])
    atoms = Atoms(numbers=numbers, positions=np.concatenate(positions))
    atoms.info["REF_energy"] = float(rng.normal(-10 * len(numbers), 1))
    atoms.info["config_type"] = f"t{i % 4}"
    atoms.arrays["REF_forces"] = rng.normal(size=(len(numbers), 3))
    return atoms


def _inputs(d: Path) -> list[Path]:
    rng = np.random.default_rng(5)
    frames = {(f, i): _frame(rng, 7 * f + i) for f, n in ((0, N_A), (1, N_B)) for i in range(n)}
    for dup, orig in {**DUPLICATES, **NEAR_DUPLICATES}.items():
        copy = frames[orig].copy()
        copy.info["config_type"] = f"copy_{dup[0]}_{dup[1]}"  # its own config_type: only the tie joins them
        if dup in NEAR_DUPLICATES:
            copy.positions += 0.001
        frames[dup] = copy
    frames[NAN_FRAME].info["REF_energy"] = float("nan")
    paths = [d / "a.extxyz", d / "b.extxyz"]
    for f, (path, n) in enumerate(zip(paths, (N_A, N_B))):
        write(path, [frames[(f, i)] for i in range(n)], format="extxyz")
    return paths


def write_quality(path: Path, sources: list[np.ndarray], flags: dict, originals: dict, names=FLAG_NAMES) -> Path:
    """quality.npz as contract A: per shard flags_<k> (uint32 over names) and original_<k> (global position)."""
    glob = {tuple(s): g for g, s in enumerate(np.concatenate(sources).tolist())}
    arrays = {"flag_names": np.array(names, dtype=str),
              "meta": np.array(json.dumps({"settings": {"near_duplicate_tolerance": 0.01, "drop": []},
                                           "n_configs": len(glob)}))}
    for k, src in enumerate(sources):
        keys = [tuple(s) for s in src.tolist()]
        arrays[f"flags_{k}"] = np.array([sum(1 << names.index(n) for n in flags.get(s, [])) for s in keys],
                                        dtype=np.uint32)
        arrays[f"original_{k}"] = np.array([glob[originals[s]] if s in originals else -1 for s in keys],
                                           dtype=np.int64)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("quality")
    inputs = _inputs(d)
    assert main(["index", *map(str, inputs), "--shards", "3", "--settings", json.dumps({"keys": KEYS}),
                 "-o", str(d / "index.json")]) == 0
    bases, mols, sources = [], [], []
    for k in range(3):
        (d / str(k)).mkdir()
        bases.append(str(d / str(k) / "base.h5"))  # the workflow's layout: one folder per shard
        mols.append(str(d / str(k) / "molecules.h5"))
        assert main(["ingest", "--index", str(d / "index.json"), "--shard", str(k), "--settings",
                     json.dumps({"keys": KEYS, "on_error": "reject"}), "-o", bases[-1]]) == 0
        assert main(["derive", "molecules", bases[-1], "-o", mols[-1]]) == 0
        with ScfdataFile(bases[-1]) as f:
            sources.append(np.asarray(f.raw("configs", "source")).copy())
    originals = {**DUPLICATES, **NEAR_DUPLICATES}
    quality = write_quality(d / "quality.npz", sources, FLAGS, originals)
    clean = write_quality(d / "clean.npz", sources, {(0, 6): ["energy_outlier"]}, {})
    return {"d": d, "inputs": inputs, "bases": bases, "mols": mols, "sources": sources, "quality": quality,
            "clean": clean}


def _split(data, settings: dict, out: str, *extra: str) -> tuple[dict, dict]:
    """Labels by (file, frame) and the split meta."""
    mol = ["--molecules", *data["mols"]] if settings.get("by") == "composition_molecules" else []
    settings = {**settings, "by": "composition" if mol else settings.get("by", "random")}
    path = data["d"] / out
    assert main(["split", "--settings", json.dumps(settings), *data["bases"], *mol, *extra, "-o", str(path)]) == 0
    labels, meta = read_split(path)
    src = np.concatenate(data["sources"]).tolist()
    return dict(zip(map(tuple, src), np.concatenate(labels).tolist())), meta


BY = ["random", "config_type", "composition", "composition_molecules"]


@pytest.mark.parametrize("by", BY)
def test_duplicates_land_in_their_first_copys_split(data, by):
    straddled = 0
    for seed in range(6):
        settings = {"valid_fraction": 0.3, "test_fraction": 0.3, "seed": seed, "by": by}
        lab, meta = _split(data, settings, f"q_{by}_{seed}.npz", "--quality", str(data["quality"]))
        for dup, orig in {**DUPLICATES, **NEAR_DUPLICATES}.items():
            assert lab[dup] == lab[orig], f"{by} seed {seed}: {dup} in {lab[dup]}, its first copy {orig} in {lab[orig]}"
        assert meta["quality"]["tied"] == 5 and meta["quality"]["file"] == str(data["quality"])
        assert sum(meta["counts"].values()) == N_A + N_B - 1
        plain, _ = _split(data, settings, f"p_{by}_{seed}.npz")
        straddled += any(plain[dup] != plain[orig] for dup, orig in {**DUPLICATES, **NEAR_DUPLICATES}.items())
    if by in ("random", "config_type"):  # without the tie the copies do straddle (composition groups them anyway)
        assert straddled > 0


@pytest.mark.parametrize("by", BY)
def test_without_duplicates_the_labels_are_those_of_a_split_without_quality(data, by):
    for seed in (0, 3):
        settings = {"valid_fraction": 0.2, "test_fraction": 0.3, "seed": seed, "by": by}
        lab, meta = _split(data, settings, f"c_{by}_{seed}.npz", "--quality", str(data["clean"]))
        plain, plain_meta = _split(data, settings, f"n_{by}_{seed}.npz")
        assert lab == plain
        assert meta["quality"]["tied"] == 0 and meta["quality"]["groups_before"] == meta["quality"]["groups_after"]
        assert "quality" not in plain_meta and {k: v for k, v in meta.items() if k != "quality"} == plain_meta


def _union_find_groups(groups: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Reference: pairwise union of group ids, one edge at a time."""
    parent = {int(g): int(g) for g in groups}

    def root(g):
        while parent[g] != g:
            g = parent[g]
        return g

    for i in np.flatnonzero(original >= 0):
        a, b = root(int(groups[i])), root(int(groups[original[i]]))
        parent[max(a, b)] = min(a, b)
    return np.array([root(int(g)) for g in groups])


@pytest.mark.parametrize("trial", range(20))
def test_tie_duplicates_is_the_union_of_groups(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(2, 60))
    groups = rng.choice(rng.integers(0, 1000, 12), size=n)
    original = np.full(n, -1)
    dup = rng.choice(np.arange(1, n), size=int(rng.integers(0, n // 3 + 1)), replace=False)
    original[dup] = [rng.integers(0, i) for i in dup]
    tied, n_tied = tie_duplicates(groups, original)
    assert n_tied == len(dup)
    expect = _union_find_groups(groups, original)
    # same partition, each part named by its smallest member group id
    np.testing.assert_array_equal(tied, expect)
    none, _ = tie_duplicates(None, original)
    if len(dup):
        np.testing.assert_array_equal(none, _union_find_groups(np.arange(n), original))
    else:
        assert none is None


def test_tie_duplicates_merges_chains_of_groups():
    # configs 0..5 in groups A A B B C D; 2 copies 1 (joins B to A), 4 copies 3 (joins C to B, hence to A)
    groups = np.array([10, 10, 20, 20, 30, 40])
    tied, n = tie_duplicates(groups, np.array([-1, -1, 1, -1, 3, -1]))
    assert n == 2 and tied.tolist() == [10, 10, 10, 10, 10, 40]


# ------------------------------------------------------------------------------------------------
# assemble --quality --drop
# ------------------------------------------------------------------------------------------------


def _assemble(data, out: str, *extra: str, split: str = "s.npz") -> Path:
    d = data["d"]
    if not (d / split).exists():
        _split(data, {"valid_fraction": 0.25, "test_fraction": 0.25, "seed": 2, "by": "random"}, split,
               "--quality", str(data["quality"]))
    shard_files = [f"{b},{m}" for b, m in zip(data["bases"], data["mols"])]
    assert main(["assemble", "--dataset", "q", "--split", str(d / split), "--index", str(d / "index.json"),
                 "--shard-files", *shard_files, *extra, "-o", str(d / out)]) == 0
    return d / out


def _rows(out: Path) -> list[list[str]]:
    lines = (out / "rejects.tsv").read_text().splitlines()
    assert lines[0] == "file\tframe\treason"
    return [ln.split("\t") for ln in lines[1:]]


def _contents(out: Path) -> dict[str, dict]:
    """split -> {(file, frame)}, provenance, rejects of every split file."""
    res = {}
    for name in SPLIT_NAMES:
        if (out / f"{name}.h5").exists():
            with ScfdataFile(out / f"{name}.h5") as f:
                res[name] = {"src": {tuple(s) for s in np.asarray(f.raw("configs", "source")).tolist()},
                             "prov": f.provenance, "rejects": f.rejects()}
    return res


def test_drop_turns_duplicates_and_energy_outliers_into_rejects(data):
    out = _assemble(data, "drop", "--quality", str(data["quality"]), "--drop", '["duplicate", "energy_outlier"]')
    paths = [str(p) for p in data["inputs"]]
    dropped = {k for k, v in FLAGS.items() if {"duplicate", "energy_outlier"} & set(v)}
    assert len(dropped) == 5
    rows = _rows(out)
    assert len(rows) == 1 + len(dropped)
    by_src = {(paths.index(r[0]), int(r[1])): r[2] for r in rows}
    assert set(by_src) == dropped | {NAN_FRAME}
    for src, orig in DUPLICATES.items():
        want = f"quality: duplicate of {paths[orig[0]]}:{orig[1]}"
        assert by_src[src].startswith(want), (src, by_src[src])
    assert "also energy_outlier" in by_src[(1, 7)]
    assert by_src[(0, 6)].startswith("quality: energy_outlier")
    assert not by_src[NAN_FRAME].startswith("quality")

    man = json.loads((out / "manifest.json").read_text())
    n_in = N_A + N_B
    assert man["configs_in"] == n_in and man["rejected"] == 6 and man["written"] == n_in - 6
    assert sum(s["n_configs"] for s in man["splits"].values()) == man["written"]
    assert man["reject_reasons"]["quality: duplicate"] == 4 and man["reject_reasons"]["quality: energy_outlier"] == 1
    kept = {k: v for k, v in FLAGS.items() if k not in dropped}  # near_duplicate (1, 9), force_outlier (0, 3)
    q = man["quality"]
    assert q["flags"] == {n: sum(n in v for v in kept.values()) for n in FLAG_NAMES}
    assert q["flagged"] == len(kept) == 2
    assert q["dropped"] == {"duplicate": 4, "energy_outlier": 1}
    files = _contents(out)
    assert set(q["by_split"]) == set(files) == set(man["splits"])
    for name, c in files.items():
        assert not c["src"] & (dropped | {NAN_FRAME})
        want = {n: sum(n in FLAGS.get(s, []) for s in c["src"]) for n in FLAG_NAMES}
        assert q["by_split"][name] == want
        pq = c["prov"]["quality"]
        assert pq["flags"] == want and pq["flagged"] == sum(s in FLAGS for s in c["src"])
        assert pq["dropped"] == q["dropped"]
        assert pq["settings"]["drop"] == ["duplicate", "energy_outlier"]
        assert pq["settings"]["near_duplicate_tolerance"] == 0.01
        assert c["prov"]["ingest"] == {**c["prov"]["ingest"], "configs_in": n_in, "written": n_in - 6, "rejected": 6}
        assert len(c["rejects"]) == 6 and sum(r[2].startswith("quality: ") for r in c["rejects"]) == 5
    assert {k: sum(v.values()) for k, v in q["by_split"].items()} and sum(
        sum(v.values()) for v in q["by_split"].values()) == sum(q["flags"].values())
    assert verify(out).ok, verify(out).problems
    assert main(["verify", str(out)]) == 0


def test_drop_order_names_the_reason(data):
    out = _assemble(data, "drop_order", "--quality", str(data["quality"]), "--drop", '["energy_outlier", "duplicate"]')
    man = json.loads((out / "manifest.json").read_text())
    assert man["quality"]["dropped"] == {"energy_outlier": 2, "duplicate": 3}
    reason = {(r[0], r[1]): r[2] for r in _rows(out)}[(str(data["inputs"][1]), "7")]
    assert reason.startswith("quality: energy_outlier (also duplicate; dropped by quality.drop)")


def test_without_drop_only_the_counts_travel_and_without_quality_nothing_changes(data):
    flagged = _assemble(data, "flags_only", "--quality", str(data["quality"]))
    plain = _assemble(data, "plain")
    a, b = _contents(flagged), _contents(plain)
    assert {k: v["src"] for k, v in a.items()} == {k: v["src"] for k, v in b.items()}
    assert (flagged / "rejects.tsv").read_text() == (plain / "rejects.tsv").read_text()
    man_a = json.loads((flagged / "manifest.json").read_text())
    man_b = json.loads((plain / "manifest.json").read_text())
    assert man_a["quality"]["dropped"] == {} and man_a["quality"]["flagged"] == len(FLAGS)
    assert "quality" not in man_b and all("quality" not in v["prov"] for v in b.values())
    same = ("split_id", "splits", "rejects", "quality")
    assert {k: v for k, v in man_a.items() if k not in same} == {k: v for k, v in man_b.items() if k not in same}
    for name in b:
        prov_a = {k: v for k, v in a[name]["prov"].items() if k not in ("quality", "versions")}
        assert prov_a == {k: v for k, v in b[name]["prov"].items() if k != "versions"}
    assert verify(flagged).ok and verify(plain).ok


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _assemble_argv(data, out: str, *extra: str) -> list[str]:
    d = data["d"]
    return ["assemble", "--dataset", "q", "--split", str(d / "s.npz"), "--index", str(d / "index.json"),
            "--shard-files", *data["bases"], *extra, "-o", str(d / out)]


def test_unknown_drop_flag_and_drop_without_quality_are_one_line_errors(data, capsys):
    _assemble(data, "warm")  # makes s.npz
    line = _error(capsys, _assemble_argv(data, "e1", "--quality", str(data["quality"]), "--drop", '["dupliate"]'))
    assert "'dupliate'" in line and all(n in line for n in FLAG_NAMES)
    line = _error(capsys, _assemble_argv(data, "e2", "--drop", '["duplicate"]'))
    assert "--quality" in line
    line = _error(capsys, _assemble_argv(data, "e3", "--quality", str(data["quality"]), "--drop", "duplicate"))
    assert "JSON list" in line
    assert not (data["d"] / "e1").exists() or not any((data["d"] / "e1").iterdir())


def test_a_stale_quality_file_is_a_one_line_error(data, capsys):
    _assemble(data, "warm")
    d = data["d"]
    two = write_quality(d / "two.npz", data["sources"][:2], FLAGS, {})
    line = _error(capsys, _assemble_argv(data, "s1", "--quality", str(two)))
    assert "2 shards" in line and "3 shards" in line and "stale" in line
    short = [data["sources"][0], data["sources"][1][:-1], data["sources"][2]]
    bad = write_quality(d / "short.npz", short, FLAGS, {})
    line = _error(capsys, _assemble_argv(data, "s2", "--quality", str(bad)))
    assert "flags_1" in line and "stale" in line and data["bases"][1] in line
    line = _error(capsys, ["split", *data["bases"], "--quality", str(bad), "-o", str(d / "bad.npz")])
    assert "flags_1" in line and "stale" in line
    z = dict(np.load(data["quality"]))
    z["original_2"] = z["original_2"].copy()
    z["original_2"][0] = 10 ** 6
    np.savez(d / "forward.npz", **z)
    line = _error(capsys, ["split", *data["bases"], "--quality", str(d / "forward.npz"), "-o", str(d / "bad.npz")])
    assert "original_2[0]" in line
    (d / "text.npz").write_text("not a zip")
    line = _error(capsys, _assemble_argv(data, "s3", "--quality", str(d / "text.npz")))
    assert "not a quality .npz" in line


def test_verify_finds_counts_that_do_not_reconcile(data):
    out = _assemble(data, "tamper", "--quality", str(data["quality"]), "--drop", '["duplicate"]')
    assert verify(out).ok
    man = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**man, "rejected": man["rejected"] - 1}))
    problems = verify(out).problems
    assert any("do not reconcile" in p for p in problems), problems
    man["quality"]["by_split"]["train"]["near_duplicate"] += 1
    (out / "manifest.json").write_text(json.dumps(man))
    problems = verify(out).problems
    assert any("quality" in p and "train" in p for p in problems), problems
    man["quality"]["by_split"]["train"]["near_duplicate"] -= 1
    man["quality"]["dropped"]["duplicate"] += 1
    (out / "manifest.json").write_text(json.dumps(man))
    problems = verify(out).problems
    assert any("quality dropped 5" in p for p in problems), problems


def test_assemble_warns_when_the_split_was_made_without_the_quality_file(data, caplog):
    for seed in range(20):  # a seed whose plain split puts a copy apart from its first copy
        lab, _ = _split(data, {"valid_fraction": 0.3, "test_fraction": 0.3, "seed": seed}, f"w{seed}.npz")
        apart = sum(lab[dup] != lab[orig] for dup, orig in {**DUPLICATES, **NEAR_DUPLICATES}.items())
        if apart:
            break
    with caplog.at_level("WARNING", logger="scfdata.assemble"):
        _assemble(data, "apart", "--quality", str(data["quality"]), split=f"w{seed}.npz")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"{apart} duplicate(s)" in w and "--quality" in w for w in warned), warned
    caplog.clear()
    with caplog.at_level("WARNING", logger="scfdata.assemble"):
        _assemble(data, "together", "--quality", str(data["quality"]))
    assert not [r for r in caplog.records if "duplicate(s)" in r.getMessage()]


def _npz(path: Path, sizes, **override) -> Path:
    arrays = {"flag_names": np.array(FLAG_NAMES), "meta": np.array(json.dumps({"settings": {"drop": []}}))}
    for k, n in enumerate(sizes):
        arrays[f"flags_{k}"] = np.zeros(n, np.uint32)
        arrays[f"original_{k}"] = np.full(n, -1, np.int64)
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_read_quality_takes_empty_shards_and_names_what_is_wrong(tmp_path):
    from scfdata.split import read_quality

    q = read_quality(_npz(tmp_path / "ok.npz", [2, 0, 3], flags_2=np.array([0, 5, 8], np.uint32),
                          original_2=np.array([-1, 0, 1])), [2, 0, 3])
    assert [len(f) for f in q.flags] == [2, 0, 3] and q.flag_names == FLAG_NAMES
    assert q.counts(np.concatenate(q.flags)) == {**dict.fromkeys(FLAG_NAMES, 0), "duplicate": 1,
                                                 "energy_outlier": 1, "force_outlier": 1}
    assert q.straddling([np.array([0, 1]), np.zeros(0, np.int8), np.array([1, 1, 1])]) == 1  # config 3 (1) vs 0 (0)
    assert q.straddling([np.array([0, 1]), np.zeros(0, np.int8), np.array([1, -1, 1])]) == 0  # 3 dropped
    assert q.mask_of(["duplicate", "energy_outlier"]) == 5
    with pytest.raises(ValueError, match="unknown flag.*'dup'.*known flags: duplicate, near_duplicate"):
        q.mask_of(["dup"])
    cases = [({"original_1": None}, "no array 'original_1'"),
             ({"flags_0": np.array([0, 64], np.uint32)}, "flags_0 sets bits beyond the 6 flag_names"),
             ({"flags_0": np.array([0.0, 1.0])}, "flags_0: expected 2 integers"),
             ({"original_0": np.array([-1, 1])}, r"original_0\[1\] = 1: expected -1 or .* \(0..0\)"),
             ({"flag_names": np.array([1, 2])}, "flag_names: expected a 1-d str array"),
             ({"meta": np.array("{bad")}, "meta is not JSON")]
    for override, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            read_quality(_npz(tmp_path / "bad.npz", [2, 0, 3], **override), [2, 0, 3])
        assert "\n" not in str(e.value) and "rerun the workflow" in str(e.value)
