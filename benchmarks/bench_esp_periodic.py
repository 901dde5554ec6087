"""Periodic ESP benchmark: scfdata Ewald vs torch-pme P3M (if installed), water density, N = 64 ... 32768.

    python benchmarks/bench_esp_periodic.py [--max-n 32768] [--no-torchpme]

Each measurement runs in a fresh child process (peak RSS of that child = peak memory). The error is the
max |V − V_ref| against scfdata's Ewald at tolerance 1e-11 (verified against Madelung constants in the
tests), computed for N <= --max-ref-n.
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
    ap.add_argument("--max-ref-n", type=int, default=4096)
    ap.add_argument("--no-torchpme", action="store_true")
    ap.add_argument("--mesh-ratio", type=float, default=0.25, help="torch-pme mesh spacing / smearing")
    args = ap.parse_args()
    try:
        import torchpme  # noqa: F401

        have_pme = not args.no_torchpme
    except ImportError:
        have_pme = False
    sizes = [n for n in (64, 512, 4096, 32768) if n <= args.max_n]
    print(f"{'N':>6} {'case':<16} {'time s':>8} {'peak MB':>8} {'max err V':>10}"
          f"{'  torch-pme s':>13} {'MB':>7} {'err V':>9} {'ratio':>6}")
    for n in sizes:
        for dipoles in (False, True):
            dt, mem, v = measure(_run_scfdata, n, dipoles, 1e-6)
            err = float("nan")
            if n <= args.max_ref_n:
                _, _, ref = measure(_run_scfdata, n, dipoles, 1e-11)
                err = np.abs(v - ref).max()
            line = f"{n:>6} {'q+p' if dipoles else 'q':<16} {dt:>8.3f} {mem:>8.0f} {err:>10.2e}"
            if have_pme and not dipoles:
                pdt, pmem, pv = measure(_run_torchpme, n, 1e-6, args.mesh_ratio)
                perr = np.abs(pv - ref).max() if n <= args.max_ref_n else float("nan")
                line += f"{pdt:>13.3f} {pmem:>7.0f} {perr:>9.2e} {pdt / dt:>6.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
