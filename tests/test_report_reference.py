"""report.md byte for byte, and its PNGs as pyplot draws them.

A synthetic three-split set that fills every section of the report (coverage with a field the later splits
lack, reference targets, supported losses, E0 and scales, splits, quality flags with examples, rejects)
and every kind of plot (histograms, ESP per element, dipole parity), with masked entries and strided
plot points. ``tests/data/report_reference.md`` is what the report wrote for it before it was made fast
(pyplot, a verification pass and a full summary per split, the loss table through torch): the speed-ups
change no byte. After an intended change of the report, regenerate the reference with
``python tests/test_report_reference.py`` and review its diff.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from scfdata.columns import Columns
from scfdata.h5io import write_columns
from scfdata.report import build_report

REFERENCE = Path(__file__).parent / "data" / "report_reference.md"
SIZES = {"train": 30, "valid": 7, "test": 5}
MAX_POINTS = 40  # fewer than the entries of most fields: the plots stride


def _split(rng, n: int, with_stress: bool) -> Columns:
    n_mol = rng.integers(1, 4, n)
    n_at = 3 * n_mol
    n_atoms, n_molecules = int(n_at.sum()), int(n_mol.sum())
    molecule = np.concatenate([np.repeat(np.arange(k), 3) for k in n_mol])
    dipole_mask = np.ones((n, 3), bool)
    dipole_mask[: n // 4, :2] = False  # slab-like configs: only z
    dipole_mask[-1] = False
    configs = {
        "energy": -14.2 * n_mol + rng.normal(0, 0.05, n),
        "total_charge": np.zeros(n),
        "dipole": rng.normal(0, 0.5, (n, 3)),
        "dipole_from_multipoles": rng.normal(0, 0.5, (n, 3)),
        "cluster_virial": rng.normal(0, 3.0, n),
        "pbc": np.zeros((n, 3), bool),
        "config_type": np.array([f"water_{k}" for k in n_mol]),
    }
    masks = {
        "energy": rng.random(n) > 0.1,
        "total_charge": np.ones(n, bool),
        "dipole": dipole_mask,
        "dipole_from_multipoles": np.ones((n, 3), bool),
        "cluster_virial": n_mol >= 2,
        "forces": np.ones(n, bool),
        "charges": np.ones(n, bool),
        "esps": np.ones(n, bool),
        "molecule": np.ones(n, bool),
        "molecular_forces": n_mol >= 2,
        "molecule_centre": np.ones(n, bool),
    }
    if with_stress:  # train only: a row of the coverage table the other splits lack
        configs["stress"] = rng.normal(0, 0.01, (n, 3, 3))
        masks["stress"] = rng.random(n) > 0.5
    atoms = {
        "numbers": np.tile([8, 1, 1], n_atoms // 3),
        "positions": rng.normal(0, 3.0, (n_atoms, 3)),
        "forces": rng.normal(0, 0.5, (n_atoms, 3)),
        "charges": np.tile([-0.834, 0.417, 0.417], n_atoms // 3),
        "esps": rng.normal(0, 8.0, n_atoms) + np.tile([-5.0, 2.5, 2.5], n_atoms // 3),
        "molecule": molecule,
    }
    molecules = {
        "molecular_forces": rng.normal(0, 0.8, (n_molecules, 3)),
        "molecule_centre": rng.normal(3.0, 1.0, (n_molecules, 3)),
        "molecule_formula": np.array(["H2O"] * n_molecules),
    }
    return Columns(n_atoms=n_at, n_molecules=n_mol, configs=configs, atoms=atoms, molecules=molecules, masks=masks)


def write_set(d: Path) -> tuple[dict, dict, Path]:
    """The split files, rejects.tsv and flags.tsv in ``d``: (manifest, statistics, flags.tsv path)."""
    rng = np.random.default_rng(11)
    provenance = {
        "dataset": "synthetic",
        "reference": {"esps": {"enabled": True, "derived": True}, "fields": {"enabled": True, "derived": False,
                                                                            "skipped": "no multipoles"},
                      "dipoles": {"enabled": True, "derived": True}},
        "quality": {"settings": {"dipole_tolerance": 0.3, "drop": [], "enabled": True, "outlier_sigma": 8}},
    }
    splits = {}
    for name, n in SIZES.items():
        path = d / f"{name}.h5"
        rejects = [(0, 3, "too close: 0.05 Å"), (1, 8, "bad charge: |Σq - Q| = 0.2")] if name == "train" else []
        write_columns(path, _split(rng, n, with_stress=name == "train"),
                      provenance={**provenance, "split_name": name}, rejects=rejects)
        splits[name] = {"path": str(path), "n_configs": n}
    (d / "rejects.tsv").write_text("file\tframe\treason\na.extxyz\t3\ttoo close: 0.05 Å\n"
                                   "b.extxyz\t8\tbad charge: |Σq - Q| = 0.2\n")
    flags = d / "flags.tsv"
    flags.write_text("file\tframe\tflag\tdetail\n"
                     "a.extxyz\t12\tnear_duplicate\tnear duplicate of a.extxyz:4 (max 0.004 Å)\n"
                     "b.extxyz\t2\tenergy_outlier\t|E - median| = 9.1 robust sigmas\n")
    manifest = {"dataset": "synthetic", "configs_in": 44, "written": 42, "rejected": 2,
                "reject_reasons": {"too close": 1, "bad charge": 1}, "rejects": str(d / "rejects.tsv"),
                "splits": splits, "quality": {"flags": {"near_duplicate": 1, "energy_outlier": 1}, "flagged": 2,
                                              "dropped": {}, "by_split": {"train": {"near_duplicate": 1},
                                                                          "valid": {"energy_outlier": 1}}}}
    statistics = {
        "computed_on": "train", "n_configs": 30,
        "atomic_energies": {"H": -4.733, "O": -4.733},
        "e0": {"n_configs": 27, "rank": 1, "n_elements": 2, "underdetermined": True, "condition_number": None,
               "residual_rms": 0.0501, "residual_rms_per_atom": 0.0093,
               "per_element": {"H": {"n_configs": 27, "n_atoms": 112}, "O": {"n_configs": 27, "n_atoms": 56}},
               "source": {"H": "undetermined", "O": "undetermined"}},
        "scales": {"energy_per_atom_std": 0.0093, "forces_rms": 0.4987, "esps_rms": 8.61},
        "warnings": ["E0 of H, O is not determined by the data"],
        "split_report": {"configs": {"train": 30, "valid": 7, "test": 5},
                         "per_element": {"O": {"train": 30, "valid": 7, "test": 5},
                                         "H": {"train": 30, "valid": 7, "test": 5}},
                         "per_config_type": {"water_1": {"train": 9, "valid": 2, "test": 2},
                                             "water_2": {"train": 11, "valid": 3, "test": 1}}},
    }
    return manifest, statistics, flags


def _report(d: Path) -> Path:
    manifest, statistics, flags = write_set(d)
    return build_report(manifest, statistics, d / "report.md", rejects_tsv=manifest["rejects"],
                        max_points=MAX_POINTS, flags_tsv=flags)


def test_report_md_is_byte_identical_to_the_reference(tmp_path):
    out = _report(tmp_path)
    got = out.read_text(encoding="utf-8")
    assert got == REFERENCE.read_text(encoding="utf-8"), (
        "report.md differs from tests/data/report_reference.md; if the change is intended, regenerate it "
        "with `python tests/test_report_reference.py` and review the diff")
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == sorted(["dipole_parity.png", "esps_per_element.png"] + [
        f"hist_{n}.png" for n in ("energy", "forces", "stress", "total_charge", "charges", "dipole", "esps",
                                  "dipole_from_multipoles", "molecular_forces", "molecule_centre",
                                  "cluster_virial")])
    # key content, said in words: the table of the later splits, the losses, what the report does not claim
    assert "| `stress` | config | eV/Å^3 | 14/30 | – | – |" in got
    assert "| `molecular_forces` | yes |" in got and "| `polarizability` | no | 0 |" in got
    assert "checksum" not in got and "verif" not in got


def _pyplot_png(path: Path, draw) -> None:
    """The old report's way: pyplot on the Agg backend, tight layout, 80 dpi."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@pytest.mark.parametrize("rc", [{}, {"figure.autolayout": True}], ids=["default", "autolayout"])
