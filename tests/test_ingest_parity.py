"""The C parser path (``--parser auto``, libextxyz) and the ASE path (``--parser ase``) store the same thing.

For every input: the same exit code and error line, and, when it is written, the same HDF5 file — every
dataset byte for byte (dtype and shape too), the rejects with their reasons, the provenance (coverage, keys
seen, notes). Inputs: every fixture in tests/data, the bundled examples, an ASE-written file with calculator
results and odd columns, CRLF endings, blank lines, very long comment lines, values the C parser reads
differently from ASE (9-number stress/virial/Lattice, nested arrays, integers beyond 32 bits, `Z` columns,
config_type spellings) and the seeded malformed files of the hostile-input fuzz test. The index is the same
under both parsers as well.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import ase.io
import h5py
import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from test_ingest_hostile import KEYS as HOSTILE_KEYS
from test_ingest_hostile import _base_text, _mutate, _run

from scfdata.h5io import ScfdataFile

REPO = Path(__file__).resolve().parent.parent

AIMS = {"info_keys": {"energy": "AIMS_energy", "dipole": "AIMS_dipole", "total_charge": "total_charge",
                      "fermi_level": "the_fermi_level", "external_field": "the_external_field"},
        "arrays_keys": {"forces": "AIMS_forces", "atomic_multipoles": "AIMS_atom_multipoles"}}
MACE_SCF = {"info_keys": {"total_charge": "total_charge", "fermi_level": "the_VBM"},
            "arrays_keys": {"atomic_multipoles": "some_multipoles"}}
EXAMPLES = {"info_keys": {"total_charge": "total_charge"}, "arrays_keys": {"charges": "REF_charges"}}
FILES = [
    ("tests/data/mace_scf_water_clusters_40.xyz", AIMS),
    ("tests/data/mace_scf_bulk_test_configs.xyz", MACE_SCF),
    ("tests/data/mace_scf_mixed_test_configs.xyz", MACE_SCF),
    ("tests/data/mace_scf_slab_test_configs.xyz", MACE_SCF),
    ("tests/data/mace_scf_test_configs.xyz",
     {"info_keys": {"energy": "AIMS_energy", "dipole": "AIMS_dipole"},
      "arrays_keys": {"forces": "AIMS_forces", "atomic_multipoles": "DMA_coeficients"}}),
    ("examples/data/water_clusters.extxyz",
     {"info_keys": {"energy": "energy", "dipole": "REF_dipole", "total_charge": "total_charge"},
      "arrays_keys": {"forces": "forces", "charges": "REF_charges"}}),
    ("examples/data/nacl_crystal.extxyz", EXAMPLES),
    ("examples/data/water_slab.extxyz", EXAMPLES),
]


def _datasets(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as h:
        h.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        prov = json.loads(h.attrs["provenance"])
    prov.pop("versions")
    return {"datasets": out, "provenance": prov}


def _same_files(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert da["provenance"] == db["provenance"]
    assert da["datasets"].keys() == db["datasets"].keys()
    for name, x in da["datasets"].items():
        y = db["datasets"][name]
        assert (x.dtype, x.shape) == (y.dtype, y.shape), name
        assert x.tobytes() == y.tobytes(), name


def _both(capsys, tmp_path: Path, src: Path, keys: dict | Path, *extra: str) -> tuple[int, str]:
    """Ingest ``src`` with both parsers; assert the same outcome; return (exit code, stderr)."""
    if isinstance(keys, dict):
        path = tmp_path / f"{src.name}.keys.yaml"
        path.write_text(yaml.safe_dump(keys))
        keys = path
    got = []
    for parser in ("auto", "ase"):
        out = tmp_path / f"{src.name}.{parser}.h5"
        rc, err = _run(capsys, "ingest", str(src), "--keys", str(keys), "-o", str(out), "--parser", parser, *extra)
        got.append((rc, err.replace(str(out), "OUT"), out))
    (rc_c, err_c, out_c), (rc_a, err_a, out_a) = got
    assert (rc_c, err_c) == (rc_a, err_a)
    if rc_c == 0:
        _same_files(out_c, out_a)
    return rc_c, err_c


def _index_same(capsys, tmp_path: Path, src: Path) -> dict:
    got = []
    for parser in ("auto", "ase"):
        out = tmp_path / f"{src.name}.{parser}.json"
        rc, err = _run(capsys, "index", str(src), "--shards", "3", "-o", str(out), "--parser", parser)
        got.append((rc, err.replace(str(out), "OUT"), json.loads(out.read_text()) if rc == 0 else None))
    assert got[0] == got[1]
    return got[0][2]


@pytest.mark.parametrize("name,keys", FILES, ids=[Path(f).name for f, _ in FILES])
def test_fixtures_and_examples(tmp_path, capsys, name, keys):
    src = REPO / name
    rc, err = _both(capsys, tmp_path, src, keys, "--on-error", "reject")
    assert rc == 0, err
    index = _index_same(capsys, tmp_path, src)
    assert index["inputs"][0]["checkpoints"][0] == [0, 0, 1]


def test_renormalised_charges_and_dipoles_to_multipoles(tmp_path, capsys):
    src = REPO / "examples/data/water_clusters.extxyz"
    keys = {"info_keys": {"total_charge": "total_charge"},
            "arrays_keys": {"charges": "REF_charges", "atomic_dipoles": "forces"}}
    settings = json.dumps({"validation": {"renormalise_charges": True, "charge_tolerance": 1e-12}})
    assert _both(capsys, tmp_path, src, keys, "--settings", settings, "--on-error", "reject")[0] == 0


def _ase_written(path: Path) -> None:
    """Frames written by ase.io.write: calculator results, S/I/L columns, _JSON and boolean info values."""
    rng = np.random.default_rng(1)
    frames = []
    for k in range(12):
        a = Atoms("H3OCl" if k % 3 else "NaCl", positions=rng.uniform(0, 6, (5 if k % 3 else 2, 3)),
                  cell=np.diag([9.0, 9.5, 10.0]) + 0.1 * (k % 2), pbc=[k % 2 == 0, k % 2 == 0, k % 4 == 0])
        n = len(a)
        a.arrays["tag_s"] = np.array(["a"] * n)
        a.arrays["flag_l"] = np.arange(n) % 2 == 0
        a.arrays["count_i"] = np.arange(n)
        a.arrays["q_ref"] = rng.normal(size=n)
        a.info.update(config_type=f"ase_{k % 3}", meta={"k": k, "what": ["x", "y"]}, is_ok=bool(k % 2),
                      config_weight=1.0 + k, pol=rng.normal(size=9))
        a.calc = SinglePointCalculator(a, energy=float(rng.normal()), forces=rng.normal(size=(n, 3)),
                                       stress=rng.normal(size=6))
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")


def test_ase_written_file_with_calculator_results(tmp_path, capsys):
    src = tmp_path / "ase.extxyz"
    _ase_written(src)
    keys = {"info_keys": {"energy": "energy", "stress": "stress", "polarizability": "pol"},
            "arrays_keys": {"forces": "forces", "charges": "q_ref"}}
    assert _both(capsys, tmp_path, src, keys, "--on-error", "reject")[0] == 0
    crlf = tmp_path / "crlf.extxyz"
    crlf.write_bytes(src.read_bytes().replace(b"\n", b"\r\n"))
    assert _both(capsys, tmp_path, crlf, keys, "--on-error", "reject")[0] == 0
    _index_same(capsys, tmp_path, crlf)


FRAME = ("3\n{comment}\nO 0.0 0.0 0.0 0.1 0.2 0.3\nH 0.96 0.0 0.0 0.0 0.1 0.0\nH -0.24 0.93 0.0 0.0 0.0 0.1\n")
PROPS = "Properties=species:S:1:pos:R:3:F:R:3"
ODD_COMMENTS = [
    f'{PROPS} E=-1.5 Q=0 pbc="F F F"',
    f'{PROPS} E=-1.5 S="1 2 3 4 5 6 7 8 9" V="9 8 7 6 5 4 3 2 1" pbc="F F F"',
    f'{PROPS} E=-1.5 stress="1 2 3 4 5 6 7 8 9" virial="9 8 7 6 5 4 3 2 1" pbc="F F F"',
    f'{PROPS} E=-1.5 stress="1 2 3 4 5 6" pbc="F F F"',
    f'{PROPS} E=-1.5 Lattice=[[8,0,0],[0,8,0],[0,0,8]] pbc="T T T"',
    f'{PROPS} E=3000000000 Q=0',
    f'{PROPS} E=-1.5 Q=4294967296', f'{PROPS} E=-1.5 config_weight=4294967297',
    f'{PROPS} E=-1.5 S="1 2 3 4 5 6 7 8 4294967296"', f'{PROPS} E=-1.5 Lattice="4294967304 0 0 0 8 0 0 0 8"',
    f'{PROPS} E=-1.5 S="1 2 3 4 5 6 7 8 -0"', f'{PROPS} E=-0 S="1.0 2 3 4 5 6 7 8 9"',
    f'{PROPS} E=-1.5 config_type=1_0', f'{PROPS} E=-1.5 config_type=nan', f'{PROPS} E=-1.5 config_type=T',
    f'{PROPS} E=-1.5 config_type=5', f'{PROPS} E=-1.5 config_type="two words"', f'{PROPS} E=-1.5 config_type=Inf',
    f'{PROPS} E=-1.5 config_type=carved_H11O5+', f'{PROPS} E=-1.5 config_type=carved_H15O8-',
    f'{PROPS} E=-1.5 config_type=e+5', f'{PROPS} E=-1.5 config_type=inf+', f'{PROPS} E=-1.5 config_type=a+-b.c',
    f'{PROPS} E=-1.5 config_type=Infinity-', f'{PROPS} E=-1.5 config_type=E-3',
    f'{PROPS} E=2.5d3', f'{PROPS} E=1.0D0', f'{PROPS} E=0x1p-3', f'{PROPS} E=-1.5 S="1 2 3 4 5 6 7 8 9d0"',
    f'{PROPS} E=1_5', f'{PROPS} E=nan', f'{PROPS} E=T', f'{PROPS} E="1 2"', f'{PROPS} E=abc',
    f'{PROPS} E=-1.5 config_weight=0', f'{PROPS} E=-1.5 config_E_weight=2 config_energy_weight=0.5',
    f'{PROPS} E=-1.5 pbc=T Lattice="8 0 0 0 8 0 0 0 8"', f'{PROPS} E=-1.5 pbc="1 1 1" Lattice="8 0 0 0 8 0 0 0 8"',
    f'{PROPS} E=-1.5 long="{"x" * 200_000}"',
    f'{PROPS} E=-1.5 F=2', '', 'just a free comment: 5', f'{PROPS} E=-1.5 E=-2.5',
    f'{PROPS} E=_JSON 1.5', f'{PROPS} E="_JSON [1.5]"',
]


@pytest.mark.parametrize("comment", ODD_COMMENTS, ids=range(len(ODD_COMMENTS)))
def test_values_the_c_parser_reads_differently(tmp_path, capsys, comment):
    src = tmp_path / "odd.extxyz"
    src.write_text(FRAME.format(comment=comment) + "\n\n" + FRAME.format(comment=f'{PROPS} E=-2.0 pbc="F F F"'))
    keys = {"info_keys": {"energy": "E", "stress": "S", "virials": "V"}, "arrays_keys": {"forces": "F"}}
    _both(capsys, tmp_path, src, keys, "--on-error", "reject")


@pytest.mark.parametrize("text", [
    FRAME.replace("O 0.0", "Xx 0.0"), FRAME.replace("O 0.0 0.0 0.0", "o 0.0 0.0 0.0"),
    FRAME.replace("F:R:3", "F:R:3:Z:I:1").replace(" 0.3\n", " 0.3 8\n").replace("0.1 0.0\n", "0.1 0.0 1\n", 1)
    .replace(" 0.1\n", " 0.1 1\n"),
    FRAME.replace("H 0.96", "\nH 0.96"), FRAME[:-20], FRAME.replace("3\n", "0\n", 1) + FRAME,
    FRAME.replace("3\n", "3 junk\n", 1), FRAME.replace("0.1 0.2 0.3", "0.1 0.2 0.3 9"),
    FRAME.replace("0.1 0.2 0.3", "0.1 nan 0.3"), FRAME.replace("0.96 0.0 0.0", "0.0 0.0 0.0"),
    FRAME.replace("0.1 0.2 0.3", "1.0d-1 0.2 0.3"), FRAME.replace("0.1 0.2 0.3", "0x1p-3 0.2 0.3"),
    "\n\n" + FRAME + "  \n\t\n" + FRAME + "\n",
], ids=range(13))
def test_malformed_frames(tmp_path, capsys, text):
    src = tmp_path / "bad.extxyz"
    src.write_text(text.format(comment=f'{PROPS} E=-1.5 pbc="F F F"'))
    keys = {"info_keys": {"energy": "E"}, "arrays_keys": {"forces": "F"}}
    for on_error in ("reject", "raise"):
        _both(capsys, tmp_path, src, keys, "--on-error", on_error)


def test_gzip_reads_through_ase_either_way(tmp_path, capsys):
    import gzip

    src = tmp_path / "w.xyz.gz"
    src.write_bytes(gzip.compress((REPO / "examples/data/water_slab.extxyz").read_bytes()))
    assert _both(capsys, tmp_path, src, EXAMPLES)[0] == 0  # .gz: ase.io.iread decompresses (as today)


def test_hostile_fuzz_cases_match(tmp_path, capsys):
    """The hostile test's seeded malformed files: both parsers give the same outcome, file and rejects."""
    rng = np.random.default_rng(20261204)
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump(HOSTILE_KEYS))
    outcomes = set()
    for case in range(120):
        text, kind = _mutate(_base_text(rng), rng)
        src = tmp_path / f"c{case}.xyz"
        src.write_bytes(text.encode("latin-1", errors="replace"))
        rc, _ = _both(capsys, tmp_path, src, keys, "--on-error", "reject")
        outcomes.add(rc)
    assert outcomes == {0, 1}


