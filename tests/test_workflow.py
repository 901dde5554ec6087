"""The real Snakemake workflow, run via subprocess on the bundled example files in a temporary folder.

One full run (module fixture), then dry runs: nothing left to do, a settings change reruns only its
dependants, config errors stop before any job, a user's --configfile does not pull in the bundled
datasets, the SLURM profile dry-runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml

from scfdata.h5io import ScfdataFile
from scfdata.targets import TARGETS as DERIVERS

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "Snakefile"
EXAMPLES = REPO / "examples" / "data"
TARGETS = ["molecules", "esps", "fields", "dipoles", "molecular_forces", "cluster_virial"]

pytestmark = pytest.mark.slow


def _available(target: str) -> bool:
    return target in DERIVERS


def _reference():
    """Every target on where the dataset's keys supply its inputs (`enabled: auto`, the default)."""
    return {t: {"enabled": "auto"} for t in TARGETS}


def _config(**reference_overrides) -> dict:
    ref = _reference()
    for k, v in reference_overrides.items():
        ref[k] = {**ref[k], **v}
    return {
        "shards": 2,
        "datasets": {
            "w": {
                "inputs": [str(EXAMPLES / "water_clusters.extxyz")],
                "keys": {"info_keys": {"energy": "energy", "dipole": "REF_dipole", "total_charge": "total_charge"},
                         "arrays_keys": {"forces": "forces", "charges": "REF_charges"}},
                "split": {"valid_fraction": 0.2, "test_fraction": 0.1, "seed": 3},
            },
            "p": {
                "inputs": [str(EXAMPLES / "nacl_crystal.extxyz")],
                "keys": {"info_keys": {"total_charge": "total_charge"}, "arrays_keys": {"charges": "REF_charges"}},
            },
        },
        "reference": ref,
        "export": {"mace": True},
    }


def _snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's job stats table."""
    if "Nothing to be done" in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)
            if m.group(1) != "total"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("wf")
    cfg = _write(work / "user.yaml", _config())
    proc = _snakemake(work, "--cores", "2", "--configfile", str(cfg))
    return work, cfg, proc


def test_outputs_exist_and_counts_reconcile(run):
    work, _, proc = run
    res = work / "results"
    for ds in ("w", "p"):
        for name in ("manifest.json", "rejects.tsv", "statistics.json", "report.md"):
            assert (res / ds / name).is_file(), f"{ds}/{name} missing"
    man = json.loads((res / "w" / "manifest.json").read_text())
    assert man["configs_in"] == 61 == man["written"] + man["rejected"]
    n_split = {}
    for split in ("train", "valid", "test"):
        with ScfdataFile(res / "w" / f"{split}.h5") as f:
            n_split[split] = f.n_configs
            assert len(f.rejects()) == man["rejected"]
            assert f.provenance["dataset"] == "w"
            assert f.provenance["inputs"][0]["sha256"]
            assert f.has("energy") and f.has("forces")
            if "esps" in DERIVERS:
                assert f.has("esps") and f.coverage("esps") == f.n_configs
    assert sum(n_split.values()) == man["written"]
    assert n_split == {"train": 42, "valid": 12, "test": 6}
    # no split block: everything in train.h5, no empty split files
    assert (res / "p" / "train.h5").is_file()
    assert not (res / "p" / "valid.h5").exists() and not (res / "p" / "test.h5").exists()
    with ScfdataFile(res / "p" / "train.h5") as f:
        assert f.n_configs == 4
    tsv = (res / "w" / "rejects.tsv").read_text().splitlines()
    assert tsv[0] == "file\tframe\treason" and len(tsv) == 1 + man["rejected"]
    assert f"dataset w: configs in 61 / written {man['written']} / rejected {man['rejected']}" in proc.stdout
    stats = json.loads((res / "w" / "statistics.json").read_text())
    assert stats["n_configs"] == 42 and stats["computed_on"] == "train"
    assert stats["forces"]["rms"] > 0
    assert (res / "w" / "benchmarks" / "ingest" / "1-of-2.tsv").is_file()
    assert "read 30, written" in (res / "w" / "logs" / "ingest" / "1-of-2.log").read_text()
    # the sharded MACE export: one file per split and shard, every config once; empty splits export nothing
    import h5py

    for split, n in n_split.items():
        files = sorted((res / "w" / "mace" / {"valid": "val"}.get(split, split)).glob("*.h5"))  # MACE's names
        assert len(files) == 2
        assert sum(len(h5py.File(f)["config_batch_0"]) for f in files) == n
    assert not (res / "p" / "mace" / "val").exists()


