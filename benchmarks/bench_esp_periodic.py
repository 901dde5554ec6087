"""Periodic ESP benchmark: scfdata PME and plain Ewald vs torch-pme P3M (if installed), water density.

    python benchmarks/bench_esp_periodic.py                  # N = 64 ... 4096
    python benchmarks/bench_esp_periodic.py --max-n 32768    # full run (plain Ewald: ~1.5 min per case)

All at tolerance 1e-6 V, potentials only. Each measurement runs in a fresh child process (peak RSS of that
child = peak memory, interpreter and imports included). The error is max |V − V_ref| against a converged
sum: scfdata's plain Ewald at tolerance 1e-11 (verified against Madelung constants in the tests) for
N <= --max-ref-n, beyond that scfdata PME at tolerance 1e-10 (marked ``*``; agrees with plain Ewald at
tolerance 1e-8 to 3e-10 V at N = 32768). Ratios are other engine's time / PME time (> 1: PME faster).
``cEwald``: the compiled (numba) plain Ewald that compute_esps uses below PME_MIN_ATOMS atoms (one cell:
one thread; its cache loaded before timing).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import time

import numpy as np


def water_box(n: int, seed: int = 0):
    """N atoms (N/3 rigid-ish waters) on a jittered lattice at 0.1 atoms/Å³; charges −0.8/+0.4, dipoles."""
    rng = np.random.default_rng(seed)
    nm = n // 3
    box = (3 * nm / 0.1) ** (1 / 3)
    m = int(math.ceil(nm ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:nm]
    o = (grid + 0.5) * (box / m) + rng.uniform(-0.3, 0.3, (nm, 3))
    d1 = rng.normal(size=(nm, 3))
    d2 = rng.normal(size=(nm, 3))
    d1 /= np.linalg.norm(d1, axis=1)[:, None]
    d2 /= np.linalg.norm(d2, axis=1)[:, None]
    pos = np.concatenate([o, o + 0.96 * d1, o + 0.96 * d2], 1).reshape(-1, 3)
    q = np.tile([-0.8, 0.4, 0.4], nm)
    p = rng.normal(size=(3 * nm, 3)) * 0.1
    return pos, q, p, np.eye(3) * box


def _run_scfdata(n, dipoles, tol):
    from scfdata.reference.ewald import ewald_potential_field

    pos, q, p, cell = water_box(n)
    t = time.perf_counter()
    v, _ = ewald_potential_field(pos, q, p if dipoles else None, None, cell, tolerance=tol)
    return time.perf_counter() - t, v


def _run_pme(n, dipoles, tol):
    from scfdata.reference.pme import pme_potential_field

    pos, q, p, cell = water_box(n)
    t = time.perf_counter()
    v, _ = pme_potential_field(pos, q, p if dipoles else None, None, cell, tolerance=tol)
    return time.perf_counter() - t, v


def _run_compiled(n, dipoles, tol):
    """The compiled (numba) plain Ewald that compute_esps runs for cells below PME_MIN_ATOMS atoms."""
    from scfdata.reference.ewald_numba import ewald_many

    pos, q, p, cell = water_box(n)
    ewald_many(pos[:3], q[:3], p[:3] if dipoles else None, None, [0, 3], cell[None])  # numba: load its cache
    t = time.perf_counter()
    v, _ = ewald_many(pos, q, p if dipoles else None, None, [0, len(q)], cell[None], tolerance=tol)
    return time.perf_counter() - t, v


def _run_torchpme(n, tol_unused, mesh_ratio):
    import torch
    import torchpme

    from scfdata.constants import K_E
    from scfdata.reference.ewald import choose_parameters, periodic_pairs

    torch.set_default_dtype(torch.float64)
    pos, q, _, cell = water_box(n)
    t = time.perf_counter()
    prm = choose_parameters(cell, n, q, None, None, 0.0, 1e-6)
    smearing = 1.0 / (math.sqrt(2.0) * prm["gamma"])
    frac = pos @ np.linalg.inv(cell)
    pos_w = (frac - np.floor(frac)) @ cell
    pairs = [(r, s, np.linalg.norm(v, axis=1)) for r, s, v in periodic_pairs(pos_w, cell, prm["r_cut"])]
    idx = np.concatenate([np.stack([r, s], 1) for r, s, _ in pairs])
    dist = np.concatenate([d for *_, d in pairs])
    calc = torchpme.P3MCalculator(torchpme.CoulombPotential(smearing=smearing), mesh_spacing=smearing * mesh_ratio,
                                  interpolation_nodes=5, full_neighbor_list=True)
    out = calc(torch.tensor(q[:, None]), torch.tensor(cell), torch.tensor(pos_w), torch.tensor(idx),
               torch.tensor(dist))
    v = 2.0 * K_E * out[:, 0].numpy()  # torch-pme returns half the potential, in units of 1/(4πε0)=1
    return time.perf_counter() - t, v


def _child(fn, args, queue):
    dt, v = fn(*args)
    queue.put((dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, v))


def measure(fn, *args):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    dt, mem, v = queue.get()
    proc.join()
    return dt, mem, v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-n", type=int, default=4096)
    ap.add_argument("--max-ref-n", type=int, default=4096, help="largest N referred to plain Ewald at 1e-11")
    ap.add_argument("--max-ewald-n", type=int, default=32768, help="largest N timed with plain Ewald")
    ap.add_argument("--max-compiled-n", type=int, default=4096, help="largest N timed with the compiled Ewald")
    ap.add_argument("--no-torchpme", action="store_true")
    ap.add_argument("--mesh-ratio", type=float, default=0.25, help="torch-pme mesh spacing / smearing")
    args = ap.parse_args()
    try:
        import torchpme  # noqa: F401

        have_tp = not args.no_torchpme
    except ImportError:
        have_tp = False
    sizes = [n for n in (64, 128, 256, 512, 1024, 4096, 8192, 32768) if n <= args.max_n]
    nan = float("nan")
    print(f"{'N':>6} {'case':<4} | {'PME s':>7} {'MB':>5} {'err V':>9} | {'cEwald s':>8} {'err V':>9} |"
          f" {'Ewald s':>7} {'MB':>5} {'err V':>9} | {'t-pme s':>7} {'MB':>5} {'err V':>9} |"
          f" {'cEw/PME':>7} {'Ewald/PME':>9} {'t-pme/PME':>9}")
    for n in sizes:
        for dipoles in (False, True):
            if n <= args.max_ref_n:
                _, _, ref = measure(_run_scfdata, n, dipoles, 1e-11)
                mark = " "
            else:
                _, _, ref = measure(_run_pme, n, dipoles, 1e-10)
                mark = "*"
            dt, mem, v = measure(_run_pme, n, dipoles, 1e-6)
            err = np.abs(v - ref).max()
            cdt = cerr = nan
            if n <= args.max_compiled_n:
                cdt, _, cv = measure(_run_compiled, n, dipoles, 1e-6)
                cerr = np.abs(cv - ref).max()
            edt = emem = eerr = nan
            if n <= args.max_ewald_n:
                edt, emem, ev = measure(_run_scfdata, n, dipoles, 1e-6)
                eerr = np.abs(ev - ref).max()
            pdt = pmem = perr = nan
            if have_tp and not dipoles:
                pdt, pmem, pv = measure(_run_torchpme, n, 1e-6, args.mesh_ratio)
                perr = np.abs(pv - ref).max()
            print(f"{n:>6} {'q+p' if dipoles else 'q':<4} | {dt:>7.3f} {mem:>5.0f} {err:>8.1e}{mark} |"
                  f" {cdt:>8.4f} {cerr:>8.1e}{mark} |"
                  f" {edt:>7.3f} {emem:>5.0f} {eerr:>8.1e}{mark} | {pdt:>7.3f} {pmem:>5.0f} {perr:>8.1e}{mark} |"
                  f" {cdt / dt:>7.2f} {edt / dt:>9.1f} {pdt / dt:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
