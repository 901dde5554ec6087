"""`statistics: {e0: ...}` in the workflow: a real snakemake run on water clusters only (compositions
(H2O)n, collinear: the data cannot tell E0(H) from E0(O)). Without e0 the rank warning fires and names the
config key; supplied E0s (global, or a dataset's own file, which replaces the global ones) are used by the
statistics rule and the MACE export and recorded in statistics.json; a change reruns exactly the rules that
read them; bad values stop the run before any job with a one-line error naming the key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
E_H, E_O = -13.6, -2041.8  # "isolated-atom energies" the test supplies

pytestmark = pytest.mark.slow


def _water_clusters(path: Path, n_frames: int = 8) -> np.ndarray:
    """(H2O)n clusters, n = 1..4, molecules 3 Å apart; energy n·(E_O + 2 E_H − 0.4) + noise. Returns the
    energies and writes the frames."""
    rng = np.random.default_rng(5)
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    frames, energies = [], []
    for i in range(n_frames):
        n = 1 + i % 4
        pos = np.concatenate([water + [3.0 * k, 0.0, 0.0] for k in range(n)]) + rng.normal(0, 0.02, (3 * n, 3))
        atoms = ase.Atoms("OHH" * n, positions=pos)
        e = n * (E_O + 2 * E_H - 0.4) + rng.normal(0, 0.05)
        atoms.info["DFT_energy"] = e
        atoms.arrays["DFT_forces"] = rng.normal(0, 0.3, (3 * n, 3))
        frames.append(atoms)
        energies.append(e)
    ase.io.write(path, frames, format="extxyz")
    return np.array(energies)


def _config(work: Path, **extra) -> dict:
    off = {"enabled": False}
    cfg = {
        "shards": 1,
        "datasets": {"w": {"inputs": [str(work / "water.extxyz")],
                           "keys": {"info_keys": {"energy": "DFT_energy"}, "arrays_keys": {"forces": "DFT_forces"}}}},
        "reference": {t: off for t in ("molecules", "esps", "fields", "dipoles", "molecular_forces",
                                       "cluster_virial")},
        "export": {"mace": True},
    }
    cfg.update(extra)
    return cfg


def _snakemake(work: Path, cfg: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    path = work / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _jobs(out: str) -> set[str]:
    if "Nothing to be done" in out:
        return set()
    table = out.split("Job stats:")[1]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"total"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("e0wf")
    energies = _water_clusters(work / "water.extxyz")
    proc = _snakemake(work, _config(work), "--cores", "2")
    return work, energies, proc


def _stats(work: Path) -> dict:
    return json.loads((work / "results" / "w" / "statistics.json").read_text())


def test_collinear_compositions_warn_and_name_the_config_key(work):
    work, _, proc = work
    s = _stats(work)
    assert s["e0"]["rank"] == 1 and s["e0"]["n_elements"] == 2 and s["e0"]["underdetermined"]
    assert s["e0"]["undetermined_elements"] == ["H", "O"] and s["e0"]["supplied"] == {}
    [warning] = [w for w in s["warnings"] if "E0 of H, O is not determined" in w]
    assert "statistics: {e0: {H: -13.6, ...}}" in warning and "datasets.<ds>.statistics.e0" in warning
    assert "E0 of H, O is not determined" in (work / "results" / "w" / "logs" / "statistics.log").read_text()
    assert "E0 of H, O is not determined" in (work / "results" / "w" / "report.md").read_text()
    # the console table after the run: quality flags computed, none raised -> 0 in the flagged column
    table = proc.stderr[proc.stderr.index("scfdata: per dataset (configs)"):].splitlines()
    assert table[1].split() == ["dataset", "in", "written", "rejected", "flagged", "train", "valid", "test"]
    assert table[2].split() == ["w", "8", "8", "0", "0", "8", "0", "0"]
    # with quality flags (contract D: manifest.json `quality.flagged`) the column shows their count
    manifest = work / "results" / "w" / "manifest.json"
    stat = manifest.stat()
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "quality": {"flags": {"duplicate": 3},
                                                                                   "flagged": 3}}))
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # (no rerun of its dependants)
    again = _snakemake(work, _config(work), "--cores", "1", "--forcerun", "report").stderr
    assert again[again.index("scfdata: per dataset"):].splitlines()[2].split()[4] == "3"


def test_supplied_e0_reruns_statistics_and_export_and_is_used(work):
    work, energies, _ = work
    cfg = _config(work, statistics={"e0": {"O": E_O, "H": E_H}})
    assert _jobs(_snakemake(work, cfg, "-n").stdout) == {"statistics", "report", "export_mace", "all"}
    proc = _snakemake(work, cfg, "--cores", "2")
    s = _stats(work)
    assert s["atomic_energies"] == {"H": E_H, "O": E_O}
    assert s["e0"]["supplied"] == {"H": E_H, "O": E_O} and s["e0"]["method"] == "supplied"
    assert s["warnings"] == [] and "not determined" not in proc.stderr
    # energy per atom after the supplied E0s, computed here directly: n (E_O + 2 E_H − 0.4) + noise over 3n atoms
    n = 1 + np.arange(len(energies)) % 4
    per_atom = (energies - n * (E_O + 2 * E_H)) / (3 * n)
    assert s["energy_per_atom"]["mean"] == pytest.approx(per_atom.mean(), abs=1e-9)
    assert s["energy_per_atom"]["std"] == pytest.approx(per_atom.std(), abs=1e-9)
    mace = json.loads((work / "results" / "w" / "mace" / "statistics.json").read_text())
    assert mace["atomic_energies"] == {"1": E_H, "8": E_O}
    # unchanged values in a different order: nothing to do
    again = _config(work, statistics={"e0": {"H": E_H, "O": E_O}})
    assert _jobs(_snakemake(work, again, "-n").stdout) == set()


def test_a_datasets_e0_file_replaces_the_global_e0(work):
    work, _, _ = work
    (work / "e0.json").write_text(json.dumps({"H": -13.5, "8": -2040.0}))
    cfg = _config(work, statistics={"e0": {"H": E_H, "O": E_O}})
    cfg["datasets"]["w"]["statistics"] = {"e0": str(work / "e0.json")}
    _snakemake(work, cfg, "--cores", "2")
    assert _stats(work)["atomic_energies"] == {"H": -13.5, "O": -2040.0}
    (work / "e0.json").write_text(json.dumps({"H": -13.4, "O": -2040.0}))  # the file's content changes
    assert "statistics" in _jobs(_snakemake(work, cfg, "-n").stdout)


@pytest.mark.parametrize("e0, message", [
    ({"h": -13.6}, "config: statistics.e0: 'h' does not match"),
    ({"Xe": -1.0, "Q": 2.0}, "config: statistics.e0: 'Q' is not an element"),
    ({"H": float("nan")}, "config: statistics.e0: E0 of H must be a finite number in eV, found nan"),
    ({"H": "low"}, "config: statistics.e0.H: 'low' is not of type 'number'"),
    ("missing.json", "config: statistics.e0: missing.json: cannot read a JSON object of E0s in eV"),
])
def test_bad_e0_stops_before_any_job(tmp_path, e0, message):
    _water_clusters(tmp_path / "water.extxyz", n_frames=1)
    proc = _snakemake(tmp_path, _config(tmp_path, statistics={"e0": e0}), "-n", check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in err, err[-2000:]
    assert "Job stats" not in err and "Traceback" not in err
