"""Make the bundled example data in examples/data (small, deterministic, physically meaningful).

- water_clusters.extxyz: open-boundary clusters of 2-8 rigid TIP3P waters (ASE's TIP3P calculator:
  energy and forces from its Coulomb + Lennard-Jones model); per-atom TIP3P charges (`REF_charges`),
  the total dipole sum_i q_i r_i (`REF_dipole`), `total_charge`. One frame has two overlapping atoms
  (config_type `bad_overlap`) to show the rejects list.
- nacl_crystal.extxyz: rattled 2x2x2 rock-salt NaCl supercells (pbc T T T), charges +-0.9 e.
- water_slab.extxyz: a film of TIP3P waters in a T T F cell with 20 Å of vacuum, charges.

Run: python scripts/make_examples.py   (writes examples/data/*.extxyz; seeded, so reproducible)
"""

from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.calculators.tip3p import TIP3P, qH

OUT = Path(__file__).resolve().parent.parent / "examples" / "data"
RNG = np.random.default_rng(2026)
Q_TIP3P = np.array([-2 * qH, qH, qH])


def water(rng) -> Atoms:
    """One rigid TIP3P water (O-H 0.9572 Å, H-O-H 104.52°), randomly rotated."""
    theta = np.deg2rad(104.52) / 2
    pos = np.array([[0, 0, 0], [0.9572 * np.sin(theta), 0, 0.9572 * np.cos(theta)],
                    [-0.9572 * np.sin(theta), 0, 0.9572 * np.cos(theta)]])
    a = Atoms("OHH", positions=pos)
    a.rotate(rng.uniform(0, 360), rng.normal(size=3), center=(0, 0, 0))
    return a


def place_waters(n: int, box: np.ndarray, rng, min_oo: float = 2.7, min_atom: float = 1.8,
                 periodic_xy: bool = False) -> Atoms:
    """n randomly rotated waters in ``box`` with O-O >= min_oo and any two atoms of different waters
    >= min_atom apart (minimum image in x and y when ``periodic_xy``)."""
    atoms, centres = Atoms(), []
    while len(centres) < n:
        c = rng.uniform(0, 1, 3) * box
        w = water(rng)
        w.translate(c)
        if len(atoms):
            d = w.positions[:, None, :] - atoms.positions[None, :, :]
            if periodic_xy:
                d[..., :2] -= box[:2] * np.round(d[..., :2] / box[:2])
            oo = np.linalg.norm(d[0, ::3], axis=-1)
            if oo.min() < min_oo or np.linalg.norm(d, axis=-1).min() < min_atom:
                continue
        atoms += w
        centres.append(c)
    return atoms


def with_results(atoms: Atoms, calc_pbc: bool = False) -> Atoms:
    atoms.calc = TIP3P(rc=7.0) if calc_pbc else TIP3P(rc=np.inf)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
    return atoms


def water_clusters() -> list[Atoms]:
    frames = []
    for _ in range(60):
        n = int(RNG.integers(2, 9))
        a = place_waters(n, np.full(3, 2.2 * n ** (1 / 3) + 1.0), RNG)
        a.center(vacuum=8.0)
        a.pbc = False
        q = np.tile(Q_TIP3P, n)
        a.arrays["REF_charges"] = q
        a.info["REF_dipole"] = (q[:, None] * a.positions).sum(0)
        a.info["total_charge"] = 0.0
        a.info["config_type"] = f"water_{n}"
        frames.append(with_results(a))
    bad = frames[3].copy()
    bad.calc = SinglePointCalculator(bad, energy=frames[3].get_potential_energy(), forces=frames[3].get_forces())
    bad.positions[1] = bad.positions[0] + [0.01, 0, 0]
    bad.info["config_type"] = "bad_overlap"
    frames.append(bad)
    return frames


def nacl_crystals() -> list[Atoms]:
    frames = []
    for _ in range(4):
        a = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
        a.rattle(0.05, seed=int(RNG.integers(1 << 30)))
        a.arrays["REF_charges"] = np.where(a.numbers == 11, 0.9, -0.9)
        a.info["total_charge"] = 0.0
        a.info["config_type"] = "nacl_bulk"
        frames.append(a)
    return frames


def water_slabs() -> list[Atoms]:
    frames = []
    for _ in range(4):
        a = place_waters(8, np.array([9.0, 9.0, 5.0]), RNG, min_oo=2.8, periodic_xy=True)
        a.positions[:, 2] += 20.0
        a.cell = [9.0, 9.0, 45.0]
        a.pbc = [True, True, False]
        a.wrap()
        a.arrays["REF_charges"] = np.tile(Q_TIP3P, 8)
        a.info["total_charge"] = 0.0
        a.info["config_type"] = "water_film"
        frames.append(a)
    return frames


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ase.io.write(OUT / "water_clusters.extxyz", water_clusters(), format="extxyz")
    ase.io.write(OUT / "nacl_crystal.extxyz", nacl_crystals(), format="extxyz")
    ase.io.write(OUT / "water_slab.extxyz", water_slabs(), format="extxyz")
    for p in sorted(OUT.glob("*.extxyz")):
        print(f"{p}: {p.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
