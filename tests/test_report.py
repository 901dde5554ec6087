"""report.md: the E0 diagnostics and the split report (per element and config_type, elements train lacks)."""

import warnings

import numpy as np
import pytest

from scfdata.report import build_report
from scfdata.statistics import finalize, merge, shard_sums, split_counts

MANIFEST = {"dataset": "demo", "configs_in": 7, "written": 7, "rejected": 0, "splits": {}}


def _statistics(e0=None):
    """Water clusters and NaCl in train/valid, one CO config in test (carbon only in test)."""
    frames = [(np.tile([8, 1, 1], 1), "water", -14.2), (np.tile([8, 1, 1], 2), "water", -28.4),
              (np.array([11, 17]), "salt", -6.0), (np.tile([8, 1, 1], 3), "water", -42.6),
              (np.array([11, 17]), "salt", -6.0), (np.tile([8, 1, 1], 4), "water", -56.8),
              (np.array([6, 8]), "co", -20.0)]
    labels = np.array([0, 1, 0, 2, 1, 0, 2])
    numbers = np.concatenate([z for z, _, _ in frames])
    ptr = np.concatenate([[0], np.cumsum([len(z) for z, _, _ in frames])])
    energy = np.array([e for _, _, e in frames])
    train = np.flatnonzero(labels == 0)
    t_numbers = np.concatenate([frames[i][0] for i in train])
    t_ptr = np.concatenate([[0], np.cumsum([len(frames[i][0]) for i in train])])
    sums = shard_sums(t_numbers, t_ptr, energy=(energy[train], np.ones(len(train), bool)))
    sums["split_counts"] = split_counts(numbers, ptr, np.array([t for _, t, _ in frames]), labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = finalize(merge([sums]), e0=e0)
    stats["warnings"] = [str(w.message) for w in caught]
    return stats


def test_report_shows_the_e0_diagnostics_and_the_split_report(tmp_path):
    out = build_report(MANIFEST, _statistics(), tmp_path / "report.md")
    text = out.read_text()
    assert "## Splits" in text and "## Statistics" in text and "## Rejects" in text
    assert "> warning: train holds no config with C (in test): a model trained on it never sees this element." in text
    assert "| C | 0 | 0 | 1 |" in text and "| Na | 1 | 1 | 0 |" in text and "| H | 2 | 1 | 1 |" in text
    assert "| `water` | 2 | 1 | 1 |" in text and "| `co` | 0 | 0 | 1 |" in text
    assert "rank 2 of 4 fitted elements, **under-determined**" in text
    assert "condition number infinite (rank-deficient)" in text
    assert "| H |" in text and "undetermined" in text
    assert "> warning: E0 of H, O, Na, Cl is not determined by the data" in text and "--e0" in text
    # sections keep their order
    assert text.index("## Statistics") < text.index("## Splits") < text.index("## Rejects")


def test_report_with_supplied_e0_shows_sources_and_no_e0_warning(tmp_path):
    stats = _statistics(e0={"H": -13.6, "Na": -1.3})
    text = build_report(MANIFEST, stats, tmp_path / "report.md").read_text()
    assert "supplied: H, Na" in text and "E0 of" not in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| O |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "fit" and cells[3] == "2" and cells[4] == "5"  # train: water(1), water(4): 5 O atoms
    assert float(cells[1]) == pytest.approx(-14.2 + 27.2, rel=1e-3)
    # the free elements O, Cl: train compositions (1, 0), (0, 1), (4, 0)
    cond = np.linalg.cond(np.array([[1.0, 0.0], [0.0, 1.0], [4.0, 0.0]]))
    assert f"condition number {cond:.4g};" in text


def test_report_reads_statistics_without_the_new_fields(tmp_path):
    """A statistics.json of an earlier scfdata (no diagnostics, no split report) still renders."""
    stats = {"computed_on": "train", "n_configs": 3, "atomic_energies": {"H": -13.6},
             "e0": {"n_configs": 3, "rank": 1, "n_elements": 1, "underdetermined": False}, "scales": {}}
    text = build_report(MANIFEST, stats, tmp_path / "report.md").read_text()
    assert "| H | -13.6 | – | – | – |" in text and "## Splits" not in text


def test_report_removes_the_temporary_a_killed_writer_left(tmp_path):
    """A report job killed between writing its temporary and the rename leaves `.report.md.<pid>.tmp`;
    the next write removes it (its writer is no longer running)."""
    stale = tmp_path / ".report.md.999999999.tmp"
    stale.write_text("half a report")
    build_report(MANIFEST, _statistics(), tmp_path / "report.md")
    assert not stale.exists()
    assert (tmp_path / "report.md").read_text().startswith("# scfdata report")
