"""Atomic publication of a dataset's split files, under faults.

`scfdata assemble` re-run with a new split seed over a published set, killed (SIGKILL) at several points
or stopped by a full disk (a file size limit, RLIMIT_FSIZE): every set of split files a reader accepts is
from one split (one split id, no config in two accepted files), and the next run completes with nothing
left behind. Then the same through real Snakemake runs of the bundled example: a killed assemble job, a
file size limit, and deleted or truncated split files, which the next run rebuilds.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from scfdata.data import H5Dataset
from scfdata.h5io import FormatError, ScfdataFile
from scfdata.verify import verify

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "data" / "water_clusters.extxyz"
KEYS = {"info_keys": {"energy": "energy", "dipole": "REF_dipole", "total_charge": "total_charge"},
        "arrays_keys": {"forces": "forces", "charges": "REF_charges"}}
SPLITS = ("train", "valid", "test")


def _cli(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "scfdata.cli", *args], capture_output=True, text=True,
                          timeout=300, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"scfdata {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two ingested shards of the water example and two split seeds' labels."""
    d = tmp_path_factory.mktemp("shards")
    _cli("index", str(EXAMPLE), "--shards", "2", "-o", str(d / "index.json"))
    settings = json.dumps({"keys": KEYS, "on_error": "reject"})
    bases = []
    for k in range(2):
        bases.append(str(d / f"base{k}.h5"))
        _cli("ingest", "--index", str(d / "index.json"), "--shard", str(k), "--settings", settings, "-o", bases[-1])
    for seed in (1, 2):
        split = json.dumps({"valid_fraction": 0.25, "test_fraction": 0.25, "seed": seed, "by": "random"})
        _cli("split", "--settings", split, *bases, "-o", str(d / f"split{seed}.npz"))
    return d, bases


def _assemble_args(shards, seed: int, out: Path) -> list[str]:
    d, bases = shards
    return ["assemble", "--dataset", "w", "--split", str(d / f"split{seed}.npz"), "--index", str(d / "index.json"),
            "--shard-files", *bases, "-o", str(out)]


def _published(shards, seed: int, out: Path) -> Path:
    _cli(*_assemble_args(shards, seed, out))
    return out


def _accepted(directory: Path) -> dict[str, tuple[str, set]]:
    """Split name -> (split id, {(file, frame)}) of every split file a reader accepts, through both
    readers (ScfdataFile and H5Dataset must agree)."""
    out = {}
    for name in SPLITS:
        path = directory / f"{name}.h5"
        if not path.exists():
            continue
        try:
            with ScfdataFile(path) as f:
                out[name] = (f.split_id, {tuple(s) for s in np.asarray(f.raw("configs", "source")).tolist()})
        except FormatError as e:
            assert "\n" not in str(e)
            with pytest.raises(FormatError):
                H5Dataset(directory, split=name)
            continue
        assert len(H5Dataset(directory, split=name)) == len(out[name][1])
    return out


def _assert_one_split(directory: Path) -> dict:
    acc = _accepted(directory)
    ids = {sid for sid, _ in acc.values()}
    assert len(ids) <= 1, f"a reader accepts files of {len(ids)} splits: {sorted(acc)}"
    names = sorted(acc)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not acc[a][1] & acc[b][1], f"configs in both {a}.h5 and {b}.h5"
    return acc


def _temporaries(directory: Path) -> list[Path]:
    return [q for q in directory.rglob(".*") if q.is_file() and q.name.endswith((".tmp", ".scratch"))]


def _ids(directory: Path) -> dict[str, str]:
    out = {}
    for name in SPLITS:
        if (directory / f"{name}.h5").exists():
            with ScfdataFile(directory / f"{name}.h5", check_publication=False) as f:
                out[name] = f.split_id
    return out


# -- readers refuse a mixed set --------------------------------------------------------------------
def test_a_split_file_of_another_run_is_refused(shards, tmp_path):
    a = _published(shards, 1, tmp_path / "a")
    b = _published(shards, 2, tmp_path / "b")
    assert len(set(_ids(a).values())) == 1 and set(_ids(a).values()) != set(_ids(b).values())
    assert json.loads((a / "manifest.json").read_text())["split_id"] == _ids(a)["train"]
    shutil.copy(b / "train.h5", a / "train.h5")  # what a run stopped between two renames leaves
    with pytest.raises(FormatError, match=r"train.h5: split id \w+ differs from .*manifest.json's \w+"):
        ScfdataFile(a / "train.h5")
    with pytest.raises(FormatError, match="split id"):
        H5Dataset(a, split="train")
    assert set(_assert_one_split(a)) == {"valid", "test"}
    rep = verify(a)
    assert not rep.ok and any("train.h5" in p and "split id" in p for p in rep.problems)
    # without a manifest, the sibling split files must agree
    (a / "manifest.json").unlink()
    assert _assert_one_split(a) == {}
    with pytest.raises(FormatError, match="there is no manifest.json"):
        ScfdataFile(a / "test.h5")
    # a copy of one split file elsewhere, alone, is read as it is
    (tmp_path / "alone").mkdir()
    shutil.copy(b / "test.h5", tmp_path / "alone" / "test.h5")
    with ScfdataFile(tmp_path / "alone" / "test.h5") as f:
        assert f.n_configs > 0