def test_plots_are_the_pngs_pyplot_draws(tmp_path, rc):
    """The figure on a bare Agg canvas, laid out once, is byte for byte the PNG pyplot writes, also when a
    matplotlibrc asks for automatic layout."""
    import matplotlib

    from scfdata.report import _figure, _save

    rng = np.random.default_rng(3)
    v, z = rng.normal(size=500), rng.choice([1, 8], 500)

    def draw(ax):
        ax.hist(v, bins=60, color="C0")
        for el in (1, 8):
            ax.hist(v[z == el], bins=60, histtype="step", label=str(el))
        ax.set_xlabel("esps (V)")
        ax.set_title("esps: 500 entries")
        ax.legend()

    with matplotlib.rc_context(rc):
        _pyplot_png(tmp_path / "pyplot.png", draw)
        fig, ax = _figure((5, 3.5))
        draw(ax)
        _save(fig, tmp_path / "agg.png")
    assert (tmp_path / "agg.png").read_bytes() == (tmp_path / "pyplot.png").read_bytes()


if __name__ == "__main__":  # regenerate the reference (after an intended change of the report)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = _report(Path(tmp)).read_text(encoding="utf-8")
    REFERENCE.write_text(text, encoding="utf-8")
    print(f"wrote {REFERENCE} ({len(text.splitlines())} lines)", file=sys.stderr)
