"""Open-boundary ESP benchmark: 10,000 molecules of 3–30 atoms, l = 1, batched engine vs per-config loops.

    python benchmarks/bench_esp_open.py [--n-molecules 10000] [--repeats 3]

The issue's goal (for the compiled engine, ``engine="numba"``): at least 20x faster than a per-config loop
over the direct sum, and within 3x of the time to read the same arrays from HDF5; ``compute_esps`` runs
``auto``, i.e. the numpy engine for these small molecules (no numba to load in a short job). Reported (best
of ``--repeats`` runs each):

* ``compute_esps`` (the public entry point, engine auto, l = 1, with and without fields) and the engine alone
  (``realspace_potential_field`` on Cartesian arrays, ``engine="numba"``): the compiled numba loop;
* the numpy engine (``engine="numpy"``: what ``auto`` runs for configs of at most ``AUTO_NUMPY_MAX_ATOMS``
  atoms, e.g. a workflow shard of small molecules, since it spares the ~0.4 s of importing numba and
  loading its cache), with and without fields;
* the torch engine on the CPU (``engine="torch"``: the path tensors on a GPU take), for comparison;
* the alternatives a user would write: a per-config loop over a plain numpy direct sum (dense (n, n)
  arrays per molecule) for charges only and for charges + dipoles, and a per-config loop of engine calls;
* torch-pme's direct sum over a prebuilt half pair list (charges only), when torch-pme is installed;
* reading positions, multipoles and the pointer back from HDF5: a file in a temporary directory (warm
  page cache) and an in-memory file;
* the ratios, and the largest difference between the batched engine and the numpy loop, and between the
  numpy and numba engines.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np

from scfdata.constants import K_E
from scfdata.reference.esp import compute_esps
from scfdata.reference.esp_realspace import AUTO_NUMPY_MAX_ATOMS, realspace_potential_field


def molecules(n_mol: int, seed: int = 0):
    """Random 'molecules': sizes 3–30, atoms uniform in a cube of ~10 atoms/6³ Å³ (close pairs happen)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 31, n_mol)
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(ptr[-1])
    pos = rng.uniform(-3, 3, (n, 3)) * (sizes.repeat(sizes)[:, None] / 10.0) ** (1 / 3)
    mp = rng.normal(size=(n, 4)) * [0.5, 0.1, 0.1, 0.1]
    return pos, mp, ptr


def loop_direct_sum(pos, mp, ptr, dipoles=True):
    """The obvious implementation: one dense direct sum per config (point charges [+ dipoles])."""
    out = np.zeros(pos.shape[0])
    for a, b in zip(ptr[:-1], ptr[1:]):
        r = pos[a:b, None, :] - pos[None, a:b, :]
        d = np.linalg.norm(r, axis=2)
        np.fill_diagonal(d, np.inf)
        v = (mp[a:b, 0][None] / d).sum(1)
        if dipoles:
            p = mp[a:b][:, [3, 1, 2]]
            v += (np.einsum("ijc,jc->ij", r, p) / d**3).sum(1)
        out[a:b] = v
    return K_E * out


def best_of(fn, repeats):
    """(best wall time in s, last result)."""
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def torch_pme_timer(pos, mp, ptr):
    """A callable running torch-pme's direct Coulomb sum (charges) over a prebuilt half pair list, or None."""
    try:
        import torch
        from torchpme import Calculator, CoulombPotential
    except ImportError:
        return None
    counts = np.diff(ptr)
    cfg = np.repeat(np.arange(counts.size), counts * counts)
    start = np.repeat(ptr[:-1], counts * counts)
    k = np.arange(cfg.size) - np.repeat(np.concatenate([[0], np.cumsum(counts * counts)[:-1]]), counts * counts)
    size = counts[cfg]
    i, j = start + k // size, start + k % size
    keep = i < j
    pairs = torch.from_numpy(np.stack([i[keep], j[keep]], axis=1))
    positions = torch.from_numpy(pos)
    charges = torch.from_numpy(np.ascontiguousarray(mp[:, :1]))
    calc = Calculator(CoulombPotential(), full_neighbor_list=False).to(torch.float64)
    cell = torch.zeros(3, 3, dtype=torch.float64)
    periodic = torch.tensor([False, False, False])

    def run():
        d = torch.linalg.vector_norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], dim=1)
        return 2.0 * K_E * calc(charges, cell, positions, pairs, d, periodic=periodic)[:, 0].numpy()  # V = 2·k·out

    return run


