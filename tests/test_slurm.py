"""The SLURM profile (workflows/profiles/slurm) against a real single-node SLURM that the test brings up.

A module fixture writes a munge key and a slurm.conf into its own folder, picks free ports and starts
munged, slurmctld and slurmd (Debian's `slurm-wlm`, `munge`; no accounting database, so job status comes
from squeue, as docs/slurm.md tells such clusters to do). The bundled example then runs through the
profile, shard rules as SLURM arrays, and every array of every output file is compared with a local run;
a second run has one array task cancelled (`scancel`) while it runs and must still end with the same
arrays. Skipped, with the reason, when not root (slurmd must run as root) or a package is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from scfdata.h5io import ScfdataFile

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "Snakefile"
PROFILE = REPO / "workflows" / "profiles" / "slurm"
NODE = "scfnode"
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol", "srun")
# What a user of a cluster without accounting adds to the profile (docs/slurm.md), plus short status
# checks for a small run (the first after 1 s, then 1 s after each check that sees a job end) and a short
# latency-wait (one machine's disk, no shared file system; a task whose output was deleted waits it out)
CLUSTER_ARGS = ("--slurm-status-command", "squeue", "--slurm-no-account",
                "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
                "--latency-wait", "5")

pytestmark = pytest.mark.slow


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _why_not() -> str | None:
    """Why this machine cannot run the SLURM tests, or None when it can."""
    if os.geteuid() != 0:
        return "needs root: the test's own slurmd must run as root to launch jobs (CI runs as root)"
    missing = [name for name in DAEMONS + CLIENTS if _which(name) is None]
    if missing:
        return (f"SLURM/munge not installed (missing: {', '.join(missing)}); "
                "install with `apt-get install -y slurm-wlm munge`")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, ctld_port: int, slurmd_port: int, cpus: int, mem_mb: int) -> str:
    return f"""\
# written by tests/test_slurm.py: a throw-away single-node cluster without accounting
ClusterName=scfdatatest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/ctld
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
MaxArraySize=1001
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={socket.gethostname()} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=scfdata Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """munged + slurmctld + slurmd in one folder; `env` points SLURM's clients at it (SLURM_CONF)."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        # snakemake-executor-plugin-slurm-jobstep drops SLURM_* variables (SLURM_CONF too) before its srun
        # inside a job; a real cluster's srun finds /etc/slurm/slurm.conf, this one gets it from a shim
        # first on PATH (sbatch passes PATH on), so nothing outside this folder is touched
        self.bin = root / "bin"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.bin}:{os.environ.get('PATH', '')}"}
        self.daemons: list[subprocess.Popen] = []

    def start(self) -> None:
        root = self.root
        for sub in ("munge", "ctld", "spool", "log", "bin"):
            (root / sub).mkdir()
        shim = self.bin / "srun"
        shim.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf} exec {_which('srun')} \"$@\"\n")
        shim.chmod(0o755)
        root.chmod(0o755)  # munged wants its socket's folder (and parents) executable by everyone
        (root / "munge").chmod(0o755)
        self._run(_which("mungekey"), "--create", "--keyfile", str(root / "munge" / "munge.key"))
        self._spawn("munged", _which("munged"), "-F", "--key-file", str(root / "munge" / "munge.key"),
                    "--socket", str(root / "munge" / "munge.socket"), "--pid-file", str(root / "munge" / "munged.pid"),
                    "--log-file", str(root / "log" / "munged.log"), "--seed-file", str(root / "munge" / "munged.seed"))
        self._wait(lambda: (root / "munge" / "munge.socket").exists(), 20, "munged did not create its socket")
        # at least 4 CPUs (several short jobs at once); memory is not a consumable resource here, the
        # node only has to be big enough for the profile's largest request (config_overrides: not checked)
        cpus = max(4, os.cpu_count() or 1)
        self.conf.write_text(_slurm_conf(root, _free_port(), _free_port(), cpus=cpus, mem_mb=64000))
        self._spawn("slurmctld", _which("slurmctld"), "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", _which("slurmd"), "-D", "-N", NODE, "-f", str(self.conf))
        self._wait(lambda: self.sinfo_state() == "idle", 60, "the node did not become idle")

    def sinfo_state(self) -> str:
        proc = subprocess.run(["sinfo", "-h", "-n", NODE, "-o", "%T"], env=self.env, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def squeue(self, *args: str) -> list[str]:
        proc = self._run("squeue", "-h", *args)
        return [line for line in proc.stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        """Cancel every job, stop the daemons (newest first), end any job process left behind."""
        if any(p.poll() is None for p in self.daemons) and self.conf.exists():
            subprocess.run(["scancel", "--full", "--partition", "scfdata"], env=self.env, capture_output=True,
                           timeout=30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                proc = subprocess.run(["squeue", "-h", "--states=RUNNING,COMPLETING"], env=self.env,
                                      capture_output=True, text=True, timeout=30)
                if proc.returncode != 0 or not proc.stdout.strip():
                    break
                time.sleep(0.5)
        for proc in reversed(self.daemons):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for pid in self._job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _job_processes(self) -> list[int]:
        """Processes (slurmstepd, job shells) whose environment points at this cluster's slurm.conf."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (last lines)\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in sorted((self.root / "log").glob("*.log")))

    def _spawn(self, name: str, *cmd: str) -> None:
        out = open(self.root / "log" / f"{name}.out", "w")
        self.daemons.append(subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True))
        out.close()

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}\n{self.logs()}")
        return proc

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{what} (exited: {dead or 'none'}; waited {timeout} s)\n{self.logs()}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(request):
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    # own folder with a short path: unix socket paths are limited to 108 bytes, and munged refuses a
    # socket folder whose parents are not world-executable (pytest's tmp folders are 0700)
    c = Cluster(Path(tempfile.mkdtemp(prefix="scfdata-slurm-")))
    request.addfinalizer(lambda: shutil.rmtree(c.root, ignore_errors=True))
    request.addfinalizer(c.stop)
    c.start()
    return c


