import json
import subprocess
import sys

import numpy as np
import pytest

from scfdata.cli import main
from scfdata.h5io import ScfdataFile


@pytest.fixture
def ingested(tmp_path, water_fixture, mace_scf_keys):
    keys = tmp_path / "keys.yaml"
    keys.write_text(json.dumps(mace_scf_keys))  # JSON is YAML
    out = tmp_path / "w.h5"
    assert main(["ingest", str(water_fixture), "--keys", str(keys), "-o", str(out)]) == 0
    return out


def test_inspect_json_contract(ingested, capsys):
    assert main(["inspect", str(ingested), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n_configs"] == 40
    with ScfdataFile(ingested) as f:
        assert s["n_atoms"] == f.n_atoms
        forces = np.asarray(f.read("forces"))
    assert s["elements"].keys() == {"H", "O"}
    assert s["boundary_classes"] == {"FFF": 40}
    e = s["fields"]["forces"]
    assert e["level"] == "atom" and e["unit"] == "eV/Å" and e["coverage"] == 40
    assert e["max"] == pytest.approx(forces.max()) and e["mean"] == pytest.approx(forces.mean())
    assert s["provenance"]["inputs"][0]["sha256"]
    assert isinstance(s["losses"], dict)


def test_inspect_text_is_aligned_table(ingested, capsys):
    assert main(["inspect", str(ingested)]) == 0
    out = capsys.readouterr().out
    assert "configs 40" in out and "atomic_multipoles" in out and "40/40" in out


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5 at all")
    r = subprocess.run([sys.executable, "-m", "scfdata.cli", "inspect", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not a readable HDF5 file" in r.stderr
    r = subprocess.run([sys.executable, "-m", "scfdata.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "inspect" in r.stdout


def test_stats_apply_the_dipole_component_mask(tmp_path):
    """TTF slabs: dipole x, y masked (stored as 0 or junk), z present; masked components stay out."""
    from scfdata.columns import Columns
    from scfdata.h5io import write_columns
    from scfdata.inspect import summarize

    rng = np.random.default_rng(0)
    n = 6
    n_at = np.full(n, 2)
    dipole = rng.normal(size=(n, 3))
    dipole[3:, :2] = 1000.0  # masked components with values that would dominate max and mean
    dmask = np.ones((n, 3), bool)
    dmask[3:, :2] = False
    dmask[5] = False  # a config with no dipole at all
    forces = rng.normal(size=(2 * n, 3))
    fmask = np.array([True, False, True, True, True, True])
    forces[2:4] = 500.0  # config 1: forces absent
    write_columns(tmp_path / "d.h5", Columns(
        n_atoms=n_at, configs={"dipole": dipole}, atoms={"numbers": np.ones(2 * n, int), "forces": forces},
        masks={"dipole": dmask, "forces": fmask}))
    s = summarize(tmp_path / "d.h5")["fields"]
    d = s["dipole"]
    assert d["max"] == pytest.approx(dipole[dmask].max()) and d["min"] == pytest.approx(dipole[dmask].min())
    assert d["mean"] == pytest.approx(dipole[dmask].mean()) and d["coverage"] == 5
    f = s["forces"]
    present = forces[np.repeat(fmask, 2)]
    assert f["max"] == pytest.approx(present.max()) and f["mean"] == pytest.approx(present.mean())


def test_inspect_directory_or_missing_path_says_so(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "scfdata.cli", "inspect", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is a directory" in r.stderr and "truncated" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "scfdata.cli", "inspect", str(tmp_path / "nope.h5")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no such file" in r.stderr and "truncated" not in r.stderr


def test_provenance_lines_are_readable_text(tmp_path, capsys):
    """No JSON dumps and no \\u escapes: nested settings as `key = value` lines, units as written."""
    from scfdata.columns import Columns
    from scfdata.h5io import write_columns

    prov = {"dataset": "w", "derive": {"dipoles": {"notes": {"max |mu_DFT - mu| (e·Å)": 2.5e-08}, "settings": {
        "origin": "zero"}}}, "split": {"seed": 3, "by": "random"}, "empty": {}, "flag": None}
    write_columns(tmp_path / "p.h5", Columns(n_atoms=[1], atoms={"numbers": np.array([1]),
                                                               "positions": np.zeros((1, 3))}), provenance=prov)
    assert main(["inspect", str(tmp_path / "p.h5")]) == 0
    out = capsys.readouterr().out
    text = out[out.index("provenance:"):]
    assert "\\u" not in text and "{" not in text and '"' not in text
    assert "    dipoles:\n      notes: max |mu_DFT - mu| (e·Å) = 2.5e-08\n      settings: origin = zero" in text
    assert "  split: by = random, seed = 3" in text and "  flag: none" in text and "empty" not in text


def test_inspect_warns_on_what_verify_finds(ingested, capsys):
    import h5py

    with h5py.File(ingested, "r+") as h5:
        h5["atoms/forces"][0, 0] = np.nan  # a present target made non-finite after writing
    assert main(["inspect", str(ingested)]) == 0
    out = capsys.readouterr().out
    assert "warnings (2 problem(s) found by `scfdata verify`):" in out
    assert "/atoms/forces: value nan at config 0 (atom 0): where its mask is True" in out
    assert "/atoms/forces: checksum crc32:" in out
    assert main(["inspect", str(ingested), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["problems"]) == 2


def _flagged_file(path, quality):
    from scfdata.columns import Columns
    from scfdata.h5io import write_columns

    prov = {"dataset": "w"} if quality is None else {"dataset": "w", "quality": quality}
    write_columns(path, Columns(n_atoms=[1, 1, 1], atoms={"numbers": np.array([1, 1, 8]),
                                                         "positions": np.zeros((3, 3))}), provenance=prov)
    return path


def test_inspect_shows_the_quality_flags_of_the_file(tmp_path, capsys):
    """Contract D: the file's provenance `quality` -> `flags` in --json, a flags line in the text view."""
    quality = {"settings": {"outlier_sigma": 8.0, "drop": ["duplicate"]},
               "flags": {"near_duplicate": 2, "energy_outlier": 1, "force_outlier": 0},
               "flagged": 3, "dropped": {"duplicate": 4}}
    path = _flagged_file(tmp_path / "q.h5", quality)
    assert main(["inspect", str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["flags"] == {"near_duplicate": 2, "energy_outlier": 1, "force_outlier": 0}
    assert s["quality"]["flagged"] == 3 and s["quality"]["dropped"] == {"duplicate": 4}
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "quality flags: energy_outlier 1, near_duplicate 2   (3 config(s) flagged)" in out
    assert "dropped by quality.drop (rejects of the dataset): duplicate 4" in out
    assert "quality settings: drop = duplicate, outlier_sigma = 8" in out
    assert out.count("near_duplicate") == 1  # not repeated in the provenance lines


def test_inspect_without_quality_shows_no_flags(tmp_path, capsys):
    """A file written before quality flags existed (no provenance `quality`): flags {} and no flags line."""
    path = _flagged_file(tmp_path / "old.h5", None)
    assert main(["inspect", str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["flags"] == {} and s["quality"] is None
    assert main(["inspect", str(path)]) == 0
    assert "quality flags" not in capsys.readouterr().out
