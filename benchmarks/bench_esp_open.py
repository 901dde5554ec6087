"""Open-boundary ESP benchmark: 10,000 molecules of 3–30 atoms, l = 1, batched engine vs per-config loop.

    python benchmarks/bench_esp_open.py [--n-molecules 10000]

Reports the batched `compute_esps` time, a per-config loop over a plain numpy direct sum (one call per
molecule, dense (n, n) arrays), the ratio, the max difference between the two, and (for context) the time
to read the same arrays back from an in-memory HDF5 file when h5py is installed.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np

from scfdata.constants import K_E
from scfdata.reference.esp import compute_esps


def molecules(n_mol: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 31, n_mol)
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(ptr[-1])
    pos = rng.uniform(-3, 3, (n, 3)) * (sizes.repeat(sizes)[:, None] / 10.0) ** (1 / 3)
    mp = rng.normal(size=(n, 4)) * [0.5, 0.1, 0.1, 0.1]
    return pos, mp, ptr


def loop_direct_sum(pos, mp, ptr):
    """The obvious implementation: one dense direct sum per config (point charges + dipoles)."""
    out = np.zeros(pos.shape[0])
    for a, b in zip(ptr[:-1], ptr[1:]):
        r = pos[a:b, None, :] - pos[None, a:b, :]
        d = np.linalg.norm(r, axis=2)
        np.fill_diagonal(d, np.inf)
        q = mp[a:b, 0]
        p = mp[a:b][:, [3, 1, 2]]
        out[a:b] = (q[None] / d).sum(1) + (np.einsum("ijc,jc->ij", r, p) / d**3).sum(1)
    return K_E * out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-molecules", type=int, default=10_000)
    args = ap.parse_args()
    pos, mp, ptr = molecules(args.n_molecules)
    n_cfg = len(ptr) - 1
    cells = np.zeros((n_cfg, 3, 3))
    pbc = np.zeros((n_cfg, 3), bool)
    compute_esps(pos[:100], mp[:100], np.array([0, 100]), cells[:1], pbc[:1])  # warm-up
    t = time.perf_counter()
    v, _ = compute_esps(pos, mp, ptr, cells, pbc, max_l=1)
    t_batch = time.perf_counter() - t
    t = time.perf_counter()
    v_loop = loop_direct_sum(pos, mp, ptr)
    t_loop = time.perf_counter() - t
    from scfdata.reference.esp_realspace import realspace_potential_field

    t = time.perf_counter()
    for a, b in zip(ptr[:-1], ptr[1:]):
        realspace_potential_field(pos[a:b], mp[a:b, 0], mp[a:b][:, [3, 1, 2]])
    t_engine_loop = time.perf_counter() - t
    t = time.perf_counter()
    v_f, _ = compute_esps(pos, mp, ptr, cells, pbc, max_l=1, with_fields=True)
    t_fields = time.perf_counter() - t
    line = (f"molecules {n_cfg}  atoms {pos.shape[0]}\n"
            f"batched compute_esps      {t_batch:8.3f} s\n"
            f"batched, with fields      {t_fields:8.3f} s\n"
            f"per-config loop, dense    {t_loop:8.3f} s   (loop / batched = {t_loop / t_batch:.1f} x)\n"
            f"per-config engine calls   {t_engine_loop:8.3f} s   (loop / batched = {t_engine_loop / t_batch:.1f} x)\n"
            f"max |difference|          {np.abs(v - v_loop).max():8.2e} V")
    print(line)
    try:
        import h5py
    except ImportError:
        return
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["positions"], f["multipoles"], f["ptr"] = pos, mp, ptr
    t = time.perf_counter()
    with h5py.File(buf, "r") as f:
        _ = f["positions"][:], f["multipoles"][:], f["ptr"][:]
    t_read = time.perf_counter() - t
    print(f"HDF5 read (in memory)     {t_read:8.4f} s   (batched / read = {t_batch / t_read:.1f})")


if __name__ == "__main__":
    main()