def test_frames_the_c_parser_refuses_still_ingest(tmp_path, capsys):
    """A frame libextxyz refuses (an atom line with an extra column, which ASE reads) goes through ASE."""
    buf = io.StringIO()
    frames = [Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]]) for _ in range(3)]
    for a in frames:
        a.info["E"] = -1.0
    ase.io.write(buf, frames, format="extxyz")
    lines = buf.getvalue().splitlines(keepends=True)
    lines[2] = lines[2].rstrip("\n") + " 7\n"  # one more column than Properties says
    src = tmp_path / "extra.extxyz"
    src.write_text("".join(lines))
    rc, err = _both(capsys, tmp_path, src, {"info_keys": {"energy": "E"}}, "--on-error", "reject")
    assert rc == 0, err


def test_block_checks_name_the_right_frame(tmp_path, capsys):
    """Bad values in a few frames of a block of clusters of many sizes: the same frames rejected, for the
    same reasons, as frame by frame (block-wise checks must not blame a neighbour)."""
    lines = (REPO / "examples/data/water_clusters.extxyz").read_text().splitlines(keepends=True)
    heads = [k for k, ln in enumerate(lines) if ln.strip().isdigit()]
    lines[heads[3] + 1] = lines[heads[3] + 1].replace('REF_dipole="', 'REF_dipole="nan ', 1).replace(
        'REF_dipole="nan -', 'REF_dipole="nan -', 1)
    lines[heads[5] + 1] = lines[heads[5] + 1].replace("total_charge=0.0", "total_charge=0.5")
    lines[heads[7] + 3] = " ".join(lines[heads[7] + 3].split()[:-1] + ["inf"]) + "\n"
    lines[heads[9] + 1] = lines[heads[9] + 1].replace("energy=", "energy=T old=")
    src = tmp_path / "bad_values.extxyz"
    src.write_text("".join(lines))
    keys = {"info_keys": {"energy": "energy", "dipole": "REF_dipole", "total_charge": "total_charge"},
            "arrays_keys": {"forces": "forces", "charges": "REF_charges"}}
    assert _both(capsys, tmp_path, src, keys, "--on-error", "reject")[0] == 0
    with ScfdataFile(tmp_path / "bad_values.extxyz.auto.h5") as h:
        rejects = {frame: reason for _, frame, reason in h.rejects()}
    assert {3, 5, 7, 9} <= set(rejects), rejects
    assert "REF_dipole" in rejects[3] and "total_charge" in rejects[5] and "forces" in rejects[7]
    assert "booleans" in rejects[9]
