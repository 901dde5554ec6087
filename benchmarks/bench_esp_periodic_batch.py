"""Many small periodic cells: compute_esps (all cells below PME_MIN_ATOMS in one compiled Ewald call) against
a per-cell loop over the numpy Ewald (what compute_esps did before, and what a user of a per-structure tool
writes), at water density, tolerance 1e-6 V.

    python benchmarks/bench_esp_periodic_batch.py [--cells 1000] [--repeats 3]

Cells of 9, 24, 96 and 300 atoms (``water_box`` of bench_esp_periodic.py, each cell its own random
configuration), point charges and charges + dipoles. Reported: best wall time of each, the ratio
loop / batch, and the largest difference between the two (both are within the tolerance of the exact sum).
Then slabs (the same boxes of 24 atoms, periodic in x and y only): compute_esps against a per-slab loop over
``slab_potential_field`` (one call per slab, each through the compiled Ewald of its auxiliary box).
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_esp_open import best_of
from bench_esp_periodic import water_box

from scfdata.reference.esp import compute_esps
from scfdata.reference.ewald import ewald_potential_field
from scfdata.reference.multipoles import charges_dipoles_to_multipoles
from scfdata.reference.slab import slab_potential_field


def per_cell_loop(pos, q, p, ptr, cells):
    """The per-cell alternative: one numpy Ewald call per cell."""
    return np.concatenate([ewald_potential_field(pos[a:b], q[a:b], None if p is None else p[a:b], None, cells[c])[0]
                           for c, (a, b) in enumerate(zip(ptr[:-1], ptr[1:]))])


def per_slab_loop(pos, q, p, ptr, cells):
    """The per-slab alternative: one slab_potential_field call per slab."""
    return np.concatenate([slab_potential_field(pos[a:b], q[a:b], None if p is None else p[a:b], None, cells[c])[0]
                           for c, (a, b) in enumerate(zip(ptr[:-1], ptr[1:]))])


def compare(n_atoms, n_cells, dipoles, repeats, slabs=False):
    """(batch time, loop time, max difference) for n_cells water boxes of n_atoms (3D cells, or slabs)."""
    boxes = [water_box(n_atoms, seed=s) for s in range(n_cells)]
    pos = np.concatenate([b[0] for b in boxes])
    q = np.concatenate([b[1] for b in boxes])
    p = np.concatenate([b[2] for b in boxes]) if dipoles else None
    cells = np.stack([b[3] for b in boxes])
    ptr = np.arange(n_cells + 1) * n_atoms
    mp = charges_dipoles_to_multipoles(q, p) if dipoles else q[:, None]
    pbc = np.tile([True, True, not slabs], (n_cells, 1))
    t_batch, (v, _) = best_of(lambda: compute_esps(pos, mp, ptr, cells, pbc, max_l=int(dipoles)), repeats)
    loop = per_slab_loop if slabs else per_cell_loop
    t_loop, v_loop = best_of(lambda: loop(pos, q, p, ptr, cells), 1)
    return t_batch, t_loop, float(np.abs(v - v_loop).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=1000,
                    help="cells of 9 and 24 atoms (a quarter of it for 96, a tenth for 300)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    compare(24, 2, True, 1)  # warm-up: numba compiles or loads its cache
    compare(24, 2, False, 1)
    print(f"{'atoms/cell':>10} {'cells':>6} {'multipoles':>10} {'batch':>9} {'loop':>9} {'loop/batch':>10} "
          f"{'max diff':>9}")
    for n_atoms, n_cells in ((9, args.cells), (24, args.cells), (96, args.cells // 4), (300, args.cells // 10)):
        for dipoles in (False, True):
            t_batch, t_loop, diff = compare(n_atoms, n_cells, dipoles, args.repeats)
            label = "q + p" if dipoles else "q"
            print(f"{n_atoms:>10} {n_cells:>6} {label:>10} {t_batch:8.3f}s {t_loop:8.3f}s {t_loop / t_batch:9.1f}x "
                  f"{diff:9.1e} V")
    n_slabs = args.cells // 5
    for dipoles in (False, True):
        t_batch, t_loop, diff = compare(24, n_slabs, dipoles, args.repeats, slabs=True)
        label = "slab q + p" if dipoles else "slab q"
        print(f"{24:>10} {n_slabs:>6} {label:>10} {t_batch:8.3f}s {t_loop:8.3f}s {t_loop / t_batch:9.1f}x "
              f"{diff:9.1e} V")


if __name__ == "__main__":
    main()