def hdf5_read_times(pos, mp, ptr, repeats):
    """Best time to read positions, multipoles and ptr back: (file on disk, in-memory file), or None."""
    try:
        import h5py
    except ImportError:
        return None

    def write(target):
        with h5py.File(target, "w") as f:
            f["positions"], f["multipoles"], f["ptr"] = pos, mp, ptr

    def read(target):
        with h5py.File(target, "r") as f:
            return f["positions"][:], f["multipoles"][:], f["ptr"][:]

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "molecules.h5")
        write(path)
        read(path)  # warm the page cache: the engine's inputs are in memory too
        t_disk, _ = best_of(lambda: read(path), repeats)
    buf = io.BytesIO()
    write(buf)
    t_mem, _ = best_of(lambda: read(buf), repeats)
    return t_disk, t_mem


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-molecules", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs for every timing")
    args = ap.parse_args()
    rep = args.repeats
    pos, mp, ptr = molecules(args.n_molecules)
    n_cfg = len(ptr) - 1
    cells = np.zeros((n_cfg, 3, 3))
    pbc = np.zeros((n_cfg, 3), bool)
    q, p = mp[:, 0].copy(), mp[:, [3, 1, 2]].copy()
    t0 = time.perf_counter()
    realspace_potential_field(pos[:100], q[:100], engine="numba")  # warm-up (numba: import, compile or load)
    compute_esps(pos[:100], mp[:100], np.array([0, 100]), cells[:1], pbc[:1])
    realspace_potential_field(pos[:100], q[:100], p[:100], None, np.array([0, 100]))
    realspace_potential_field(pos[:100], q[:100], None, None, np.array([0, 100]))
    compute_esps(pos[:100], mp[:100], np.array([0, 100]), cells[:1], pbc[:1], with_fields=True)
    t_first = time.perf_counter() - t0

    t_batch, (v, _) = best_of(lambda: compute_esps(pos, mp, ptr, cells, pbc, max_l=1), rep)
    t_fields, _ = best_of(lambda: compute_esps(pos, mp, ptr, cells, pbc, max_l=1, with_fields=True), rep)
    t_engine, _ = best_of(lambda: realspace_potential_field(pos, q, p, None, ptr, engine="numba"), rep)
    t_engine_q, (v_q, _) = best_of(lambda: realspace_potential_field(pos, q, None, None, ptr, engine="numba"), rep)
    t_numpy, (v_np, _) = best_of(lambda: realspace_potential_field(pos, q, p, None, ptr, engine="numpy"), rep)
    t_numpy_f, (_, e_np) = best_of(
        lambda: realspace_potential_field(pos, q, p, None, ptr, engine="numpy", with_fields=True), rep)
    t_numpy_q, _ = best_of(lambda: realspace_potential_field(pos, q, None, None, ptr, engine="numpy"), rep)
    _, e_nb = realspace_potential_field(pos, q, p, None, ptr, engine="numba", with_fields=True)
    t_torch, (v_torch, _) = best_of(lambda: realspace_potential_field(pos, q, p, None, ptr, engine="torch"), rep)
    t_loop, v_loop = best_of(lambda: loop_direct_sum(pos, mp, ptr), min(rep, 2))
    t_loop_q, v_loop_q = best_of(lambda: loop_direct_sum(pos, mp, ptr, dipoles=False), min(rep, 2))
    t_calls, _ = best_of(
        lambda: [realspace_potential_field(pos[a:b], q[a:b], p[a:b]) for a, b in zip(ptr[:-1], ptr[1:])], 1
    )
    pme = torch_pme_timer(pos, mp, ptr)
    t_pme, v_pme = best_of(pme, rep) if pme is not None else (None, None)
    reads = hdf5_read_times(pos, mp, ptr, max(rep, 5))

    print(f"molecules {n_cfg}  atoms {pos.shape[0]}  pairs {int((np.diff(ptr) * (np.diff(ptr) - 1)).sum())}  "
          f"(best of {rep}; torch threads: {__import__('torch').get_num_threads()})")
    rows = [
        ("compute_esps, l=1", t_batch),
        ("compute_esps, l=1 + fields", t_fields),
        ("engine only, l=1", t_engine),
        ("engine only, charges", t_engine_q),
        ("numpy engine, l=1", t_numpy),
        ("numpy engine, l=1 + fields", t_numpy_f),
        ("numpy engine, charges", t_numpy_q),
        ("torch engine (CPU), l=1", t_torch),
        ("numpy loop per config, l=1", t_loop),
        ("numpy loop per config, charges", t_loop_q),
        ("engine call per config, l=1", t_calls),
    ]
    if t_pme is not None:
        rows.append(("torch-pme direct, charges", t_pme))
    if reads is not None:
        rows += [("HDF5 read (file, warm cache)", reads[0]), ("HDF5 read (in memory)", reads[1])]
    for name, t in rows:
        print(f"  {name:32s} {t * 1e3:9.1f} ms")
    print(f"  first calls (numba compile or cache load, 4 variants) {t_first:.2f} s")
    print("ratios")
    print(f"  numpy loop l=1 / compute_esps l=1       {t_loop / t_batch:6.1f} x   (auto: numpy for small configs)")
    print(f"  numpy loop l=1 / engine l=1             {t_loop / t_engine:6.1f} x   (goal >= 20)")
    print(f"  numpy loop charges / engine charges     {t_loop_q / t_engine_q:6.1f} x")
    print(f"  engine calls per config / compute_esps  {t_calls / t_batch:6.1f} x")
    print(f"  torch engine l=1 / numba engine l=1     {t_torch / t_engine:6.1f} x")
    print(f"  numpy engine l=1 / numba engine l=1     {t_numpy / t_engine:6.1f} x   (numba: all cores; numpy: one)")
    big = int((np.diff(ptr) > AUTO_NUMPY_MAX_ATOMS).sum())
    print(f"  engine auto: numpy for configs of <= {AUTO_NUMPY_MAX_ATOMS} atoms ({len(ptr) - 1 - big} here), "
          f"numba for {big}")
    if t_pme is not None:
        print(f"  torch-pme charges / engine charges      {t_pme / t_engine_q:6.1f} x")
    if reads is not None:
        print(f"  compute_esps l=1 / HDF5 read (file)     {t_batch / reads[0]:6.1f} x")
        print(f"  engine l=1 / HDF5 read (file)           {t_engine / reads[0]:6.1f} x   (goal <= 3)")
        print(f"  compute_esps l=1 / HDF5 read (memory)   {t_batch / reads[1]:6.1f} x")
    print("max |difference|")
    print(f"  compute_esps vs numpy loop, l=1         {np.abs(v - v_loop).max():8.1e} V")
    print(f"  engine vs numpy loop, charges           {np.abs(v_q - v_loop_q).max():8.1e} V")
    print(f"  torch engine vs numpy loop, l=1         {np.abs(v_torch - v_loop).max():8.1e} V")
    print(f"  numpy engine vs numba engine, l=1       {np.abs(v_np - v).max():8.1e} V")
    print(f"  numpy vs numba engine fields, l=1       {np.abs(e_np - e_nb).max():8.1e} V/Å")
    if v_pme is not None:
        print(f"  engine vs torch-pme, charges            {np.abs(v_q - v_pme).max():8.1e} V")


if __name__ == "__main__":
    main()
