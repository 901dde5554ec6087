"""`scfdata index`: frame count and headers of every input, the key mapping checked there (before any ingest
job), the dataset's multipole width recorded so that rejects do not depend on the shard count; and the
workflow's index rule, run for real with Snakemake: a key typo stops the run with exit 1 and no base.h5."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms

from scfdata.cli import main
from scfdata.h5io import ScfdataFile

REPO = Path(__file__).resolve().parent.parent
WATER = REPO / "examples" / "data" / "water_clusters.extxyz"
MIXED = REPO / "tests" / "data" / "mace_scf_mixed_test_configs.xyz"


def _frames(widths, tmp_path: Path) -> Path:
    frames = []
    for k, w in enumerate(widths):
        a = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        a.info["E"] = -float(k)
        a.arrays["M"] = np.zeros((3, w))
        frames.append(a)
    path = tmp_path / "w.xyz"
    ase.io.write(path, frames, format="extxyz")
    return path


def _ingest_shards(tmp_path: Path, src: Path, n_shards: int, settings: dict) -> list[tuple[int, list[int]]]:
    """(configs written, rejected frames) of every shard."""
    index = tmp_path / f"index{n_shards}.json"
    assert main(["index", str(src), "--shards", str(n_shards), "--settings", json.dumps(settings),
                 "-o", str(index)]) == 0
    out = []
    for s in range(n_shards):
        h5 = tmp_path / f"s{n_shards}-{s}.h5"
        assert main(["ingest", "--index", str(index), "--shard", str(s), "--settings", json.dumps(settings),
                     "-o", str(h5)]) == 0
        with ScfdataFile(h5) as f:
            out.append((f.n_configs, [int(r[1]) for r in f.rejects()]))
    return out


def test_multipole_widths_give_the_same_rejects_for_any_shard_count(tmp_path):
    """Widths 4 and 9 in one file: the first frame's width (4, from the index) is the dataset's; the width-9
    frames are rejects whether there are 1, 2 or 3 shards (before: a failed dataset with 2)."""
    src = _frames([4, 4, 4, 9, 9, 4], tmp_path)
    settings = {"keys": {"arrays_keys": {"atomic_multipoles": "M"}}}
    for n in (1, 2, 3):
        shards = _ingest_shards(tmp_path, src, n, settings)
        assert sum(w for w, _ in shards) == 4
        assert sorted(r for _, rej in shards for r in rej) == [3, 4]
    with ScfdataFile(tmp_path / "s2-1.h5") as f:
        reason = f.rejects()[0][2]
    assert "9 columns, the dataset's width (set by the first frame with 'M'" in reason and "is 4" in reason
    index = json.loads((tmp_path / "index3.json").read_text())
    assert index["widths"]["M"] == {"width": 4, "file": str(src), "frame": 0}
    assert index["inputs"][0]["columns"]["M"] == {"4": 4, "9": 2}
    assert index["inputs"][0]["first_frames"]["M"] == {"4": 0, "9": 3}


def test_an_invalid_first_width_does_not_set_the_dataset_width(tmp_path):
    """A first frame with 5 multipole columns (not (L+1)^2) is a reject of its own; the dataset's width is
    that of the first valid frame (9), for 1 and 2 shards alike."""
    src = _frames([5, 9, 4, 9], tmp_path)
    settings = {"keys": {"arrays_keys": {"atomic_multipoles": "M"}}}
    for n in (1, 2):
        shards = _ingest_shards(tmp_path, src, n, settings)
        assert sum(w for w, _ in shards) == 2 and sorted(r for _, rej in shards for r in rej) == [0, 2]


def test_index_key_typo_is_an_error_with_did_you_mean(tmp_path, capsys):
    settings = {"keys": {"info_keys": {"energy": "enrgy"}, "arrays_keys": {"forces": "forces"}}}
    assert main(["index", str(WATER), "--settings", json.dumps(settings), "-o", str(tmp_path / "i.json")]) == 1
    err = capsys.readouterr().err
    assert "energy -> 'enrgy' is in no frame (did you mean 'energy'?)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "i.json").exists()


def test_index_reads_through_blank_lines_and_ingest_checks_its_count(tmp_path):
    """A blank line between frames 2 and 3 (as in issue 14) dropped frames 3 and 4 silently (read 2, written 2,
    exit 0)."""
    frames = []
    for atoms in ase.io.read(WATER, index=":5"):
        buf = io.StringIO()
        ase.io.write(buf, atoms, format="extxyz")
        frames.append(buf.getvalue())
    blank = tmp_path / "blank.xyz"
    blank.write_text("".join(frames[:3]) + "\n  \n" + "".join(frames[3:]))
    assert main(["index", str(blank), "--shards", "2", "-o", str(tmp_path / "i.json")]) == 0
    assert json.loads((tmp_path / "i.json").read_text())["inputs"][0]["n_frames"] == 5
    written = []
    for s in (0, 1):
        out = tmp_path / f"{s}.h5"
        assert main(["ingest", "--index", str(tmp_path / "i.json"), "--shard", str(s), "--settings",
                     json.dumps({"keys": {"info_keys": {"energy": "energy"}}}), "-o", str(out)]) == 0
        with ScfdataFile(out) as f:
            written += f.raw("configs", "source")[:, 1].tolist()
    assert written == [0, 1, 2, 3, 4]
    # the file changes after indexing: the shard that no longer finds its frames says so
    blank.write_text("".join(frames[:3]))
    assert main(["ingest", "--index", str(tmp_path / "i.json"), "--shard", "1", "--settings",
                 json.dumps({"keys": {"info_keys": {"energy": "energy"}}}), "-o", str(tmp_path / "x.h5")]) == 1
    assert not (tmp_path / "x.h5").exists()


def test_mace_scf_mixed_test_configs_all_written_with_default_validation(tmp_path, caplog):
    """205 and 259 Å^3 per atom (periodic, low density) are data: kept, with one warning per config that
    names the file and the frame (before: rejected by max_volume_per_atom: 100)."""
    keys = tmp_path / "k.yaml"
    keys.write_text(yaml.safe_dump({"info_keys": {"total_charge": "total_charge"},
                                    "arrays_keys": {"atomic_multipoles": "some_multipoles"}}))
    assert main(["ingest", str(MIXED), "--keys", str(keys), "-o", str(tmp_path / "m.h5")]) == 0
    with ScfdataFile(tmp_path / "m.h5") as f:
        assert f.n_configs == 6 and len(f.rejects()) == 0
    notes = [r.getMessage() for r in caplog.records if "low density" in r.getMessage()]
    per_frame = [m for m in notes if ": frame " in m]
    dens = sorted(float(m.split("low density: ")[1].split(" ")[0]) for m in per_frame)
    assert len(per_frame) == len(set(per_frame)) >= 2 and all(str(MIXED) in m for m in per_frame)
    assert dens[0] > 100 and any(abs(d - 205) < 1 for d in dens) and any(abs(d - 259) < 1 for d in dens)


def _snakemake(workdir: Path, cfg: dict) -> subprocess.CompletedProcess:
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--configfile", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_workflow_key_typo_stops_at_index_before_any_ingest(tmp_path):
    off = {t: {"enabled": False} for t in
           ("molecules", "esps", "fields", "dipoles", "molecular_forces", "cluster_virial")}
    cfg = {
        "shards": 2,
        "datasets": {"w": {"inputs": [str(WATER)],
                           "keys": {"info_keys": {"energy": "DFT_enrgy"}, "arrays_keys": {"forces": "forces"}}}},
        "reference": off,
        "export": {"mace": False},
    }
    proc = _snakemake(tmp_path, cfg)
    assert proc.returncode == 1, proc.stderr[-3000:]
    log = (tmp_path / "results" / "w" / "logs" / "index.log").read_text()
    assert "energy -> 'DFT_enrgy' is in no frame" in log and "Keys present in the frames:" in log
    assert not list((tmp_path / "results").rglob("base.h5"))
    assert not (tmp_path / "results" / "w" / "index.json").exists()


def test_shard_jobs_seek_to_the_index_checkpoints(tmp_path, monkeypatch):
    """The index records (frame, byte offset, line) every CHECKPOINT_EVERY frames; a shard job starts at the
    checkpoint before its first frame: it reads the same configs as one whole-file ingest, and frames before
    its checkpoint are never read (here: overwritten with junk of the same length after indexing)."""
    from scfdata import shards

    monkeypatch.setattr(shards, "CHECKPOINT_EVERY", 8)
    frames = [Atoms("OHH", positions=[[0, 0, 0.1 * k], [0.96, 0, 0], [-0.24, 0.93, 0]], info={"E": -float(k)})
              for k in range(50)]
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    text = buf.getvalue().replace("\n3\n", "\n\n  \n3\n", 5)  # blank lines between some frames
    src = tmp_path / "w.xyz"
    src.write_text(text)
    settings = {"keys": {"info_keys": {"energy": "E"}}}
    index = tmp_path / "index.json"
    assert main(["index", str(src), "--shards", "3", "--settings", json.dumps(settings), "-o", str(index)]) == 0
    entry = json.loads(index.read_text())["inputs"][0]
    lines = text.splitlines(keepends=True)
    raw = src.read_bytes()
    assert [c[0] for c in entry["checkpoints"]] == list(range(0, 50, 8))
    for frame, offset, line in entry["checkpoints"]:  # the count line of that frame, by byte and by line
        assert raw[offset:].split(b"\n", 1)[0] == b"3" and lines[line - 1] == "3\n"
        assert f"E={-float(frame)}" in lines[line]
    energies = []
    for s in range(3):
        h5 = tmp_path / f"s{s}.h5"
        assert main(["ingest", "--index", str(index), "--shard", str(s), "-o", str(h5),
                     "--settings", json.dumps(settings)]) == 0
        with ScfdataFile(h5) as f:
            energies += f.raw("configs", "energy").tolist()
    assert energies == [-float(k) for k in range(50)]
    last = json.loads(index.read_text())["shards"][2][0][1]  # first frame of the last shard
    seek = max(c[1] for c in entry["checkpoints"] if c[0] <= last)
    src.write_bytes(b"x" * seek + raw[seek:])  # everything before that checkpoint is now junk
    os.utime(src, ns=(entry["mtime_ns"], entry["mtime_ns"]))  # (as indexed: a changed file is refused)
    assert main(["ingest", "--index", str(index), "--shard", "2", "-o", str(tmp_path / "again.h5"),
                 "--settings", json.dumps(settings)]) == 0
    with ScfdataFile(tmp_path / "again.h5") as f:
        assert f.raw("configs", "energy").tolist() == [-float(k) for k in range(last, 50)]
    assert main(["ingest", "--index", str(index), "--shard", "0", "-o", str(tmp_path / "first.h5"),
                 "--settings", json.dumps(settings)]) == 1
