"""Ionic crystals with known Madelung constants, in several cell choices of the same lattice.

Shared by the periodic-engine tests (test_ewald, test_ewald_numba, test_pme): the ESP at an ion site of a
point-charge crystal is -q·M·k_e/d for Madelung constant M referred to the nearest-neighbour distance d,
and it must not depend on which cell describes the crystal.
"""

import itertools
import math

import numpy as np

NAMES = ("rocksalt", "cscl", "zincblende")
A = 5.0  # conventional lattice constant (Å); the Madelung constants do not depend on it
FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
FCC_PRIMITIVE = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
UNIMODULAR = np.array([[1, 0, 0], [1, 1, 0], [2, -1, 1]])  # same lattice, skewed (triclinic) cell


def rotation():
    """A fixed proper-or-improper orthogonal matrix (QR of a seeded normal matrix)."""
    return np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]


def crystal(name):
    """(positions, charges, conventional cell, nearest-neighbour distance, Madelung constant) of a crystal."""
    if name == "rocksalt":
        pos = np.concatenate([FCC, FCC + [0.5, 0, 0]]) * A
        return pos, np.repeat([1.0, -1.0], 4), np.eye(3) * A, A / 2, 1.747564594633
    if name == "cscl":
        return np.array([[0, 0, 0], [0.5, 0.5, 0.5]]) * A, np.array([1.0, -1.0]), np.eye(3) * A, \
            A * math.sqrt(3) / 2, 1.762674773070
    if name == "zincblende":
        pos = np.concatenate([FCC, FCC + 0.25]) * A
        return pos, np.repeat([1.0, -1.0], 4), np.eye(3) * A, A * math.sqrt(3) / 4, 1.638055053388
    raise KeyError(name)


def primitive(name):
    """(positions, charges, primitive cell); CsCl's conventional cell is already primitive."""
    if name == "rocksalt":
        return np.array([[0, 0, 0], [A / 2, 0, 0]]), np.array([1.0, -1.0]), FCC_PRIMITIVE * A
    if name == "zincblende":
        return np.array([[0, 0, 0], [A / 4] * 3]), np.array([1.0, -1.0]), FCC_PRIMITIVE * A
    return crystal(name)[:3]


def cell_choices(name):
    """Yield (label, positions, charges, cell) for five descriptions of one crystal."""
    pos, q, cell, *_ = crystal(name)
    yield "conventional", pos, q, cell
    yield "primitive", *primitive(name)
    shifts = np.array(list(itertools.product(range(3), repeat=3))) @ cell
    yield "supercell333", (pos[None] + shifts[:, None]).reshape(-1, 3), np.tile(q, 27), cell * 3
    rot = rotation()
    yield "rotated", pos @ rot.T + [0.3, -1.1, 7.0], q, cell @ rot.T
    ppos, pq, pcell = primitive(name)
    yield "triclinic", ppos, pq, UNIMODULAR @ pcell
