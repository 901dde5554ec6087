import pytest

from scfdata.ingest import IngestError
from scfdata.shards import MAX_SHARDS, count_frames, plan_shards, scan_input


def test_count_frames_matches_ase(water_fixture):
    import ase.io

    assert count_frames(water_fixture) == len(ase.io.read(water_fixture, index=":")) == 40


def test_count_frames_names_truncation(tmp_path, water_fixture):
    text = water_fixture.read_text()
    cut = tmp_path / "cut.xyz"
    cut.write_text(text[: len(text) // 2])
    with pytest.raises(IngestError, match="truncated in frame"):
        count_frames(cut)


@pytest.mark.parametrize("counts,n", [([10], 3), ([3, 0, 7], 4), ([2], 5), ([5, 5], 1)])
def test_plan_covers_every_frame_once(counts, n):
    plan = plan_shards(counts, n)
    assert len(plan) == n
    seen = [(f, i) for shard in plan for f, a, b in shard for i in range(a, b)]
    assert seen == [(f, i) for f, c in enumerate(counts) for i in range(c)]
    sizes = [sum(b - a for _, a, b in s) for s in plan]
    assert max(sizes) - min(sizes) <= 1


def test_plan_refuses_absurd_shard_counts():
    """`shards: 1000000000` was a MemoryError; now a one-line error before any list is built."""
    for n in (0, MAX_SHARDS + 1, 10**9):
        with pytest.raises(ValueError, match=f"the shard count must be in 1..{MAX_SHARDS}, got {n}"):
            plan_shards([10], n)


def test_scan_reads_through_blank_lines_and_reports_keys_and_widths(tmp_path):
    import ase.io
    import numpy as np
    from ase import Atoms

    frames = []
    for k, w in enumerate([4, 9, 4]):
        a = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
        a.info["E"], a.info["label"] = -1.0 * k, "a b"
        a.arrays["M"] = np.zeros((2, w))
        frames.append(a)
    ase.io.write(tmp_path / "f.xyz", frames[:2], format="extxyz")
    ase.io.write(tmp_path / "g.xyz", frames[2:], format="extxyz")
    text = (tmp_path / "f.xyz").read_text() + "\n \t\n" + (tmp_path / "g.xyz").read_text() + "\n\n"
    (tmp_path / "h.xyz").write_text(text)
    scan = scan_input(tmp_path / "h.xyz")
    assert scan["n_frames"] == 3 == len(list(ase.io.iread(tmp_path / "f.xyz"))) + 1
    assert {"E", "label", "M", "positions", "symbols"} <= set(scan["keys"])
    assert scan["columns"]["M"] == {"4": 2, "9": 1} and scan["first_frames"]["M"] == {"4": 0, "9": 1}
    # another format (an ASE trajectory, which keeps info and the standard arrays): the frames are read
    for a, q in zip(frames, ([0.1, -0.1], [0.0, 0.0], [0.2, -0.2])):
        a.set_initial_charges(q)
    ase.io.write(tmp_path / "f.traj", frames)
    other = scan_input(tmp_path / "f.traj")
    assert other["n_frames"] == 3 and {"E", "label", "initial_charges", "positions"} <= set(other["keys"])
    assert other["columns"]["positions"] == {"3": 3} and other["first_frames"]["initial_charges"] == {"1": 0}
