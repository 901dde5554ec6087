import pytest

from scfdata.ingest import IngestError
from scfdata.shards import count_frames, plan_shards


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