def _workdir(path: Path) -> Path:
    """A working folder that looks like the repository: the bundled config and example data."""
    (path / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "config.yaml", path / "config" / "config.yaml")
    (path / "examples").symlink_to(REPO / "examples")
    return path


def _snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *args]


def _profile_cmd(workdir: Path, *args: str) -> list[str]:
    return _snakemake_cmd(workdir, "--workflow-profile", str(PROFILE), *CLUSTER_ARGS, *args)


def _check(returncode: int, log: str, what: str, cluster: Cluster | None = None) -> None:
    if returncode != 0:
        raise AssertionError(f"{what} failed (exit {returncode}):\n{log[-8000:]}\n{cluster.logs() if cluster else ''}")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The reference: the bundled example on this machine, `--cores 2`, no profile."""
    work = _workdir(tmp_path_factory.mktemp("local"))
    proc = subprocess.run(_snakemake_cmd(work, "--cores", "2"), capture_output=True, text=True, timeout=900)
    _check(proc.returncode, proc.stdout + proc.stderr, "the local run")
    return work


def _assert_same_arrays(reference: Path, work: Path, pattern: str) -> int:
    """Every array (pointers and rejects too) of every file `pattern` under results/ is equal; returns the count."""
    files = sorted(p.relative_to(reference) for p in (reference / "results").glob(pattern))
    assert files, f"the local run has no file results/{pattern}"
    assert sorted(p.relative_to(work) for p in (work / "results").glob(pattern)) == files
    for rel in files:
        with ScfdataFile(reference / rel) as a, ScfdataFile(work / rel) as b:
            assert sorted(a.datasets()) == sorted(b.datasets()), rel
            np.testing.assert_array_equal(a.atom_ptr, b.atom_ptr, err_msg=f"{rel}: atom_ptr")
            np.testing.assert_array_equal(a.molecule_ptr, b.molecule_ptr, err_msg=f"{rel}: molecule_ptr")
            assert a.rejects() == b.rejects(), rel
            for key in a.datasets():
                group, name = key.split("/")
                np.testing.assert_array_equal(np.asarray(a.raw(group, name)), np.asarray(b.raw(group, name)),
                                              err_msg=f"{rel}: {key}")
    return len(files)


def _array_tasks(log: str, rule: str) -> dict[str, str]:
    """Wildcards (`ds=water, scatteritem=1-of-2`) -> SLURM array task (`<array job>_<task>`) of `rule`'s jobs,
    from Snakemake's log: each job block gives a Snakemake job id its wildcards, and "Submitted array job
    with Snakemake IDs a,b,... and SLURM job ID N. The individual task IDs are k-m." lists them in task order."""
    wildcards = {}
    for m in re.finditer(rf"^rule {rule}:\n((?:    .*\n)+)", log, re.M):
        job = re.search(r"^    jobid: (\d+)$", m.group(1), re.M)
        wc = re.search(r"^    wildcards: (.*)$", m.group(1), re.M)
        if job and wc:
            wildcards[job.group(1)] = wc.group(1).strip()
    tasks = {}
    for m in re.finditer(r"Submitted array job with Snakemake IDs ([\d,]+) and SLURM job ID (\d+)\. "
                         r"The individual task IDs are (\d+)-(\d+)", log):
        for task, job in enumerate(m.group(1).split(","), start=int(m.group(3))):
            if job in wildcards:
                tasks[wildcards[job]] = f"{m.group(2)}_{task}"
    return tasks


