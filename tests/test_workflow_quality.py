"""The quality rules in a real Snakemake run on tiny data: the bundled water clusters plus a second file
holding copies of some of its frames (exact, translated with noise) and an energy outlier. flags.tsv and
quality.npz follow the contract; `quality.enabled: false` reruns only the dataset job and writes no flag;
a bad quality setting stops the run with one `config:` line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml

from scfdata.quality import FLAG_NAMES

REPO = Path(__file__).resolve().parent.parent
WATER = REPO / "examples" / "data" / "water_clusters.extxyz"
TARGETS = ["molecules", "esps", "fields", "dipoles", "molecular_forces", "cluster_virial"]

pytestmark = pytest.mark.slow


def _snakemake(work: Path, cfg: dict, *args: str) -> subprocess.CompletedProcess:
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _config(extra: Path, quality: dict | None = None) -> dict:
    return {
        "shards": 2,
        "datasets": {"d": {
            "inputs": [str(WATER), str(extra)],
            "keys": {"info_keys": {"energy": "energy", "dipole": "REF_dipole", "total_charge": "total_charge"},
                     "arrays_keys": {"forces": "forces", "charges": "REF_charges"}},
        }},
        "reference": {t: {"enabled": False} for t in TARGETS},
        "quality": quality or {},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("wfq")
    frames = ase.io.read(WATER, ":")
    rng = np.random.default_rng(0)
    near = frames[7].copy()
    near.positions += [2.0, -1.0, 0.5] + rng.uniform(-0.004, 0.004, near.positions.shape)
    outlier = frames[12].copy()
    outlier.positions += rng.normal(0, 0.1, outlier.positions.shape)
    outlier.info["energy"] = frames[12].get_potential_energy() + 50.0
    outlier.info["REF_dipole"] = (outlier.arrays["REF_charges"][:, None] * outlier.positions).sum(axis=0)
    for a, src in ((near, frames[7]), (outlier, frames[12])):
        a.calc = None
        a.arrays["forces"] = src.get_forces()
        a.info.setdefault("energy", src.get_potential_energy())
    extra = work / "extra.extxyz"
    ase.io.write(extra, [frames[0], frames[40], near, outlier], format="extxyz")
    cfg = _config(extra)
    proc = _snakemake(work, cfg, "--cores", "2", "results/d/flags.tsv")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, cfg, extra


def test_flags_tsv_and_quality_npz_follow_the_contract(run):
    work, _, extra = run
    lines = (work / "results" / "d" / "flags.tsv").read_text().splitlines()
    assert lines[0] == "file\tframe\tflag\tdetail"
    rows = {(r[0], int(r[1]), r[2]): r[3] for r in (ln.split("\t") for ln in lines[1:])}
    assert rows[(str(extra), 0, "duplicate")].startswith(f"duplicate of {WATER}:0")
    assert rows[(str(extra), 1, "duplicate")].startswith(f"duplicate of {WATER}:40")
    assert rows[(str(extra), 2, "near_duplicate")].startswith(f"near duplicate of {WATER}:7: max |Δr|")
    assert "robust sigmas" in rows[(str(extra), 3, "energy_outlier")]
    assert len(rows) == 4, rows
    with np.load(work / "results" / "d" / "quality.npz", allow_pickle=False) as z:
        assert [str(n) for n in z["flag_names"]] == list(FLAG_NAMES)
        flags = [z[f"flags_{k}"] for k in range(2)]
        original = [z[f"original_{k}"] for k in range(2)]
        meta = json.loads(str(z["meta"]))
    assert all(f.dtype == np.uint32 for f in flags) and all(o.dtype == np.int64 for o in original)
    n = [len(f) for f in flags]
    assert sum(n) == 64 == meta["n_configs"]  # 61 + 4 frames, the overlapping pair is a reject
    allf, allo = np.concatenate(flags), np.concatenate(original)
    # the extra file's frames are the last four configs (input order); originals are global positions
    dup = FLAG_NAMES.index("duplicate")
    assert (allf[-4:-2] >> dup & 1).all() and allo[-4:].tolist()[:3] == [0, 40, 7]
    assert (allo[:-4] == -1).all() and allo[-1] == -1
    assert meta["counts"]["duplicate"] == 2 and meta["settings"]["outlier_sigma"] == 8.0


def test_enabled_false_reruns_only_the_dataset_job(run):
    work, cfg, _ = run
    off = {**cfg, "quality": {"enabled": False}}
    dry = _snakemake(work, off, "-n", "results/d/flags.tsv")
    assert dry.returncode == 0, dry.stderr[-2000:]
    table = dry.stdout.split("Job stats:")[1]
    assert "quality " in table and "quality_shard" not in table and "ingest" not in table, table
    proc = _snakemake(work, off, "--cores", "1", "results/d/flags.tsv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "results" / "d" / "flags.tsv").read_text() == "file\tframe\tflag\tdetail\n"
    with np.load(work / "results" / "d" / "quality.npz", allow_pickle=False) as z:
        assert not z["flags_0"].any() and not z["flags_1"].any()
        assert len(z["flags_0"]) + len(z["flags_1"]) == 64


def test_default_target_builds_flags(run):
    work, cfg, _ = run
    dry = _snakemake(work, cfg, "-n")
    assert "results/d/flags.tsv" in dry.stdout or "Nothing to be done" in dry.stdout, dry.stdout[-2000:]


@pytest.mark.parametrize("quality, message", [
    ({"drop": ["duplicat"]}, "config: quality.drop: unknown flag 'duplicat' (did you mean 'duplicate'?)"),
    ({"outlier_sigma": -1}, "config: quality.outlier_sigma:"),
    ({"dipole_tol": 1}, "config: quality: unknown key 'dipole_tol' (did you mean 'dipole_tolerance'?)"),
])
def test_bad_quality_setting_stops_with_one_config_line(tmp_path, quality, message):
    proc = _snakemake(tmp_path, _config(WATER.with_name("nacl_crystal.extxyz"), quality), "-n")
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in err, err[-2000:]
    assert len([ln for ln in err.splitlines() if ln.startswith("config:") or "config: quality" in ln]) == 1
    assert not (tmp_path / "results").exists()


def _sources(results: Path) -> dict[tuple[int, int], str]:
    """(input file index, frame) -> split name, over the published split files."""
    from scfdata.h5io import ScfdataFile

    out = {}
    for path in sorted(results.glob("*.h5")):
        with ScfdataFile(path) as f:
            for src in np.asarray(f.raw("configs", "source")).tolist():
                out[tuple(src)] = path.stem
    return out


def test_whole_run_keeps_copies_in_one_split_and_drop_makes_rejects(run):
    """Through every rule: with flags only, each copy sits in its first copy's split and nothing is lost;
    with `drop: [duplicate, energy_outlier]` those configs become rejects and every count reconciles."""
    work, cfg, _ = run
    cfg = json.loads(json.dumps(cfg))
    cfg["datasets"]["d"]["split"] = {"valid_fraction": 0.3, "test_fraction": 0.3, "seed": 3}
    proc = _snakemake(work, cfg, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = work / "results" / "d"
    where = _sources(results)
    assert len(where) == 64
    for copy, first in (((1, 0), (0, 0)), ((1, 1), (0, 40)), ((1, 2), (0, 7))):
        assert where[copy] == where[first], (copy, first, where[copy], where[first])
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["quality"]["flags"]["duplicate"] == 2 and manifest["quality"]["flagged"] == 4

    dropped = {**cfg, "quality": {"drop": ["duplicate", "energy_outlier"]}}
    proc = _snakemake(work, dropped, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((results / "manifest.json").read_text())
    rows = [ln.split("\t") for ln in (results / "rejects.tsv").read_text().splitlines()[1:]]
    quality_rows = sorted((r[0], int(r[1]), r[2].split(" of ")[0].split(" (")[0]) for r in rows
                          if r[2].startswith("quality:"))
    extra = str(work / "extra.extxyz")
    assert quality_rows == [(extra, 0, "quality: duplicate"), (extra, 1, "quality: duplicate"),
                            (extra, 3, "quality: energy_outlier")], quality_rows
    assert manifest["quality"]["dropped"] == {"duplicate": 2, "energy_outlier": 1}
    assert manifest["configs_in"] == 65 == manifest["written"] + manifest["rejected"]
    kept = _sources(results)
    assert manifest["written"] == 61 == len(kept)
    assert not {(1, 0), (1, 1), (1, 3)} & set(kept) and (1, 2) in kept
    verify = subprocess.run([sys.executable, "-m", "scfdata.cli", "verify", str(results)], capture_output=True,
                            text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = (results / "report.md").read_text()
    assert "## Quality flags" in report and "energy_outlier" in report