def test_second_run_does_nothing(run):
    work, cfg, _ = run
    out = _snakemake(work, "-n", "--configfile", str(cfg)).stdout
    assert "Nothing to be done" in out, out[-2000:]


def test_esps_change_reruns_only_its_dependants(run):
    if "esps" not in DERIVERS:
        pytest.skip("the esps target is not available yet")
    work, _, _ = run
    cfg = _write(work / "esps.yaml", _config(esps={"smearing_width": 0.5}))
    jobs = _jobs(_snakemake(work, "-n", "--configfile", str(cfg)).stdout)
    expected = {"derive_esps", "assemble", "statistics_shard", "statistics", "report", "export_mace", "all"}
    if "fields" in DERIVERS:
        expected.add("derive_fields")  # fields use the esps settings
    expected.add("warm_up")  # one per dataset and target: compiles the kernels of the new settings
    assert set(jobs) == expected, jobs
    assert jobs["derive_esps"] == 4  # 2 datasets x 2 shards
    assert jobs["assemble"] == 2


def test_unknown_key_stops_before_any_job(tmp_path):
    cfg = _config()
    cfg["datasets"]["w"]["split"]["sed"] = 1
    proc = _snakemake(tmp_path, "-n", "--configfile", str(_write(tmp_path / "bad.yaml", cfg)), check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "datasets.w.split: unknown key 'sed' (did you mean 'seed'?)" in err, err[-2000:]
    assert "Job stats" not in err and not (tmp_path / "results").exists()


def test_missing_input_stops_before_any_job(tmp_path):
    cfg = _config()
    cfg["datasets"]["p"]["inputs"] = ["nowhere/frames.extxyz"]
    proc = _snakemake(tmp_path, "-n", "--configfile", str(_write(tmp_path / "bad.yaml", cfg)), check=False)
    assert proc.returncode != 0
    assert "datasets.p.inputs: file not found: nowhere/frames.extxyz" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def _repo_like(tmp_path: Path) -> Path:
    """A working folder that looks like the repository: the bundled config and example data."""
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    (tmp_path / "examples").symlink_to(REPO / "examples")
    return tmp_path


def test_user_configfile_does_not_leak_example_datasets(tmp_path):
    work = _repo_like(tmp_path)
    bundled = list(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"])
    default = _snakemake(work, "-n").stdout
    for ds in bundled:
        assert f"results/{ds}/manifest.json" in default
    user = {"datasets": {"mine": _config()["datasets"]["p"]}, "reference": _reference()}
    out = _snakemake(work, "-n", "--configfile", str(_write(tmp_path / "my.yaml", user))).stdout
    assert "results/mine/manifest.json" in out
    for ds in bundled:
        assert f"results/{ds}/" not in out, f"bundled dataset {ds} leaked into the user's run"


@pytest.mark.parametrize("interpreter", ["installed", "without-script"])
def test_jobs_run_the_scfdata_of_snakemakes_interpreter_not_the_first_on_path(tmp_path, interpreter):
    """Another environment's `scfdata` first on PATH (here one that only fails) is not what the jobs run:
    they run the script beside the interpreter that runs Snakemake, whose package built the DAG, or, when
    no script sits beside it (here: the interpreter through a symlink in another folder), `python -m`."""
    python = sys.executable
    if interpreter == "without-script":
        (tmp_path / "bare").mkdir()
        python = str(tmp_path / "bare" / "python")
        os.symlink(sys.executable, python)
    impostor = tmp_path / "other-env" / "bin"
    impostor.mkdir(parents=True)
    (impostor / "scfdata").write_text("#!/bin/sh\necho 'the wrong scfdata ran' >&2\nexit 3\n")
    (impostor / "scfdata").chmod(0o755)
    cfg = {"datasets": {"p": _config()["datasets"]["p"]}, "reference": _reference(), "shards": 1}
    cmd = [python, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path), "--cores", "2", "-p",
           "--configfile", str(_write(tmp_path / "user.yaml", cfg))]
    env = {**os.environ, "PATH": f"{impostor}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the wrong scfdata ran" not in proc.stdout + proc.stderr
    assert (f"{python} -m scfdata.cli ingest" in proc.stdout + proc.stderr) == (interpreter == "without-script")
    with ScfdataFile(tmp_path / "results" / "p" / "train.h5") as f:
        assert f.n_configs > 0


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm is not installed")
def test_slurm_profile_dry_runs(tmp_path):
    work = _repo_like(tmp_path)
    proc = _snakemake(work, "-n", "--workflow-profile", str(REPO / "workflows" / "profiles" / "slurm"))
    jobs = _jobs(proc.stdout)
    assert jobs["ingest"] == 2 * len(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"])
    assert "error" not in proc.stderr.lower()


def test_shard_count_does_not_change_the_arrays(run, tmp_path):
    """Same inputs and settings, 1 shard instead of 2: the same configs in each split, same arrays."""
    work, cfg, _ = run
    _snakemake(tmp_path, "results/w/manifest.json", "--cores", "2", "--configfile", str(cfg),
               "--set-scatter", "shard=1")
    for split in ("train", "valid", "test"):
        with ScfdataFile(work / "results" / "w" / f"{split}.h5") as a, \
                ScfdataFile(tmp_path / "results" / "w" / f"{split}.h5") as b:
            assert sorted(a.datasets()) == sorted(b.datasets())
            np.testing.assert_array_equal(a.atom_ptr, b.atom_ptr)
            for key in a.datasets():
                group, name = key.split("/")
                np.testing.assert_array_equal(np.asarray(a.raw(group, name)), np.asarray(b.raw(group, name)),
                                              err_msg=key)


def _same_arrays(dir_a: Path, dir_b: Path, splits=("train", "valid", "test")) -> None:
    for split in splits:
        with ScfdataFile(dir_a / f"{split}.h5") as a, ScfdataFile(dir_b / f"{split}.h5") as b:
            assert sorted(a.datasets()) == sorted(b.datasets())
            for key in a.datasets():
                group, name = key.split("/")
                np.testing.assert_array_equal(np.asarray(a.raw(group, name)), np.asarray(b.raw(group, name)),
                                              err_msg=f"{split}: {key}")


def test_killed_run_resumes_with_rerun_incomplete_to_the_same_arrays(run, tmp_path):
    """SIGKILL the whole run (Snakemake and its jobs) once the first shard is ingested, then resume."""
    import os
    import signal
    import time

    work, cfg, _ = run
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path),
           "results/w/manifest.json", "--cores", "2", "--configfile", str(cfg)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "results" / "w").glob("**/base.h5")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results" / "w" / "manifest.json").exists(), "killed too late: nothing to resume"
    _snakemake(tmp_path, "--unlock", "--configfile", str(cfg))  # a SIGKILLed run leaves its lock behind
    _snakemake(tmp_path, "results/w/manifest.json", "--cores", "2", "--rerun-incomplete", "--configfile", str(cfg))
    _same_arrays(work / "results" / "w", tmp_path / "results" / "w")


def test_real_mace_scf_files_through_the_whole_workflow(tmp_path):
    """MACE_SCF's own data files and training config, unchanged: FHI-aims water clusters (l <= 2) and its
    mixed cluster/slab/bulk test configs, every target on; then `scfdata check` reads the same config."""
    from test_mace_scf_compat import FIXTURE_CONFIG, WATER_CONFIG

    data = REPO / "tests" / "data"
    water_cfg = _write(tmp_path / "water_mace_scf.yaml", WATER_CONFIG)
    mixed_cfg = _write(tmp_path / "mixed_mace_scf.yaml", FIXTURE_CONFIG)
    ref = _reference()
    ref["esps"] = {"enabled": _available("esps"), "max_l": 2}
    cfg = {"shards": 1, "reference": ref, "datasets": {
        "aims": {"inputs": [str(data / "mace_scf_water_clusters_40.xyz")], "keys_from": str(water_cfg)},
        "mixed": {"inputs": [str(data / "mace_scf_mixed_test_configs.xyz")], "keys_from": str(mixed_cfg),
                  "validation": {"max_volume_per_atom": None}},  # MACE_SCF's sparse test boxes
    }}
    proc = _snakemake(tmp_path, "--cores", "2", "--configfile", str(_write(tmp_path / "cfg.yaml", cfg)))
    n_mixed = len(ase.io.read(data / "mace_scf_mixed_test_configs.xyz", ":"))
    assert "dataset aims: configs in 40 / written 40 / rejected 0" in proc.stdout
    assert f"dataset mixed: configs in {n_mixed} / written {n_mixed} / rejected 0" in proc.stdout
    with ScfdataFile(tmp_path / "results" / "aims" / "train.h5") as f:
        b = f.read_batch(np.arange(f.n_configs))
        assert b["atomic_multipoles"].shape[1] == 9
        # the multipole order on real data: Σ Q r + Σ d reproduces FHI-aims' dipole to its last digit
        assert np.abs(b["dipole_from_multipoles"] - b["dipole"]).max() < 2e-7
        if _available("esps"):
            assert f.coverage("esps") == 40 and np.all(np.isfinite(b["esps"]))
        if _available("molecules"):  # water, hydronium and hydroxide: one molecule per oxygen
            n_oxygen = np.add.reduceat(b["numbers"] == 8, f.atom_ptr[:-1])
            assert np.array_equal(np.diff(f.raw("configs", "molecule_ptr")), n_oxygen)
    with ScfdataFile(tmp_path / "results" / "mixed" / "train.h5") as f:
        assert f.n_configs == n_mixed
        if _available("esps"):  # clusters, slabs and bulk: every boundary class gets an ESP
            assert f.coverage("esps") == n_mixed
    check = subprocess.run([sys.executable, "-m", "scfdata.cli", "check", str(water_cfg),
                            str(tmp_path / "results" / "aims" / "train.h5")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# -- config checks added for the error-handling review: each stops a dry run before any job --------
def _assert_stopped(proc: subprocess.CompletedProcess, tmp_path: Path, *expected: str) -> None:
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0, err[-2000:]
    for text in expected:
        assert text in err, err[-2000:]
    assert "Job stats" not in err and not (tmp_path / "results").exists()


def test_unknown_molecule_centre_stops_before_any_job(tmp_path):
    cfg = _config(molecules={"centre": "centroid"})
    proc = _snakemake(tmp_path, "-n", "--configfile", str(_write(tmp_path / "bad.yaml", cfg)), check=False)
    _assert_stopped(proc, tmp_path,
                    "config: reference.molecules.centre: 'centroid' is not one of ['geometric', 'mass']")


@pytest.mark.parametrize("esps, expected", [
    ({"preset": "mace_scf", "max_l": 2}, "preset mace_scf evaluates multipoles up to l = 1"),
    ({"preset": "mace_scf", "boundary": "pbc"},
     "preset mace_scf has MACE_SCF's own boundary handling, got boundary 'pbc'"),
    ({"kspace_cutoff": 2.0}, "kspace_cutoff is a setting of preset: mace_scf only"),
])
def test_esps_settings_the_preset_refuses_stop_before_any_job(tmp_path, esps, expected):
    cfg = _config(esps={"enabled": True, **esps})
    proc = _snakemake(tmp_path, "-n", "--configfile", str(_write(tmp_path / "bad.yaml", cfg)), check=False)
    _assert_stopped(proc, tmp_path, "config: reference.esps", expected)


def test_esps_preset_without_graph_longrange_stops_before_any_job(tmp_path):
    import os

    # a sitecustomize on PYTHONPATH hides graph_longrange from snakemake's interpreter (find_spec -> None)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['graph_longrange'] = None\n")
    cfg = _config(esps={"enabled": True, "preset": "mace_scf"})
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path), "-n",
           "--configfile", str(_write(tmp_path / "cfg.yaml", cfg))]
    env = {**os.environ, "PYTHONPATH": str(hide)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    _assert_stopped(proc, tmp_path, "config: reference.esps: preset: mace_scf", "needs graph_longrange",
                    "cannot be imported in this environment: install it with pip install -U pip && pip install")


@pytest.mark.skipif(importlib.util.find_spec("graph_longrange") is None, reason="graph-longrange not installed")
def test_valid_esps_preset_dry_runs(tmp_path):
    cfg = _config(esps={"enabled": True, "preset": "mace_scf", "max_l": 1})
    proc = _snakemake(tmp_path, "-n", "--configfile", str(_write(tmp_path / "ok.yaml", cfg)))
    assert "Job stats" in proc.stdout + proc.stderr