def test_example_through_the_profile_equals_the_local_run(cluster, local_run, tmp_path):
    work = _workdir(tmp_path / "cluster")
    t0 = time.monotonic()
    proc = subprocess.run(_profile_cmd(work), env=cluster.env, capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    _check(proc.returncode, log, "the SLURM run", cluster)
    n_jobs = len(re.findall(r"^\[.*\]\n(?:local)?rule \w+:", log, re.M))
    n_subs = log.count("Submitted array job") + log.count("has been submitted with SLURM jobid")
    print(f"\nSLURM run of the example: {time.monotonic() - t0:.0f} s, {n_jobs} jobs in {n_subs} submissions")
    assert "Error in rule" not in log, log[-4000:]
    # the shard rules went out as arrays: a dataset's ingest shards are always ready together
    ingest = _array_tasks(log, "ingest")
    assert sorted(ingest) == [f"ds={ds}, scatteritem={k}-of-2" for ds in ("periodic", "water") for k in (1, 2)], ingest
    n_files = _assert_same_arrays(local_run, work, "*/*.h5")          # train/valid/test of every dataset
    n_files += _assert_same_arrays(local_run, work, "*/shards/*/*.h5")  # every shard fragment
    # water: base + 6 targets, periodic (charges, no forces): base + 4 targets (`enabled: auto`), 2 shards each;
    # split files: water train/valid/test, periodic train
    assert n_files == (7 + 5) * 2 + 4
    for ds in ("water", "periodic"):
        assert (work / "results" / ds / "rejects.tsv").read_text() == \
            (local_run / "results" / ds / "rejects.tsv").read_text()
        assert (work / "results" / ds / "report.md").is_file()


def test_cancelled_array_task_is_retried_to_the_same_arrays(cluster, local_run, tmp_path):
    """`scancel` one task of the ingest array (a dataset's shards are always ready together, so they always
    go out as one array) while its command runs; the profile's retry reruns it, and the shard files end
    equal to the local run's."""
    work = _workdir(tmp_path / "cancel")
    targets = [f"results/water/shards/{k}-of-2/base.h5" for k in (1, 2)]
    err_path = tmp_path / "snakemake.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(_profile_cmd(work, *targets), env=cluster.env, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    try:
        started = work / "results" / "water" / "logs" / "ingest" / "1-of-2.log"  # its command has begun
        deadline = time.monotonic() + 600
        while not started.exists():
            assert proc.poll() is None, f"the run ended before ingest started:\n{err_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "ingest did not start within 600 s"
            time.sleep(0.05)
        task = _array_tasks(err_path.read_text(), "ingest").get("ds=water, scatteritem=1-of-2")
        assert task, f"ingest 1-of-2 was not submitted as an array task:\n{err_path.read_text()[-4000:]}"
        state = cluster.squeue("--states=all", "-j", task, "-o", "%T")
        cancel = subprocess.run(["scancel", task], env=cluster.env, capture_output=True, text=True)
        assert cancel.returncode == 0 and state == ["RUNNING"], (state, cancel.stderr)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    log = err_path.read_text()
    _check(proc.returncode, log, "the SLURM run with a cancelled task", cluster)
    assert f"SLURM-job '{task}' failed, SLURM status is: 'CANCELLED'" in log, log[-4000:]
    assert cluster.squeue("--states=all", "-j", task, "-o", "%T") == ["CANCELLED"]
    # only ingest failed, and every failed job was retried. Besides the cancelled task, the array's first
    # task can fail too: the job step of task k > 1 was started for task 1's job, and on the cancel it
    # deletes task 1's output ("Removing output files of failed job"; plugin 2.8.0, docs/slurm.md)
    errors = re.findall(r"^Error in rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)$", log, re.M)
    assert errors and {rule for rule, _ in errors} == {"ingest"}, (errors, log[-4000:])
    for _, job in errors:
        assert f"Trying to restart job {job}." in log, log[-4000:]  # the profile's retry, not a rerun
    assert _assert_same_arrays(local_run, work, "water/shards/*/base.h5") == 2


def test_profile_names_every_shard_rule():
    """The profile is keyed on rule names: every rule it names exists, every rule that runs once per
    shard goes out as an array, every rule that runs a job has its resources (catches renamed rules)."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    arrays = {r.strip() for r in profile["slurm-array-jobs"].split(",")}
    work = _workdir(Path(tempfile.mkdtemp(prefix="scfdata-profile-")))
    try:
        (work / "export.yaml").write_text("export: {mace: true}\n")  # the optional export rule too
        proc = subprocess.run(_snakemake_cmd(work, "-n", "--configfile", str(work / "export.yaml")),
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _check(proc.returncode, proc.stdout + proc.stderr, "the dry run")
    blocks = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", proc.stdout, re.M)
    rules = {name for name, _ in blocks}
    shard_rules = {name for name, block in blocks if "scatteritem=" in block}
    assert {"ingest", "derive_esps", "statistics_shard", "export_mace"} <= shard_rules
    assert shard_rules <= arrays, f"shard rules not submitted as arrays: {sorted(shard_rules - arrays)}"
    assert arrays <= rules, f"the profile names rules the workflow does not have: {sorted(arrays - rules)}"
    for key in ("set-resources", "set-threads"):
        assert set(profile[key]) <= rules, f"{key} names unknown rules: {sorted(set(profile[key]) - rules)}"
    assert rules - {"all"} <= set(profile["set-resources"]), sorted(rules - {"all"} - set(profile["set-resources"]))
