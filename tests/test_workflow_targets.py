"""Real Snakemake runs on tiny data: each dataset gets the targets its data support, config mistakes stop
the run before any job (exit 1, one line, no base.h5), a failed job's reason and the run's table reach
the console, a per-dataset setting reaches only that dataset's jobs, and a config fuzz."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import yaml

from scfdata.h5io import ScfdataFile

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "Snakefile"
DATA = REPO / "tests" / "data"
WATER = REPO / "examples" / "data" / "water_clusters.extxyz"

pytestmark = pytest.mark.slow


def _snakemake(workdir: Path, cfg: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    path = workdir / f"cfg-{abs(hash(json.dumps(cfg, sort_keys=True, default=str)))}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
           "--configfile", str(path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _two_waters(tmp: Path) -> Path:
    """Three frames of two water molecules with forces and charges; `molID` on frames 0 and 2 only."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(3):
        w = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
        a = ase.Atoms("OHHOHH", positions=np.vstack([w, w + [4.0, 0.3 * i, 0.0]]))
        a.info["energy"] = -10.0 - i
        a.arrays["forces"] = rng.normal(size=(6, 3))
        a.arrays["REF_charges"] = np.array([-0.8, 0.4, 0.4] * 2)
        if i != 1:
            a.arrays["molID"] = np.array([0, 0, 0, 1, 1, 1])
        frames.append(a)
    path = tmp / "two_waters.extxyz"
    ase.io.write(path, frames, format="extxyz")
    return path


