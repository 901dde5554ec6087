"""`scfdata index`'s one-pass numpy framing (scfdata.extxyz_index) gives what the frame-by-frame scan gave.

The reference here is the index's previous code, kept verbatim in :func:`_frame_by_frame`: every frame from
``iter_extxyz_spans`` (chunked framing, malformed frames by the line-by-line scanner) and every comment line
read by ``_header_keys``. Compared: frame count, keys, column counts and first frames (in their insertion
order: index.json is written from them), checkpoints, sha256 and the error message of a malformed file, on
the fixtures, the examples, odd files (CRLF, blank lines, padded or odd count lines, comments that are a
number, odd key=value text) and the hostile fuzz cases, with chunk sizes that put chunk boundaries at every
byte of a small file (inside a count line, a header, an atom line, a CRLF pair).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from test_ingest_hostile import _base_text, _mutate

from scfdata import shards
from scfdata.extxyz_index import CHUNK, _signatures
from scfdata.ingest import IngestError, iter_extxyz_spans

REPO = Path(__file__).resolve().parent.parent
FIXTURES = sorted((REPO / "tests" / "data").glob("*.xyz")) + sorted((REPO / "examples" / "data").glob("*.extxyz"))


def _frame_by_frame(path: Path) -> dict:
    """The scan as `scfdata index` computed it before the one-pass framing (one header parse per frame)."""
    keys, columns, first, checkpoints, n = set(), {}, {}, [], 0
    for frame, _ in iter_extxyz_spans(path):
        if frame.index % shards.CHECKPOINT_EVERY == 0:
            checkpoints.append([frame.index, frame.offset, frame.line])
        frame_keys, widths = shards._header_keys(frame.comment)
        keys.update(frame_keys)
        for key, w in widths.items():
            per = columns.setdefault(key, {})
            per[str(w)] = per.get(str(w), 0) + 1
            first.setdefault(key, {}).setdefault(str(w), frame.index)
        n += 1
    return {"n_frames": n, "keys": sorted(keys), "columns": columns, "first_frames": first,
            "checkpoints": checkpoints}


def _outcome(fn, *args, **kw):
    try:
        return json.dumps(fn(*args, **kw))  # the order of the dicts too, as index.json has it
    except IngestError as e:
        return f"IngestError: {e}"


def _same(path: Path, chunks=(CHUNK, 64, 7)) -> str:
    want = _outcome(_frame_by_frame, path)
    for chunk in chunks:
        assert _outcome(shards.scan_input, path, chunk=chunk) == want, (path.name, chunk)
    if not want.startswith("IngestError"):
        entry = shards.index_input(path, chunk=chunks[-1])
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["size"] == path.stat().st_size and entry["mtime_ns"] == path.stat().st_mtime_ns
    return want


@pytest.fixture
def every_4(monkeypatch):
    monkeypatch.setattr(shards, "CHECKPOINT_EVERY", 4)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_fixtures_and_examples_scan_as_frame_by_frame(path, every_4):
    assert json.loads(_same(path, chunks=(CHUNK, 4096, 333, 50)))["n_frames"] > 0


FRAME = "3\n{comment}\nO 0.0 0.0 0.0\nH 0.96 0.0 0.0\nH -0.24 0.93 0.0\n"
ODD_COMMENTS = [
    "Properties=species:S:1:pos:R:3 E=-1.5 Q=0",
    "Properties=species:S:1:pos:R:3 E=-1.25e-3 Q=1 config_type=w_7",
    "E=2 Q=-0",  # no Properties: the default columns
    "E=# Q=#",  # the signature of the one above
    "",  # blank comment line
    "42",  # a comment that is a count
    "   7   ",
    "just some words",
    "a=1 5=2 x2=3 x3=4",  # keys with digits
    'a="x=5 y" b={1 2} c=[3,4] d=\'q=1\'',
    'Properties="species:S:1:pos:R:3:m=1 :R:2" E=1',  # '=' inside Properties: frame by frame
    'Properties=species:S:1:pos:R:3:M:R:4 E=5 bad="unclosed',  # not key=value text: ase's parser
    "Properties=species:S:1:pos:R:3:M:R:9 E==5 F= 6 G=-.5e+3",
    "Properties=7 E=1",  # Properties that is a number
    "Lattice=\"8.0 0.0 0.0 0.0 8.0 0.0 0.0 0.0 8.0\" pbc=\"T T T\" E=3",
    "Lattice=\"9.0 0.0 0.0 0.0 8.0 0.0 0.0 0.0 8.0\" pbc=\"T T T\" E=3",
    "E=1\tQ=2\x0b",
    "E=\xe9 caf\xe9=1",
]


def _odd_file(path: Path, crlf: bool = False) -> Path:
    """Frames with every odd comment, blank lines between some, padded, zero-led and not plain count lines."""
    parts = []
    for k in range(3 * len(ODD_COMMENTS)):
        text = FRAME.format(comment=ODD_COMMENTS[k % len(ODD_COMMENTS)])
        if k % 5 == 1:
            text = "\n  \n" + text
        if k % 7 == 3:
            text = text.replace("3\n", "   3      \t                  \n", 1)  # longer than a plain count
        if k % 11 == 4:
            text = text.replace("3\n", "0003\n", 1)
        if k % 13 == 6 or k == 3 * len(ODD_COMMENTS) - 1:  # (the last frame too: read up to the end)
            text = text.replace("3\n", "3 atoms\n", 1)  # not a plain count: the line-by-line scanner
        parts.append(text)
    text = "".join(parts)
    path.write_bytes((text.replace("\n", "\r\n") if crlf else text).encode("latin-1"))
    return path


@pytest.mark.parametrize("crlf", [False, True])
def test_odd_files_for_every_chunk_boundary(tmp_path, every_4, crlf):
    """Chunks of every size from 5 to 120 bytes and a few larger: boundaries fall at every byte of the
    first frames (count line, header, atom lines, inside each CRLF pair)."""
    src = _odd_file(tmp_path / "odd.xyz", crlf)
    want = _frame_by_frame(src)
    assert want["n_frames"] == 3 * len(ODD_COMMENTS)
    raw = src.read_bytes()
    if crlf:  # a chunk ending between '\r' and '\n' is among those tried
        assert any(raw[c - 1:c + 1] == b"\r\n" for c in range(5, 121))
    for chunk in [*range(5, 121), 250, 1000, 4096]:
        assert shards.scan_input(src, chunk=chunk) == want, chunk
    _same(src)


def test_many_frames_with_few_key_sets_count_exactly(tmp_path, every_4):
    """2000 frames, values all different, keys present in some frames only and widths that change: the
    counts per key and width and the first frames are those of the frame-by-frame scan."""
    rng = np.random.default_rng(7)
    parts = []
    for _ in range(2000):
        m = int(rng.choice([1, 4, 9]))
        comment = f"Properties=species:S:1:pos:R:3:M:R:{m} E={rng.normal():.{int(rng.integers(1, 12))}f}"
        if rng.random() < 0.3:
            comment += f" Q={int(rng.integers(-3, 4))}"
        if rng.random() < 0.1:
            comment += f" config_type=t{int(rng.integers(0, 4))}"
        rows = "".join(f"H {x:.4f} 0.0 0.0{' 0.0' * m}\n" for x in rng.normal(size=2))
        parts.append(f"2\n{comment}\n{rows}")
    src = tmp_path / "many.xyz"
    src.write_text("".join(parts))
    got = json.loads(_same(src, chunks=(CHUNK, 1000, 97)))
    assert got["n_frames"] == 2000 and sum(got["columns"]["M"].values()) == 2000


def test_signatures_cut_only_number_values_after_an_equals_sign():
    comments = [b"E=-1.5 Q=2 t=w_7", b"E=3e-4 Q=12 t=w_7\r", b"E=1 Q=2 t=w_8", b"E=1 5=2 t=w_7", b'a="b=5 c"',
                b"x=5y", b"x=# y=" + b"1" * 30, b""]
    raw = np.frombuffer(b"\n".join(comments) + b"\n", np.uint8)
    ce = np.flatnonzero(raw == 10)
    cs = np.concatenate([[0], ce[:-1] + 1])
    assert _signatures(raw, cs, ce) == [b"E=# Q=# t=w_7", b"E=# Q=# t=w_7\r",
                                        b"E=# Q=# t=w_8", b"E=# 5=# t=w_7", b'a="b=# c"', b"x=5y",
                                        b"x=# y=#", b""]


def test_hostile_fuzz_cases_scan_as_frame_by_frame(tmp_path, every_4):
    """The hostile test's malformed files (truncated, bad count lines, blank lines inside frames, junk
    bytes): the same frames, or the same error, whatever the chunk size."""
    rng = np.random.default_rng(20261204)
    outcomes = set()
    for case in range(150):
        text, _ = _mutate(_base_text(rng), rng)
        src = tmp_path / f"c{case}.xyz"
        src.write_bytes(text.encode("latin-1", errors="replace"))
        outcomes.add(_same(src, chunks=(CHUNK, 61, 9)).startswith("IngestError"))
    assert outcomes == {True, False}


def test_a_frame_larger_than_the_chunk(tmp_path, every_4):
    src = tmp_path / "big.xyz"
    src.write_text("".join(f"{n}\nE={n}\n" + "H 0.0 0.0 0.0\n" * n for n in (1, 500, 2, 3000, 1)))
    assert json.loads(_same(src, chunks=(CHUNK, 64, 1000)))["n_frames"] == 5


def test_random_key_value_comments_scan_as_frame_by_frame(tmp_path, every_4):
    """Comments drawn from pieces that could fool the signature (numbers and '#' next to '=', keys with digits,
    '=' inside quotes and Properties, unclosed quotes): the same keys, counts and first frames."""
    rng = np.random.default_rng(11)
    keys = ["E", "Q", "x2", "5", "Properties", "config_type", "a#", "e"]
    values = ["-1.5", "2", "#", "1e-3", "+.5", "e", '"x=5 y"', "{1 2}", "[3,4]", "w_7", "=5", "",
              "species:S:1:pos:R:3", "species:S:1:pos:R:3:M:R:4", "species:S:1:pos:R:3:M=1:R:2", '"unclosed']
    seps = ["=", "=", "= ", " = "]
    parts = []
    for _ in range(600):
        pairs = [f"{rng.choice(keys)}{rng.choice(seps)}{rng.choice(values)}" if rng.random() < 0.9
                 else str(rng.choice(keys)) for _ in range(int(rng.integers(0, 5)))]
        parts.append(FRAME.format(comment=" ".join(pairs)))
    src = tmp_path / "random.xyz"
    src.write_text("".join(parts))
    _same(src, chunks=(CHUNK, 300))


def test_an_overlong_count_line_is_the_usual_one_line_error(tmp_path):
    """A count line of thousands of digits (int() refuses 4,300+) is refused as the frame-by-frame scan
    refuses it, naming the line, not with a bare ValueError."""
    src = tmp_path / "long.xyz"
    src.write_text("1\nE=1\nH 0 0 0\n" + "9" * 5000 + "\nE=2\nH 0 0 0\n")
    want = _same(src)
    assert want.startswith("IngestError: ") and "line 4" in want, want[:200]
