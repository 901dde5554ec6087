"""report.md: the E0 diagnostics and the split report (per element and config_type, elements train lacks)."""

import json
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


def _flags_tsv(path, rows):
    path.write_text("file\tframe\tflag\tdetail\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


QUALITY = {"flags": {"duplicate": 0, "near_duplicate": 1, "energy_outlier": 7}, "flagged": 8,
           "dropped": {"duplicate": 2}, "by_split": {"train": {"near_duplicate": 1, "energy_outlier": 5},
                                                     "valid": {"energy_outlier": 2}}}


def test_report_quality_section_counts_drops_and_examples(tmp_path):
    """Contract B + D: counts per flag from the manifest (written, per split, dropped), the first 5 rows
    of each flag from flags.tsv; a flag's count in flags.tsv = written + dropped configs carrying it."""
    rows = [("a.extxyz", 12, "duplicate", "duplicate of a.extxyz:3"),
            ("b.extxyz", 0, "duplicate", "duplicate of a.extxyz:4"),
            ("a.extxyz", 5, "near_duplicate", "near duplicate of a.extxyz:1 (max 0.004 Å)")]
    rows += [("b.extxyz", 10 + i, "energy_outlier", f"|E - median| = {9 + i} robust sigmas") for i in range(7)]
    flags = _flags_tsv(tmp_path / "flags.tsv", rows)
    text = build_report({**MANIFEST, "quality": QUALITY}, None, tmp_path / "report.md", flags_tsv=flags).read_text()
    sec = text[text.index("## Quality flags"):text.index("## Rejects")]
    assert "| flag | written | train | valid | dropped | in flags.tsv |" in sec
    assert "| `duplicate` | 0 | 0 | 0 | 2 | 2 |" in sec
    assert "| `near_duplicate` | 1 | 1 | 0 | 0 | 1 |" in sec
    assert "| `energy_outlier` | 7 | 5 | 2 | 0 | 7 |" in sec
    assert "8 written configs carry a flag" in sec and "(all in `flags.tsv`)" in sec
    assert "| `duplicate` | `b.extxyz` | 0 | duplicate of a.extxyz:4 |" in sec
    examples = [ln for ln in sec.splitlines() if ln.startswith("| `energy_outlier` | `b.extxyz`")]
    assert [ln.split(" | ")[2] for ln in examples] == ["10", "11", "12", "13", "14"]  # the first five
    assert examples[0].endswith("| 10 | \\|E - median\\| = 9 robust sigmas |")  # a | in a cell is escaped


def test_report_without_flags_says_quality_flags_were_not_computed(tmp_path):
    text = build_report(MANIFEST, None, tmp_path / "report.md").read_text()
    assert "## Quality flags\n\nQuality flags were not computed for this dataset" in text
    clean = _flags_tsv(tmp_path / "flags.tsv", [])  # quality on, nothing flagged (or enabled: false)
    text = build_report({**MANIFEST, "quality": {"flags": {"duplicate": 0}, "flagged": 0, "dropped": {}}}, None,
                        tmp_path / "report.md", flags_tsv=clean).read_text()
    assert "## Quality flags\n\nNo config was flagged." in text


@pytest.mark.parametrize("content, message", [
    ("file\tframe\tflag\n", "line 1: expected the header 'file<TAB>frame<TAB>flag<TAB>detail'"),
    ("file\tframe\tflag\tdetail\na.xyz\t1\tduplicate\tof a.xyz:0\na.xyz\t2\tduplicate\n",
     "line 3: expected 4 tab-separated columns (file, frame, flag, detail), found 3"),
    ("file\tframe\tflag\tdetail\na.xyz\tx1\tduplicate\t\n", "line 2: frame must be a non-negative integer, found 'x1'"),
    ("file\tframe\tflag\tdetail\na.xyz\t1\t\tsomething\n", "line 2: the flag name is empty"),
])
def test_malformed_flags_tsv_is_a_one_line_error_naming_the_line(tmp_path, content, message):
    import subprocess
    import sys

    flags = tmp_path / "flags.tsv"
    flags.write_text(content)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    r = subprocess.run([sys.executable, "-m", "scfdata.cli", "report", "--manifest", str(manifest), "--flags",
                        str(flags), "-o", str(tmp_path / "report.md")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"{flags}: {message}" in r.stderr
    assert not (tmp_path / "report.md").exists()


def test_report_refuses_a_file_that_is_not_a_manifest(tmp_path):
    import subprocess
    import sys

    (tmp_path / "m.json").write_text(json.dumps({"dataset": "w", "written": 3}))
    r = subprocess.run([sys.executable, "-m", "scfdata.cli", "report", "--manifest", str(tmp_path / "m.json"),
                        "-o", str(tmp_path / "report.md")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{tmp_path / 'm.json'}: no 'configs_in', 'rejected': not a manifest.json" in r.stderr
