"""Molecule assignment benchmark: periodic water boxes (10k/30k/100k atoms) and 10,000 small clusters.

    python benchmarks/bench_molecules.py [--sizes 10000 30000 100000] [--clusters 10000] [--loop-clusters N]

Periodic boxes: each size runs in a fresh (spawned) child process; time is the best of --repeat runs of
``assign_molecules`` (bonds, components, unwrapping, formulas), peak RSS is the child's ru_maxrss minus its
RSS before the call, and peak traced is the tracemalloc peak of one extra (untimed) call. Linear scaling
shows as a constant µs/atom. Clusters: one ``assign_molecules_batch`` pass over all clusters (small open
configs: all-pairs bonds and label propagation), the same pass on the cKDTree + csgraph path of large and
periodic configs (SMALL_CONFIG_ATOMS = 0; the results must be identical), and a Python loop of
``assign_molecules`` per cluster (timed over --loop-clusters and extrapolated when that is smaller than
--clusters).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
import tracemalloc

import numpy as np


def _waters(n_mol: int, rng) -> np.ndarray:
    """(n_mol, 3, 3) water geometries (O, H, H) about the O atom, randomly rotated (0.9572 Å, 104.52°)."""
    half = np.deg2rad(104.52) / 2
    ref = np.array([[0, 0, 0], [np.sin(half), np.cos(half), 0], [-np.sin(half), np.cos(half), 0]]) * 0.9572
    q = rng.normal(size=(n_mol, 4))
    q /= np.linalg.norm(q, axis=1)[:, None]
    w, x, y, z = q.T
    rot = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                    2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                    2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], 1).reshape(-1, 3, 3)
    return np.einsum("mij,aj->mai", rot, ref)


def water_box(n_atoms: int, seed: int = 0):
    """Periodic water at 0.1 atoms/Å³ on a jittered lattice, wrapped (molecules split at every face)."""
    rng = np.random.default_rng(seed)
    nm = n_atoms // 3
    m = int(np.ceil(nm ** (1 / 3)))
    box = m * 3.1
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:nm]
    o = grid * 3.1 + rng.uniform(-0.15, 0.15, (nm, 3))
    pos = (o[:, None, :] + _waters(nm, rng)).reshape(-1, 3) % box
    numbers = np.tile([8, 1, 1], nm)
    return numbers, pos, np.eye(3) * box


def clusters(n_clusters: int, seed: int = 1):
    """n_clusters open water clusters of 1-8 molecules (atoms concatenated, ptr)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, n_clusters)
    nm = sizes.sum()
    local = np.concatenate([np.arange(s) for s in sizes])
    grid = np.stack([local % 2, (local // 2) % 2, local // 4], 1) * 3.1
    o = grid + rng.uniform(-0.15, 0.15, (nm, 3))
    pos = (o[:, None, :] + _waters(nm, rng)).reshape(-1, 3)
    ptr = np.r_[0, np.cumsum(sizes * 3)]
    return np.tile([8, 1, 1], nm), pos, ptr, sizes


def _box_child(n_atoms: int, repeat: int, out):
    from scfdata.reference.molecules import assign_molecules

    numbers, pos, cell = water_box(n_atoms)
    assign_molecules(numbers[:30], pos[:30], cell, True)  # imports and first-call costs out of the timing
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        r = assign_molecules(numbers, pos, cell, True)
        best = min(best, time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    assign_molecules(numbers, pos, cell, True)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ok = bool(r.n_molecules[0] == len(numbers) // 3 and not r.extended[0])
    out.put((len(numbers), best, (rss - rss0) / 1024, traced / 2**20, ok))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--loop-clusters", type=int, default=10_000)
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    print("Periodic water boxes (cubic, wrapped), assign_molecules, one process per size")
    print(f"{'atoms':>8} {'time s':>8} {'µs/atom':>8} {'vs prev':>9} {'peak RSS MiB':>13} {'traced MiB':>11} "
          f"{'B/atom':>7} ok")
    prev = None
    for n in args.sizes:
        q = ctx.Queue()
        p = ctx.Process(target=_box_child, args=(n, args.repeat, q))
        p.start()
        n_at, t, rss, traced, ok = q.get()
        p.join()
        ratio = "" if prev is None else f"{t / prev[1]:.2f}x/{n_at / prev[0]:.1f}x"
        print(f"{n_at:>8} {t:>8.3f} {t / n_at * 1e6:>8.2f} {ratio:>9} {rss:>13.1f} {traced:>11.1f} "
              f"{traced * 2**20 / n_at:>7.0f} {ok}")
        prev = (n_at, t)

    from scfdata.reference import molecules
    from scfdata.reference.molecules import assign_molecules, assign_molecules_batch

    numbers, pos, ptr, sizes = clusters(args.clusters)
    zeros = np.zeros((3, 3))
    assign_molecules(numbers[:3], pos[:3])
    t = time.perf_counter()
    r = assign_molecules_batch(numbers, pos, ptr, None, None)
    t_batch = time.perf_counter() - t
    assert np.array_equal(r.n_molecules, sizes), "batched assignment found the wrong molecules"
    small, molecules.SMALL_CONFIG_ATOMS = molecules.SMALL_CONFIG_ATOMS, 0
    t = time.perf_counter()
    r_tree = assign_molecules_batch(numbers, pos, ptr, None, None)
    t_tree = time.perf_counter() - t
    molecules.SMALL_CONFIG_ATOMS = small
    assert np.array_equal(r.molecule, r_tree.molecule) and np.array_equal(r.formula, r_tree.formula), \
        "the small-config path and the cKDTree path disagree"
    n_loop = min(args.loop_clusters, args.clusters)
    t = time.perf_counter()
    for c in range(n_loop):
        s = slice(ptr[c], ptr[c + 1])
        one = assign_molecules(numbers[s], pos[s], zeros, False)
        assert one.n_molecules[0] == sizes[c]
    t_loop = (time.perf_counter() - t) * args.clusters / n_loop
    note = "" if n_loop == args.clusters else f" (extrapolated from {n_loop})"
    print(f"\n{args.clusters} open water clusters of 1-8 molecules ({len(numbers)} atoms, {sizes.sum()} molecules)")
    print(f"{'method':>22} {'time s':>8} {'ms/1k configs':>14} {'ratio':>7}")
    print(f"{'batched (one pass)':>22} {t_batch:>8.3f} {t_batch / args.clusters * 1e6:>14.1f} {1.0:>7.1f}")
    print(f"{'batched, cKDTree path':>22} {t_tree:>8.3f} {t_tree / args.clusters * 1e6:>14.1f} "
          f"{t_tree / t_batch:>7.1f}")
    print(f"{'per-config loop':>22} {t_loop:>8.3f} {t_loop / args.clusters * 1e6:>14.1f} "
          f"{t_loop / t_batch:>7.1f}{note}")


if __name__ == "__main__":
    main()
