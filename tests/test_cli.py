"""The `scfdata` CLI on bad input: one line naming the file (or option), the position and the fix; exit 1."""

from __future__ import annotations

import json

import pytest

from scfdata.cli import main
from scfdata.keys import KeyMapping

BAD_YAML = "info_keys: [energy, dipole\narrays_keys: {forces: forces}\n"  # unclosed '[' in line 1
FRAME = "1\nProperties=species:S:1:pos:R:3 energy=1.0\nH 0.0 0.0 0.0\n"


def _error(capsys, argv) -> str:
    """Run the CLI, check it failed with exit code 1 and one line on stderr, return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_YAML)
    return path


@pytest.fixture
def frames(tmp_path):
    path = tmp_path / "f.xyz"
    path.write_text(FRAME)
    return path


# -- 1. malformed YAML ------------------------------------------------------------------------------
def test_check_with_malformed_yaml_names_file_line_and_column(capsys, bad_yaml, tmp_path):
    line = _error(capsys, ["check", str(bad_yaml), str(tmp_path / "X.h5")])
    assert line.startswith(f"scfdata check: error: {bad_yaml}: not valid YAML at line 2, column 12")
    assert "started at line 1, column 12" in line and "fix the training config there" in line


def test_ingest_keys_with_malformed_yaml_names_file_line_and_column(capsys, bad_yaml, frames, tmp_path):
    line = _error(capsys, ["ingest", str(frames), "--keys", str(bad_yaml), "-o", str(tmp_path / "o.h5")])
    assert f"{bad_yaml}: not valid YAML at line 2, column 12" in line and "fix the key mapping there" in line
    assert not (tmp_path / "o.h5").exists()


def test_ingest_keys_not_a_mapping(capsys, frames, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text("- energy\n- forces\n")
    line = _error(capsys, ["ingest", str(frames), "--keys", str(keys), "-o", str(tmp_path / "o.h5")])
    assert f"{keys}: expected a mapping with info_keys/arrays_keys" in line and "found a list" in line


def test_keys_from_with_malformed_yaml(bad_yaml, tmp_path):
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML at line 2, column 12: .*MACE_SCF config"):
        KeyMapping.from_mace_scf_config(bad_yaml)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n")
    with pytest.raises(ValueError, match="expected a MACE_SCF training config .* found a list"):
        KeyMapping.from_mace_scf_config(listing)


# -- 2. empty inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_index_refuses_an_input_without_frames(capsys, tmp_path, frames, content):
    empty = tmp_path / "empty.xyz"
    empty.write_text(content)
    line = _error(capsys, ["index", str(frames), str(empty), "-o", str(tmp_path / "index.json")])
    assert f"scfdata index: error: no frames in {empty}: " in line
    assert not (tmp_path / "index.json").exists()


def test_index_of_frames_still_works(capsys, tmp_path, frames):
    assert main(["index", str(frames), "-o", str(tmp_path / "index.json")]) == 0
    assert json.loads((tmp_path / "index.json").read_text())["inputs"][0]["n_frames"] == 1


# -- 3. unknown formats and JSON ----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["ingest", "index"])
def test_unknown_format_suggests_the_format_option(capsys, tmp_path, command):
    notes = tmp_path / "notes.txt"
    notes.write_text("some notes, not frames\n")
    line = _error(capsys, [command, str(notes), "-o", str(tmp_path / "out")])
    assert f"{notes}: ase.io has no reader for 'txt'" in line
    assert "--format NAME" in line and "`format: NAME` in the dataset's block" in line
    assert "truncated or malformed" not in line


def test_format_option_that_is_not_an_ase_format(capsys, tmp_path, frames):
    line = _error(capsys, ["ingest", str(frames), "--format", "bogus", "-o", str(tmp_path / "o.h5")])
    assert f"{frames}: --format 'bogus' is not an ase.io format" in line


def test_statistics_names_the_file_that_is_not_json(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not json\n")
    line = _error(capsys, ["statistics", str(notes), "-o", str(tmp_path / "s.json")])
    assert f"{notes}: not valid JSON (Expecting value at line 1, column 1)" in line
    assert "sums JSON written by `scfdata statistics-shard`" in line


def test_report_names_the_manifest_that_is_not_a_json_object(capsys, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text("[1, 2]")
    line = _error(capsys, ["report", "--manifest", str(manifest), "-o", str(tmp_path / "r.md")])
    assert f"{manifest}: expected the manifest.json written by `scfdata assemble` (a JSON object)" in line


@pytest.mark.parametrize("argv, option", [
    (["derive", "molecules", "--settings", "{bad", "IN.h5", "-o", "OUT.h5"], "--settings"),
    (["split", "S.h5", "--settings", "{'seed': 1}", "-o", "OUT.npz"], "--settings"),
    (["ingest", "F.xyz", "--settings", "{bad", "-o", "OUT.h5"], "--settings"),
    (["assemble", "--dataset", "d", "--split", "S.npz", "--reference", "{bad", "--shard-files", "B.h5",
      "-o", "OUT"], "--reference"),
])
def test_json_options_name_the_option(capsys, argv, option):
    line = _error(capsys, argv)
    assert f"error: {option}: not valid JSON (" in line and "expected a JSON object" in line


def test_json_option_must_be_an_object(capsys):
    line = _error(capsys, ["derive", "molecules", "--settings", "[1]", "IN.h5", "-o", "OUT.h5"])
    assert "--settings: expected a JSON object of the reference.molecules settings, got a JSON list" in line
