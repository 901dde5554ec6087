"""Hostile input at the parse / index / ingest boundary (issue 14, items 5-7 and the fuzz test).

Named cases: paths that are not files, outputs that would clobber or cannot be written, a file-size limit,
YAML alias bombs, degenerate cells, leftovers of a killed ingest. Then a seeded fuzz test: a few hundred
malformed extxyz files and key files, each ingested in-process with a time limit; every case must end in
exit 0 with every frame accounted for (written or rejected, also across 2 shards), or exit 1 with one line
on stderr; never a traceback, never a hang, with bounded memory.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms

from scfdata.cli import main
from scfdata.h5io import ScfdataFile

REPO = Path(__file__).resolve().parent.parent
KEYS = {"info_keys": {"energy": "E", "total_charge": "Q"},
        "arrays_keys": {"forces": "F", "atomic_multipoles": "M"}}


def _run(capsys, *argv: str, limit: float = 30.0) -> tuple[int, str]:
    """(exit code, stderr) of one in-process CLI call, stopped by SIGALRM after ``limit`` seconds."""

    def timeout(signum, frame):
        raise TimeoutError(f"scfdata {' '.join(argv)} took more than {limit} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        rc = main(list(argv))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return rc, capsys.readouterr().err


def _one_line_error(rc: int, err: str, command: str = "ingest") -> None:
    assert rc == 1 and err.startswith(f"scfdata {command}: error: ") and err.count("\n") == 1, (rc, err)
    assert "Traceback" not in err


def _frame(k: int, pbc: bool = False, cell=None) -> Atoms:
    a = Atoms("OHH", positions=np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]) + [1.0, 1.0, 1.0 + k])
    a.info["E"] = -10.0 - k
    a.info["Q"] = 0.0
    a.arrays["F"] = np.full((3, 3), 0.1 * k)
    a.arrays["M"] = np.c_[[-0.8, 0.4, 0.4], np.zeros((3, 3))]
    if pbc:
        a.pbc, a.cell = True, np.diag([6.0, 6.0, 6.0]) if cell is None else cell
    return a


def _write(path: Path, frames) -> Path:
    ase.io.write(path, frames, format="extxyz")
    return path


@pytest.fixture
def keys(tmp_path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(KEYS))
    return path


# ----------------------------------------------------------------------------------- named cases (item 7)


def test_input_directory_symlink_loop_and_device_are_one_line_errors(tmp_path, keys, capsys):
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    for path, expected in ((tmp_path / "d", "input is a directory"),
                           (tmp_path / "loop", "Too many levels of symbolic links")):
        rc, err = _run(capsys, "ingest", str(path), "--keys", str(keys), "-o", str(tmp_path / "o.h5"))
        _one_line_error(rc, err)
        assert expected in err
        rc, err = _run(capsys, "index", str(path), "-o", str(tmp_path / "i.json"))
        _one_line_error(rc, err, "index")
    t0 = time.perf_counter()
    rc, err = _run(capsys, "index", "/dev/zero", "-o", str(tmp_path / "i.json"), limit=10)  # hung in sha256
    _one_line_error(rc, err, "index")
    assert "not a regular file" in err and time.perf_counter() - t0 < 5


def test_outputs_that_would_clobber_or_cannot_be_written(tmp_path, keys, capsys):
    src = _write(tmp_path / "in.xyz", [_frame(0), _frame(1)])
    before = src.read_bytes()
    (tmp_path / "outdir").mkdir()
    cases = [
        (["-o", str(src)], "the output is one of the inputs"),
        (["-o", str(tmp_path / "." / "in.xyz")], "the output is one of the inputs"),
        (["-o", str(tmp_path / "outdir")], "is a directory"),
        (["-o", "/proc/no-such-dir/out.h5"], "cannot create the directory /proc/no-such-dir"),
    ]
    for extra, expected in cases:
        rc, err = _run(capsys, "ingest", str(src), "--keys", str(keys), *extra)
        _one_line_error(rc, err)
        assert expected in err
    assert src.read_bytes() == before
    rc, err = _run(capsys, "index", str(src), str(tmp_path / "." / "in.xyz"), "-o", str(tmp_path / "i.json"))
    _one_line_error(rc, err, "index")
    assert "the same input file is listed twice" in err
    rc, err = _run(capsys, "ingest", str(src), str(src), "--keys", str(keys), "-o", str(tmp_path / "o.h5"))
    _one_line_error(rc, err)


def _cli(*args: str, fsize: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "scfdata.cli", *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env=env)


def test_file_size_limit_during_ingest_is_one_line_and_leaves_no_scratch(tmp_path, keys):
    """`ulimit -f` during ingest was a segmentation fault (SIGXFSZ, then HDF5 teardown)."""
    src = _write(tmp_path / "in.xyz", [_frame(k % 50) for k in range(1000)])
    proc = _cli("ingest", str(src), "--keys", str(keys), "-o", str(tmp_path / "o.h5"), fsize=40_000)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("INFO", "WARNING"))]
    # one line naming the output (or its scratch file, when HDF5's write fails before the rename)
    assert len(errors) == 1 and re.fullmatch(
        rf"scfdata ingest: error: {re.escape(str(tmp_path))}/(o\.h5|\.o\.h5\.\d+\.scratch): File too large; check "
        r"the path, the free space and the limits \(ulimit -f\)", errors[0]), proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xyz", "keys.yaml"]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text,expected", [
    (BOMB + "info_keys: {energy: E}\n", "expands to more than 1000000 nodes"),
    ("info_keys: &k {energy: E, again: *k}\n", "refers to its own anchor"),
    ("heads:\n  h: &h {info_keys: {energy: E}, x: [*h]}\n", "refers to its own anchor"),
])
def test_yaml_alias_bombs_are_refused_fast(tmp_path, capsys, text, expected):
    """A 10-line alias bomb expands to 387 million nodes (MemoryError after 30 s before)."""
    src = _write(tmp_path / "in.xyz", [_frame(0)])
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    for option in ("--keys", "--keys-from"):
        t0 = time.perf_counter()
        rc, err = _run(capsys, "ingest", str(src), option, str(bad), "-o", str(tmp_path / "o.h5"), limit=20)
        _one_line_error(rc, err)
        assert expected in err and time.perf_counter() - t0 < 10


@pytest.mark.parametrize("cell,pbc,expected", [
    (np.eye(3) * 0.05, True, "lattice planes 0.05 Å apart"),  # 1 atom: derive molecules took 17 GB
    (np.diag([0.001, 0.001, 12.0]), [True, True, False], "lattice planes 0.001 Å apart"),  # hung ingest
    (np.diag([3.0, 3.0, 0.3]), True, "lattice planes 0.3 Å apart"),
])
def test_degenerate_cells_are_rejected_at_ingest_fast(tmp_path, keys, capsys, cell, pbc, expected):
    frames = [_frame(0), _frame(1)]
    frames[1].pbc, frames[1].cell = pbc, cell
    src = _write(tmp_path / "in.xyz", frames)
    t0 = time.perf_counter()
    rc, err = _run(capsys, "ingest", str(src), "--keys", str(keys), "--on-error", "reject", "-o",
                   str(tmp_path / "o.h5"), limit=20)
    assert rc == 0 and time.perf_counter() - t0 < 10, err
    with ScfdataFile(tmp_path / "o.h5") as f:
        assert f.n_configs == 1 and f.rejects()[0][1] == 1 and expected in f.rejects()[0][2]


def test_scratch_of_a_killed_ingest_is_removed_by_the_next_run(tmp_path, keys):
    src = _write(tmp_path / "in.xyz", [_frame(k % 50) for k in range(1500)])
    out = tmp_path / "o.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "scfdata.cli", "ingest", str(src), "--keys", str(keys),
                             "-o", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scratch = tmp_path / f".o.h5.{proc.pid}.scratch"
    t0 = time.perf_counter()
    while not scratch.exists() and proc.poll() is None and time.perf_counter() - t0 < 60:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert scratch.exists() and not out.exists()
    live = tmp_path / f".o.h5.{os.getpid()}.scratch"  # a live process's scratch is left alone
    live.write_bytes(b"")
    done = _cli("ingest", str(src), "--keys", str(keys), "-o", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert not scratch.exists() and live.exists() and out.exists()
    assert "removed 1 leftover temporary file(s)" in done.stderr


# ----------------------------------------------------------------------------------- seeded fuzz test


def _base_text(rng: np.random.Generator) -> str:
    frames = [_frame(k, pbc=bool(rng.integers(2))) for k in range(3)]
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    return buf.getvalue()


_TOKENS = ["nan", "inf", "-inf", "T", "F", "abc", "1e400", "", "0x1F", "1,5", '"', "=", "1" * 400, "-0", "\t"]
_COMMENT_EDITS = [
    ("Lattice=\"", "Lattice=\"nan "), ("Lattice=\"8.0", "Lattice=\"0.001"), ("Lattice=\"8.0", "Lattice=\"1e300"),
    ("Lattice=\"8.0 0.0 0.0", "Lattice=\"8.0 0.0"), ("pbc=\"T T T\"", "pbc=\"T T\""),
    ("pbc=\"T T T\"", "pbc=\"X Y Z\""),
    ("pbc=\"F F F\"", "pbc=\"T T T\""), ("E=", "E=T E_old="), ("E=", "E=\"abc\" E_old="), ("E=", "E=1e400 E_old="),
    ("Q=0.0", "Q=0.5"), ("Q=0.0", "Q=\"1 2\""), ("Q=0.0", "Q=0.0 config_weight=-1"),
    ("Q=0.0", "Q=0.0 config_weight=nan"), ("Q=0.0", "Q=0.0 config_forces_weight=-0.5"),
    ("Q=0.0", "Q=0.0 config_dipole_weight=\"1 1\""), ("M:R:4", "M:R:5"), ("M:R:4", "M:R:9"), ("M:R:4", "M:R:x"),
    ("M:R:4", "M:L:4"), ("F:R:3", "F:S:3"), ("Properties=", "Properties=junk:"), ("Properties=", "Prop="),
    ("\"", ""), ("E=", "E=\"unclosed "), (" ", "   "), ("E=", "E=[1,2,3] E_old="),
]


def _mutate(text: str, rng: np.random.Generator) -> tuple[str, str]:
    """One malformed variant of ``text`` and the name of the mutation."""
    lines = text.splitlines(keepends=True)
    k = int(rng.integers(len(lines)))
    kind = str(rng.choice(["token", "line", "count", "comment", "truncate", "bytes", "blank", "swap"]))
    if kind == "token":
        parts = lines[k].split(" ")
        j = int(rng.integers(len(parts)))
        parts[j] = str(rng.choice(_TOKENS)) + ("\n" if parts[j].endswith("\n") else "")
        lines[k] = " ".join(parts)
    elif kind == "line":
        if rng.integers(2):
            del lines[k]
        else:
            lines.insert(k, lines[k])
    elif kind == "count":
        heads = [i for i, ln in enumerate(lines) if ln.strip().isdigit()]
        k = heads[int(rng.integers(len(heads)))]
        lines[k] = str(rng.choice(["4", "2", "0", "-5", "x", "3 3", "1000000000000", "99999999"])) + "\n"
    elif kind == "comment":
        comments = [i for i, ln in enumerate(lines) if "Properties=" in ln]
        k = comments[int(rng.integers(len(comments)))]
        old, new = _COMMENT_EDITS[int(rng.integers(len(_COMMENT_EDITS)))]
        lines[k] = lines[k].replace(old, new, 1)
    elif kind == "truncate":
        cut = int(rng.integers(1, len(text)))
        return text[:cut], kind
    elif kind == "bytes":
        junk = bytes(rng.integers(0, 256, int(rng.integers(1, 20)), dtype=np.uint8)).decode("latin-1")
        lines.insert(k, junk)
    elif kind == "blank":
        lines.insert(k, str(rng.choice(["\n", "   \n", "\t\n", "\r\n"])))
    else:
        j = int(rng.integers(len(lines)))
        lines[k], lines[j] = lines[j], lines[k]
    return "".join(lines), kind


def _key_file(rng: np.random.Generator) -> tuple[str, str]:
    choices = [
        (yaml.safe_dump(KEYS), "valid"),
        (yaml.safe_dump({"info_keys": {"energy": "Enrgy"}}), "typo"),
        (yaml.safe_dump({"info_keys": {"enrgy": "E"}}), "unknown field"),
        (yaml.safe_dump({"info_keys": ["E"]}), "list"),
        (yaml.safe_dump({"info_keys": {"energy": 3}}), "non-string key"),
        ("- a\n- b\n", "not a mapping"),
        ("info_keys: {energy: E\n", "syntax"),
        ("", "empty"),
        ("\x00\xff\xfe", "binary"),
        ("a: &a [1, 1, 1, 1]\nb: &b [*a, *a, *a, *a]\ninfo_keys: {energy: E}\n", "small aliases"),
        (BOMB, "alias bomb"),
        ("heads: 7\n", "bad heads"),
        (yaml.safe_dump({"heads": {"h": {"info_keys": {"energy": "E"}, "arrays_keys": {"forces": "F"}}}}), "heads"),
    ]
    return choices[int(rng.integers(len(choices)))]


def _accounted(out: Path, n_frames: int, files: list[Path]) -> int:
    """Every frame of the input once: written (its source) or rejected; returns the number written."""
    seen = []
    n_written = 0
    for f in files:
        with ScfdataFile(f) as h:
            if h.n_configs:
                seen += h.raw("configs", "source")[:, 1].tolist()
            seen += [int(r[1]) for r in h.rejects()]
            n_written += h.n_configs
    assert sorted(seen) == list(range(n_frames)), (out, sorted(seen), n_frames)
    return n_written


N_CASES = 240


def test_fuzz_malformed_frames_and_key_files(tmp_path, capsys):
    rng = np.random.default_rng(20261203)
    outcomes: Counter = Counter()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    slowest = 0.0
    for case in range(N_CASES):
        text, kind = _mutate(_base_text(rng), rng)
        if case % 4 == 3:  # a quarter of the cases with a hostile key file
            key_text, key_kind = _key_file(rng)
        else:
            key_text, key_kind = yaml.safe_dump(KEYS), "valid"
        src = tmp_path / f"c{case}.xyz"
        src.write_bytes(text.encode("latin-1", errors="replace"))
        keys = tmp_path / f"k{case}.yaml"
        keys.write_bytes(key_text.encode("latin-1"))
        out = tmp_path / f"c{case}.h5"
        t0 = time.perf_counter()
        rc, err = _run(capsys, "ingest", str(src), "--keys", str(keys), "--on-error", "reject", "-o", str(out))
        label = f"case {case} ({kind}, keys {key_kind})"
        if rc == 0:
            rc_i, err_i = _run(capsys, "index", str(src), "--shards", "2", "-o", str(tmp_path / f"i{case}.json"))
            assert rc_i == 0, (label, err_i)
            n_frames = json.loads((tmp_path / f"i{case}.json").read_text())["inputs"][0]["n_frames"]
            n_written = _accounted(out, n_frames, [out])
            outcomes["exit 0, all written" if n_written == n_frames else "exit 0, some rejected"] += 1
            if case % 3 == 0:  # the same frames through 2 shards: the same frames written and rejected
                shards = []
                for s in (0, 1):
                    shards.append(tmp_path / f"c{case}-{s}.h5")
                    rc_s, err_s = _run(capsys, "ingest", "--index", str(tmp_path / f"i{case}.json"), "--shard",
                                       str(s), "--keys", str(keys), "-o", str(shards[-1]))
                    assert rc_s == 0, (label, err_s)
                assert _accounted(out, n_frames, shards) == n_written, label
        else:
            _one_line_error(rc, err)
            assert not out.exists(), label
            outcomes["exit 1, one line"] += 1
        assert not [p for p in tmp_path.iterdir() if p.name.endswith((".scratch", ".tmp"))], label
        slowest = max(slowest, time.perf_counter() - t0)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(f"fuzz: {N_CASES} cases: {dict(outcomes)}; slowest {slowest:.2f} s; peak RSS grew {grown_mb:.0f} MB")
    assert sum(outcomes.values()) == N_CASES and len(outcomes) == 3, outcomes
    assert grown_mb < 500 and slowest < 30
