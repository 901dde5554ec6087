"""A shard job refuses an input that changed since `scfdata index` read it (its size or modification time
differ from those index.json recorded): the checkpoints are byte offsets into the file as indexed, so going
on would read the wrong frames. Real files, the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WATER = REPO / "examples" / "data" / "water_clusters.extxyz"
SETTINGS = json.dumps({"keys": {"info_keys": {"energy": "energy"}}})


def _scfdata(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "scfdata.cli", *argv], capture_output=True, text=True, env=env)


@pytest.fixture
def indexed(tmp_path):
    src = tmp_path / "frames.extxyz"
    src.write_bytes(WATER.read_bytes())
    index = tmp_path / "index.json"
    proc = _scfdata("index", str(src), "--shards", "2", "--settings", SETTINGS, "-o", str(index))
    assert proc.returncode == 0, proc.stderr
    return src, index


def _shard(index: Path, out: Path) -> subprocess.CompletedProcess:
    return _scfdata("ingest", "--index", str(index), "--shard", "1", "--settings", SETTINGS, "-o", str(out))


def test_the_index_records_size_and_modification_time(indexed):
    src, index = indexed
    entry = json.loads(index.read_text())["inputs"][0]
    assert (entry["size"], entry["mtime_ns"]) == (src.stat().st_size, src.stat().st_mtime_ns)
    assert _shard(index, src.parent / "ok.h5").returncode == 0


def test_a_grown_file_is_refused_with_the_fix(indexed):
    src, index = indexed
    size = src.stat().st_size
    with open(src, "ab") as fh:
        fh.write(WATER.read_bytes()[:2000])
    out = src.parent / "s1.h5"
    proc = _shard(index, out)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(src) in lines[0] and f"indexed {size} bytes" in lines[0]
    assert f"found {size + 2000} bytes" in lines[0] and "rerun `scfdata index`" in lines[0]
    assert not out.exists()


def test_a_rewritten_file_of_the_same_size_is_refused(indexed):
    src, index = indexed
    raw = src.read_bytes()
    src.write_bytes(raw.replace(b"energy=", b"energx=", 1))  # same size, new content
    st = src.stat()
    recorded = json.loads(index.read_text())["inputs"][0]["mtime_ns"]
    os.utime(src, ns=(st.st_atime_ns, recorded + 1_000_000_000))
    proc = _shard(index, src.parent / "s1.h5")
    assert proc.returncode == 1
    assert "changed since `scfdata index`" in proc.stderr and f"{st.st_size} bytes" in proc.stderr
    os.utime(src, ns=(st.st_atime_ns, recorded))  # the same size and time: taken as the indexed file
    assert _shard(index, src.parent / "s1.h5").returncode == 0


def test_an_index_without_them_is_taken_as_it_is(indexed):
    src, index = indexed
    data = json.loads(index.read_text())
    for entry in data["inputs"]:
        del entry["size"], entry["mtime_ns"]
    index.write_text(json.dumps(data))
    src.touch()
    assert _shard(index, src.parent / "s1.h5").returncode == 0


def test_a_file_written_while_it_is_indexed_is_refused(tmp_path, monkeypatch):
    """(The index reads the file once: a file still being written gives no index.)"""
    from scfdata import shards
    from scfdata.ingest import IngestError

    src = tmp_path / "frames.extxyz"
    src.write_bytes(WATER.read_bytes())
    scan = shards.index_extxyz

    def scan_then_append(path, *args, **kw):
        out = scan(path, *args, **kw)
        with open(path, "ab") as fh:
            fh.write(WATER.read_bytes()[:500])
        return out

    monkeypatch.setattr(shards, "index_extxyz", scan_then_append)
    size = src.stat().st_size
    with pytest.raises(IngestError, match=f"changed while `scfdata index` read it \\({size} bytes before, "
                                          f"{size + 500} after\\); rerun"):
        shards.index_input(src)