def _datasets(tmp: Path) -> dict:
    from test_mace_scf_compat import WATER_CONFIG

    aims_cfg = tmp / "aims_keys.yaml"
    aims_cfg.write_text(yaml.safe_dump(WATER_CONFIG))
    return {
        # energies and forces only: the most common kind
        "ef": {"inputs": [str(WATER)],
               "keys": {"info_keys": {"energy": "energy"}, "arrays_keys": {"forces": "forces"}}},
        # FHI-aims multipoles (l <= 2), MACE_SCF's own file and keys
        "mp": {"inputs": [str(DATA / "mace_scf_water_clusters_40.xyz")], "keys_from": str(aims_cfg)},
        # molecules from a mapped key that one frame lacks
        "key": {"inputs": [str(_two_waters(tmp))],
                "keys": {"info_keys": {"energy": "energy"},
                         "arrays_keys": {"forces": "forces", "charges": "REF_charges", "molecule": "molID"}},
                "reference": {"molecules": {"source": "key"}}},
    }


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One config, three datasets, no global reference block."""
    work = tmp_path_factory.mktemp("mixed")
    cfg = {"shards": 2, "datasets": _datasets(work)}
    proc = _snakemake(work, cfg, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, cfg, proc


def test_each_dataset_gets_the_targets_its_keys_support(mixed):
    work, _, proc = mixed
    res = work / "results"
    with ScfdataFile(res / "ef" / "train.h5") as f:
        assert f.has("molecule") and f.has("molecular_forces") and f.has("cluster_virial")
        assert not f.has("esps") and not f.has("fields") and not f.has("dipole_from_multipoles")
        ref = f.provenance["reference"]
        assert ref["esps"]["derived"] is False
        assert ref["esps"]["skipped"] == "needs atomic_multipoles or charges in the dataset's keys (not mapped)"
        assert ref["molecular_forces"]["derived"] is True
    with ScfdataFile(res / "mp" / "train.h5") as f:
        for name in ("esps", "fields", "dipole_from_multipoles", "molecule", "molecular_forces", "cluster_virial"):
            assert f.has(name), name
        assert f.coverage("esps") == 40
    # `scfdata inspect` shows the reason
    out = subprocess.run([sys.executable, "-m", "scfdata.cli", "inspect", str(res / "ef" / "train.h5")],
                         capture_output=True, text=True, check=True).stdout
    assert "needs atomic_multipoles or charges in the dataset's keys" in out
    # and so does report.md
    report = (res / "ef" / "report.md").read_text()
    assert "## Reference targets" in report
    assert "| `esps` | no | needs atomic_multipoles or charges in the dataset's keys (not mapped) |" in report
    # the run ends with one table: configs in / written / rejected / flagged and the split counts
    table = proc.stderr[proc.stderr.index("scfdata: per dataset (configs)"):].splitlines()
    assert table[1].split() == ["dataset", "in", "written", "rejected", "flagged", "train", "valid", "test"]
    rows = {r.split()[0]: r.split() for r in table[2:5]}
    assert rows["ef"][1:4] == ["61", "60", "1"] and rows["ef"][5:] == ["60", "0", "0"]
    assert rows["mp"][1:4] == ["40", "40", "0"] and rows["key"][1:4] == ["3", "3", "0"]


def test_a_key_missing_from_one_frame_stays_masked_to_the_final_file(mixed):
    """molecules {source: key}, molID absent from frame 1: masked in base.h5 and in train.h5 (never ids 0)."""
    work, _, _ = mixed
    with ScfdataFile(work / "results" / "key" / "train.h5") as f:
        frames = [int(k) for _, k in np.asarray(f.raw("configs", "source"))]
        mask = np.asarray(f.mask("molecule"), bool)
        assert mask.tolist() == [k != 1 for k in frames]
        assert np.asarray(f.mask("molecular_forces"), bool).tolist() == mask.tolist()
        np.testing.assert_array_equal(np.diff(f.raw("configs", "molecule_ptr"))[mask], 2)
    log = (work / "results" / "key" / "logs" / "derive_molecules")
    assert "no `molecule` key in the frame (source: key): 1" in "".join(p.read_text() for p in log.glob("*.log"))


def test_a_per_dataset_setting_reaches_only_that_datasets_jobs(mixed):
    work, cfg, _ = mixed
    cfg = json.loads(json.dumps(cfg))
    cfg["datasets"]["key"]["reference"]["esps"] = {"smearing_width": 0.5}
    proc = _snakemake(work, cfg, "-n", "-p")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    commands = [ln for ln in out.splitlines() if "scfdata derive esps" in ln or "scfdata derive fields" in ln]
    assert len(commands) == 4, commands  # esps and fields of dataset key, 2 shards each; nothing of mp
    assert all("results/key/" in c and '"smearing_width":0.5' in c for c in commands), commands
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", out.split("Job stats:")[1], re.M)}
    assert jobs == {"warm_up": 2, "derive_esps": 2, "derive_fields": 2, "assemble": 1, "statistics_shard": 2,
                    "statistics": 1, "report": 1, "all": 1, "total": 12}, jobs


# -- mistakes stop the run before any job -----------------------------------------------------------
def _assert_stopped(proc, work: Path, expected: str) -> None:
    err = proc.stdout + proc.stderr
    assert proc.returncode == 1, err[-3000:]
    assert expected in err, err[-3000:]
    line = next(ln for ln in err.splitlines() if expected in ln)
    assert line.lstrip().startswith("config:"), line
    assert "Traceback" not in err and not list(work.glob("results/**/base.h5")), err[-3000:]


def test_enabled_true_without_inputs_stops_the_run(tmp_path):
    ds = _datasets(tmp_path)
    cfg = {"datasets": {"ef": {**ds["ef"], "reference": {"esps": {"enabled": True}}}, "key": ds["key"]}}
    _assert_stopped(_snakemake(tmp_path, cfg, "--cores", "1"), tmp_path,
                    "config: datasets.ef: reference.esps is enabled: true, but it needs atomic_multipoles or "
                    "charges in the dataset's keys (not mapped)")


def test_a_target_both_mapped_and_derived_stops_the_run(tmp_path):
    ds = _datasets(tmp_path)["key"]
    ds["keys"]["arrays_keys"]["esps"] = "REF_charges"
    cfg = {"datasets": {"key": ds}, "reference": {"esps": {"enabled": True}}}
    _assert_stopped(_snakemake(tmp_path, cfg, "--cores", "1"), tmp_path,
                    "config: datasets.key: `esps` is mapped from the input files and is also derived by reference.esps")


def test_a_failed_jobs_reason_reaches_the_console(tmp_path):
    ds = _datasets(tmp_path)["key"]
    ds["keys"]["info_keys"]["energy"] = "enrgy"  # a typo: in no frame
    proc = _snakemake(tmp_path, {"shards": 1, "datasets": {"key": ds}}, "--cores", "1")
    assert proc.returncode == 1
    failed = [ln for ln in proc.stderr.splitlines() if ln.startswith("scfdata: ") and " failed (" in ln]
    assert failed and "'enrgy'" in failed[0] and "did you mean 'energy'" in failed[0], proc.stderr[-3000:]


def _ingest_keeps_low_density_cells() -> bool:
    from scfdata.validate import ValidationOptions

    limit = ValidationOptions().max_volume_per_atom
    return limit is None or limit > 260.0


@pytest.mark.xfail(not _ingest_keeps_low_density_cells(), strict=True,
                   reason="LEAD: needs helper ingest's loosened max_volume_per_atom default (issue 13 item 5): "
                          "MACE_SCF's bulk test configs have 205 and 259 Å³ per atom")
def test_mace_scf_mixed_test_configs_all_written_with_defaults(tmp_path):
    from test_mace_scf_compat import FIXTURE_CONFIG

    keys = tmp_path / "mixed_keys.yaml"
    keys.write_text(yaml.safe_dump(FIXTURE_CONFIG))
    cfg = {"shards": 1, "datasets": {"mixed": {"inputs": [str(DATA / "mace_scf_mixed_test_configs.xyz")],
                                               "keys_from": str(keys)}}}
    proc = _snakemake(tmp_path, cfg, "--cores", "2")
    assert "dataset mixed: configs in 6 / written 6 / rejected 0" in proc.stdout, proc.stderr[-3000:]
    with ScfdataFile(tmp_path / "results" / "mixed" / "train.h5") as f:
        assert f.n_configs == 6 and f.coverage("esps") == 6


# -- config fuzz: every malformed config is exit 1 with one `config:` line, never a traceback ---------
def _fuzz_cases(tmp: Path):
    ds = {"inputs": [str(WATER)], "keys": {"info_keys": {"energy": "energy"}, "arrays_keys": {"forces": "forces"}}}
    d = lambda **kw: {"datasets": {"w": {**ds, **kw}}}  # noqa: E731
    r = lambda **kw: {"datasets": {"w": ds}, "reference": kw}  # noqa: E731
    dup = tmp / "dup.yaml"
    dup.write_text(f"datasets:\n  w: {json.dumps(ds)}\n  w: {json.dumps(ds)}\n")
    return [
        ("shards: 1000000000", {"shards": 1000000000, **d()}, "shards: 1000000000 is greater than the maximum"),
        ("shards: 0", {"shards": 0, **d()}, "shards: 0 is less than the minimum"),
        ("shards: text", {"shards": "four", **d()}, "shards: 'four' is not of type 'integer'"),
        ("smearing 1e300", r(esps={"smearing_width": 1e300}), "reference.esps.smearing_width"),
        ("negative smearing", r(esps={"smearing_width": -1.0}), "reference.esps.smearing_width"),
        ("tolerance 0", r(esps={"tolerance": 0.0}), "reference.esps.tolerance"),
        ("tolerance 1e-300", r(esps={"tolerance": 1e-300}), "reference.esps.tolerance"),
        ("max_l 3", r(esps={"max_l": 3}), "reference.esps.max_l"),
        ("max_l -1", r(esps={"max_l": -1}), "reference.esps.max_l"),
        ("max_l text", r(esps={"max_l": "abc"}), "reference.esps.max_l"),
        ("enabled yes", r(esps={"enabled": "yes"}), "reference.esps.enabled"),
        ("unknown target", r(dipols={}), "unknown key 'dipols' (did you mean 'dipoles'?)"),
        ("covalent_scale 1e9", r(molecules={"covalent_scale": 1e9}), "reference.molecules.covalent_scale"),
        ("pair_overrides element", r(molecules={"pair_overrides": {"Na-Xx": 1.0}}), "'Xx' is not an element symbol"),
        ("pair_overrides pair", r(molecules={"pair_overrides": {"NaCl": 1.0}}), "element pairs like"),
        ("pair_overrides huge", r(molecules={"pair_overrides": {"Na-Cl": 1e9}}), "pair_overrides.Na-Cl"),
        ("kspace without preset", r(esps={"kspace_cutoff": 2.0}), "kspace_cutoff is a setting of preset"),
        ("unknown preset", r(esps={"preset": "mace"}), "reference.esps.preset: 'mace' is not one of"),
        ("dataset reference typo", d(reference={"esps": {"smearing": 1.0}}),
         "datasets.w.reference.esps: unknown key 'smearing' (did you mean 'smearing_width'?)"),
        ("dataset reference bound", d(reference={"esps": {"smearing_width": 1e300}}),
         "datasets.w.reference.esps.smearing_width"),
        ("enabled true, no inputs", d(reference={"dipoles": {"enabled": True}}),
         "datasets.w: reference.dipoles is enabled: true"),
        ("molecule key, connectivity", d(keys={"arrays_keys": {"forces": "forces", "molecule": "molID"}}),
         "set reference.molecules.source: key"),
        ("source key, no key", d(reference={"molecules": {"source": "key", "enabled": True}}),
         "needs molecule in the dataset's keys"),
        ("input twice", d(inputs=[str(WATER), str(WATER)]), "is listed twice"),
        ("no inputs", d(inputs=[]), "datasets.w.inputs: [] should be non-empty"),
        ("missing input", d(inputs=["nowhere.xyz"]), "file not found: nowhere.xyz"),
        ("keys and keys_from", d(keys_from=str(WATER)), "give exactly one of `keys` or `keys_from`"),
        ("unknown field", d(keys={"info_keys": {"enrgy": "energy"}}), "unknown field 'enrgy'"),
        ("fractions > 1", d(split={"valid_fraction": 0.7, "test_fraction": 0.6}), "must be <= 1"),
        ("bad dataset name", {"datasets": {"a/b": ds}}, "datasets: 'a/b' does not match"),
        ("min_distance 1e9", d(validation={"min_distance": 1e9}), "datasets.w.validation.min_distance"),
        ("duplicate dataset name", dup, "key 'w' is given twice in one mapping"),
        ("--set-scatter huge", (d(), "--set-scatter", "shard=1000000000"),
         "--set-scatter shard=1000000000: expected 1 to 100000 shards"),
    ]


def test_config_fuzz_each_malformed_config_is_one_config_line(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def dry_run(case):
        name, cfg, expected = case
        if isinstance(cfg, Path):
            cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path),
                   "--configfile", str(cfg), "-n"]
            return case, subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if isinstance(cfg, tuple):
            return case, _snakemake(tmp_path, cfg[0], "-n", *cfg[1:])
        return case, _snakemake(tmp_path, cfg, "-n")

    failures = []
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(dry_run, _fuzz_cases(tmp_path)))
    for (name, _, expected), proc in results:
        err = proc.stdout + proc.stderr
        lines = [ln for ln in err.splitlines() if ln.lstrip().startswith("config:")]
        if proc.returncode != 1 or "Traceback" in err or len(lines) != 1 or expected not in lines[0]:
            failures.append(f"{name}: exit {proc.returncode}: {lines or err[-600:]}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "results").exists()
