"""Configs whose molecules straddle periodic cell faces, with their centres known independently.

Each molecule is built whole (rigid, from bond lengths), placed so that it crosses one, two or three faces of
a cubic, a triclinic or a slab cell, then wrapped into the cell as DFT codes write it. The expected centres
come from the whole coordinates before wrapping, never from scfdata's unwrapping. Shared by the molecule,
dipole-mask and workflow tests; ``periodic_workflow_run`` (tests/conftest.py) runs snakemake on them once.
"""

from __future__ import annotations

import ase.io
import numpy as np
from ase import Atoms
from ase.data import atomic_masses

# whole molecules about their first atom (Å), and neutral charges (e)
_T = 0.629  # CH4: C-H 1.09 Å along the cube diagonals
MOLECULES = {
    "H2O": ([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], [-0.8, 0.4, 0.4]),
    "CO2": ([[0, 0, 0], [0, 1.16, 0], [0, -1.16, 0]], [0.7, -0.35, -0.35]),
    "NH3": ([[0, 0, 0], [1.01, 0, 0], [-0.34, 0.95, 0], [-0.34, -0.48, 0.83]], [-0.9, 0.3, 0.3, 0.3]),
    "CH4": ([[0, 0, 0], [_T, _T, _T], [-_T, -_T, _T], [-_T, _T, -_T], [_T, -_T, -_T]], [-0.4, 0.1, 0.1, 0.1, 0.1]),
}
SYMBOLS = {"H2O": "OHH", "CO2": "COO", "NH3": "NHHH", "CH4": "CHHHH"}

# (name, cell, pbc, [(molecule, fractional position of its first atom)]): each periodic molecule crosses faces
CONFIGS = [
    ("cubic", np.diag([9.0, 9.0, 9.0]), (True, True, True),
     [("H2O", (0.01, 0.45, 0.5)),     # an H across x = 0
      ("CO2", (0.5, 0.99, 0.5)),      # an O across y = L
      ("NH3", (0.97, 0.99, 0.02)),    # across x = L, y = L and (one H) z = 0
      ("CH4", (0.5, 0.5, 0.02))]),    # across z = 0 (three H)
    ("triclinic", np.array([[9.0, 0, 0], [3.0, 8.5, 0], [1.5, 2.0, 8.0]]), (True, True, True),
     [("NH3", (0.99, 0.5, 0.5)),      # across the slanted a-face
      ("H2O", (0.5, 0.03, 0.98)),     # across the b- and c-faces
      ("CH4", (0.02, 0.98, 0.5))]),
    ("slab", np.array([[9.0, 0, 0], [0, 9.0, 0], [0, 0, 20.0]]), (True, True, False),
     [("H2O", (0.99, 0.3, 0.45)),     # across x = L (wrapped), z free
      ("NH3", (0.4, 0.01, 0.5)),      # across y = 0
      ("CO2", (0.7, 0.7, 0.55))]),    # whole
    ("cluster", np.zeros((3, 3)), (False, False, False),
     [("H2O", (0, 0, 0)), ("CH4", (3.0, 0.5, 0.2))]),  # positions in Å (no cell)
]

# a DFT dipole on every config, to test the default masks by boundary class
DFT_DIPOLE = np.array([0.31, -0.47, 0.59])
KEYS = {"info_keys": {"energy": "E", "dipole": "mu", "total_charge": "Q"},
        "arrays_keys": {"forces": "F", "charges": "q"}}
# the default dipole component mask by boundary class (DESIGN.md): open directions only
DIPOLE_MASK = {(False, False, False): [1, 1, 1], (True, True, False): [0, 0, 1], (True, True, True): [0, 0, 0]}


def build():
    """(frames, expected): frames wrapped into their cells; expected[k] = list of (atom indices, geometric
    centre, mass centre, cell, pbc) per molecule of frame k, centres from the whole coordinates."""
    rng = np.random.default_rng(7)
    frames, expected = [], []
    for _, cell, pbc, mols in CONFIGS:
        pos, sym, q, mol = [], "", [], []
        start = 0
        for name, where in mols:
            xyz, charges = (np.asarray(v, dtype=float) for v in MOLECULES[name])
            origin = np.asarray(where) @ cell if any(pbc) else np.asarray(where, dtype=float)
            whole = xyz + origin
            numbers = Atoms(SYMBOLS[name]).numbers
            m = atomic_masses[numbers]
            idx = np.arange(start, start + len(xyz))
            mol.append((idx, whole.mean(0), (m[:, None] * whole).sum(0) / m.sum(), cell, np.array(pbc)))
            pos.append(whole)
            sym += SYMBOLS[name]
            q.append(charges)
            start += len(xyz)
        a = Atoms(sym, positions=np.concatenate(pos), cell=cell, pbc=pbc)
        a.wrap()  # what a DFT code writes: positions inside the cell (periodic directions only)
        a.arrays["q"] = np.concatenate(q)
        a.arrays["F"] = rng.normal(size=(len(a), 3))
        a.info.update(E=-float(len(a)), mu=DFT_DIPOLE, Q=0.0)
        frames.append(a)
        expected.append(mol)
    return frames, expected


def write(path) -> tuple[list, list]:
    frames, expected = build()
    ase.io.write(path, frames, format="extxyz")
    return frames, expected


def assert_centres(centres, molecule, expected, which="geometric", tol=1e-6):
    """``centres`` (per molecule of one config) and ``molecule`` (its per-atom index) against the expected
    centres, up to a lattice vector of the periodic directions (any image of a whole molecule is right)."""
    col = 1 if which == "geometric" else 2
    assert len(centres) == len(expected)
    for idx, *cen, cell, pbc in expected:
        ids = set(molecule[idx].tolist())
        assert len(ids) == 1, f"atoms {idx.tolist()} split over molecules {ids}"
        d = centres[ids.pop()] - cen[col - 1]
        if pbc.any():
            b = cell[pbc]  # the periodic lattice vectors (rows)
            n = np.linalg.solve(b @ b.T, b @ d)  # lattice coordinates of d (least squares for a slab)
            d = d - np.round(n) @ b
        assert np.abs(d).max() < tol, f"centre of atoms {idx.tolist()} off by {d} Å (beyond a lattice vector)"