def test_a_stale_split_file_not_in_the_manifest_is_refused(shards, tmp_path):
    out = _published(shards, 1, tmp_path / "r")
    man = json.loads((out / "manifest.json").read_text())
    del man["splits"]["test"]
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(FormatError, match="not listed in"):
        ScfdataFile(out / "test.h5")


# -- faults during a re-run with a new seed ----------------------------------------------------------
def _inode(path: Path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _kill_when(cmd: list[str], condition, timeout: float = 120.0) -> bool:
    """Run ``cmd``, SIGKILL it as soon as ``condition()`` holds; True when it was killed (False when it
    ended first)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if condition():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return False


def _kill_points(out: Path, full: float) -> dict:
    """Label -> a factory of the condition at which to kill, made when the run starts (inodes, clock)."""
    def replaced(name):
        def factory():
            ino = _inode(out / name)
            return lambda: _inode(out / name) != ino
        return factory

    def staged(name):
        return lambda: lambda: any(q.name.startswith(f".{name}.") for q in out.iterdir())

    def after(frac):
        def factory():
            t0 = time.monotonic()
            return lambda: time.monotonic() - t0 > frac * full
        return factory

    return {"train staged": staged("train.h5"), "valid staged": staged("valid.h5"),
            "train.h5 replaced": replaced("train.h5"), "manifest replaced": replaced("manifest.json"),
            **{f"after {f:.0%} of a run": after(f) for f in (0.5, 0.9)}}


@pytest.mark.slow
def test_sigkill_at_any_point_of_a_rerun_leaves_one_split_readable(shards, tmp_path):
    out = _published(shards, 1, tmp_path / "r")
    cmd = [sys.executable, "-m", "scfdata.cli", *_assemble_args(shards, 2, out)]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    full = time.monotonic() - t0
    killed = 0
    for label, factory in _kill_points(out, full).items():
        _published(shards, 1, out)  # set A published again
        old_id = _ids(out)["train"]
        killed += _kill_when(cmd, factory())
        _assert_one_split(out)
        # the next run completes, publishes the new split and leaves no temporary
        _cli(*_assemble_args(shards, 2, out))
        assert verify(out).ok, (label, verify(out).problems)
        assert not _temporaries(out), (label, _temporaries(out))
        ids = _ids(out)
        assert len(set(ids.values())) == 1 and old_id not in ids.values(), label
    assert killed >= 3, "the kills came too late to test anything"


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["small", "between"])
def test_full_disk_during_a_rerun_leaves_the_previous_set_and_one_line(shards, tmp_path, limit):
    out = _published(shards, 1, tmp_path / "r")
    before = _ids(out)
    sizes = sorted((out / f"{n}.h5").stat().st_size for n in SPLITS)
    nbytes = {"small": 4096, "between": (sizes[0] + sizes[-1]) // 2}[limit]

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    proc = subprocess.run([sys.executable, "-m", "scfdata.cli", *_assemble_args(shards, 2, out)],
                          capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and err, proc.stderr
    assert err[-1].startswith("scfdata assemble: error: dataset w: writing") and "nothing of this run was published" \
        in err[-1], err[-1]
    assert _ids(out) == before and set(_assert_one_split(out)) == set(SPLITS)  # the previous set, whole
    assert not _temporaries(out)
    _cli(*_assemble_args(shards, 2, out))
    assert verify(out).ok and len(set(_ids(out).values())) == 1 and _ids(out) != before


def test_killed_writers_temporaries_are_removed_by_the_next_run(shards, tmp_path):
    out = _published(shards, 1, tmp_path / "r")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for name in ("test.h5", "manifest.json", "rejects.tsv"):
        (out / f".{name}.{dead}.tmp").write_bytes(b"partial")
    running = out / f".train.h5.{os.getppid()}.tmp"  # a live process's: kept
    running.write_bytes(b"in progress")
    rep = verify(out)
    assert rep.ok and sum("a temporary of a job that stopped" in w for w in rep.warnings) == 3
    _cli(*_assemble_args(shards, 2, out))
    assert _temporaries(out) == [running]


def test_a_dataset_with_no_config_written_fails_with_its_reject_summary(tmp_path):
    frames = EXAMPLE.read_text().split("\n")
    # two frames whose energy is not a number: both rejected
    n0 = int(frames[0])
    block = frames[: n0 + 2]
    bad = [block[0], block[1].replace("energy=", "energy=nan x=")] + block[2:]
    src = tmp_path / "bad.extxyz"
    src.write_text("\n".join(bad + bad) + "\n")
    _cli("index", str(src), "--shards", "1", "-o", str(tmp_path / "index.json"))
    _cli("ingest", "--index", str(tmp_path / "index.json"), "--shard", "0", "--settings",
         json.dumps({"keys": KEYS, "on_error": "reject"}), "-o", str(tmp_path / "base.h5"))
    _cli("split", "--settings", json.dumps({"valid_fraction": 0.0, "test_fraction": 0.0, "seed": 0, "by": "random"}),
         str(tmp_path / "base.h5"), "-o", str(tmp_path / "split.npz"))
    proc = _cli("assemble", "--dataset", "bad", "--split", str(tmp_path / "split.npz"), "--index",
                str(tmp_path / "index.json"), "--shard-files", str(tmp_path / "base.h5"), "-o", str(tmp_path / "r"),
                check=False)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith("scfdata assemble: error: dataset bad: no config written: 2 of 2 frames rejected (")
    assert "(energy): 2)" in line and f"e.g. {src} frame 0: key 'energy'" in line
    assert not (tmp_path / "r" / "manifest.json").exists() and not (tmp_path / "r" / "train.h5").exists()


# -- the same through Snakemake ---------------------------------------------------------------------
SNAKEFILE = REPO / "Snakefile"


def _config(seed: int) -> dict:
    off = {"enabled": False}
    return {
        "shards": 2,
        "datasets": {"w": {"inputs": [str(EXAMPLE)], "keys": KEYS,
                           "split": {"valid_fraction": 0.2, "test_fraction": 0.1, "seed": seed}}},
        "reference": {"molecules": off, "esps": off, "fields": off, "dipoles": {"enabled": True},
                      "molecular_forces": off, "cluster_virial": off},
        "export": {"mace": False},
    }


def _snakemake(work: Path, seed: int, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    cfg = work / f"seed{seed}.yaml"
    cfg.write_text(yaml.safe_dump(_config(seed)))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(work), "--cores", "2",
           "--configfile", str(cfg), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _seed_of_published(res: Path) -> int:
    with ScfdataFile(res / "train.h5") as f:
        return f.provenance["split"]["seed"]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    work = tmp_path_factory.mktemp("publish_wf")
    _snakemake(work, 3)
    return work


@pytest.mark.slow
def test_workflow_rebuilds_a_deleted_or_truncated_split_file(workflow):
    res = workflow / "results" / "w"
    assert verify(res).ok
    (res / "train.h5").unlink()
    with open(res / "valid.h5", "r+b") as fh:
        fh.truncate(2000)
    dry = _snakemake(workflow, 3, "-n")
    assert "Nothing to be done" not in dry.stdout and "assemble" in dry.stdout
    _snakemake(workflow, 3)
    assert verify(res).ok, verify(res).problems
    assert "Nothing to be done" in _snakemake(workflow, 3, "-n").stdout


@pytest.mark.slow
def test_workflow_assemble_killed_or_out_of_disk_then_the_next_run_completes(workflow):
    res = workflow / "results" / "w"
    # 1. SIGKILL the assemble job of a re-run with a new seed as soon as it stages its first file
    cfg = workflow / "seed4.yaml"
    cfg.write_text(yaml.safe_dump(_config(4)))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workflow), "--cores", "2",
           "--configfile", str(cfg)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = None
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and killed is None:
        for q in res.glob(".*.h5.*.tmp"):
            try:
                os.kill(int(q.name.split(".")[3]), signal.SIGKILL)
                killed = q
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.001)
    assert proc.wait(timeout=300) != 0 and killed is not None, "assemble ended before it could be killed"
    _assert_one_split(res)
    # 2. a full disk (file size limit below the training file's size) in the next attempt
    limit = 20_000

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    failed = _snakemake(workflow, 4, check=False, preexec_fn=limit_file_size)
    assert failed.returncode != 0
    log = (res / "logs" / "assemble.log").read_text().strip().splitlines()
    assert log and "Traceback" not in "\n".join(log) and "nothing of this run was published" in log[-1], log[-3:]
    _assert_one_split(res)
    # 3. the next run completes and publishes the new split
    _snakemake(workflow, 4)
    assert verify(res).ok, verify(res).problems
    assert _seed_of_published(res) == 4 and len(set(_ids(res).values())) == 1
    assert not _temporaries(res), _temporaries(res)
