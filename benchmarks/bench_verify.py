"""Time and peak memory of `scfdata verify` on a 200,000-config file.

The file holds water clusters of 6-24 atoms (about 3 M atoms) with every array a real results file
has: numbers, positions, forces, charges, 4-column multipoles, ESPs, fields and molecule ids per atom;
molecular forces and centres per molecule; energy, dipole, total charge, weights, cell, pbc,
config_type and source per config; masks. Verify runs in a fresh process (`python -m scfdata.cli
verify FILE`, and with `--no-checksums`), timed around the whole command, peak RSS from the OS
(ru_maxrss of the child). The file size and the time to read every array once (np.sum over each
memory-mapped array, the floor for any full check) are printed for scale. The page cache is warm
(the file was just written): on a cold disk, add the time to read the file.

Run: python benchmarks/bench_verify.py [--n 200000] [--keep FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from scfdata.columns import Columns
from scfdata.h5io import ScfdataFile, write_columns
from scfdata.verify import verify


def make(n: int, seed: int = 0) -> Columns:
    rng = np.random.default_rng(seed)
    n_mol = rng.integers(2, 9, n)
    n_at = 3 * n_mol
    N, M = int(n_at.sum()), int(n_mol.sum())
    mol_of_atom = np.repeat(np.arange(M), 3)
    first_mol = np.repeat(np.r_[0, np.cumsum(n_mol)[:-1]], n_at)
    return Columns(
        n_atoms=n_at, n_molecules=n_mol,
        configs={"energy": rng.normal(size=n), "dipole": rng.normal(size=(n, 3)), "total_charge": np.zeros(n),
                 "weight": np.ones(n), "energy_weight": np.ones(n), "dipole_weight": np.ones((n, 3)),
                 "pbc": np.zeros((n, 3), bool), "cell": np.zeros((n, 3, 3)),
                 "config_type": np.array(["water"] * n), "source": np.c_[np.zeros(n, np.int64), np.arange(n)]},
        atoms={"numbers": np.tile([8, 1, 1], M), "positions": rng.normal(size=(N, 3)),
               "forces": rng.normal(size=(N, 3)), "charges": rng.normal(size=N),
               "atomic_multipoles": rng.normal(size=(N, 4)), "esps": rng.normal(size=N),
               "fields": rng.normal(size=(N, 3)), "molecule": mol_of_atom - first_mol},
        molecules={"molecular_forces": rng.normal(size=(M, 3)), "molecule_centre": rng.normal(size=(M, 3))},
        masks={k: np.ones(n, bool) for k in ("energy", "total_charge", "forces", "charges", "atomic_multipoles",
                                             "esps", "fields", "molecule", "molecular_forces", "molecule_centre")}
        | {"dipole": np.ones((n, 3), bool)},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--keep", help="write the file here (and keep it) instead of a temporary folder")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.keep) if a.keep else Path(tmp) / "big.h5"
        t0 = time.perf_counter()
        write_columns(path, make(a.n))
        print(f"wrote {a.n} configs in {time.perf_counter() - t0:.1f} s: {path.stat().st_size / 1e6:.0f} MB")
        t0 = time.perf_counter()
        with ScfdataFile(path) as f:
            n_atoms = f.n_atoms
            for key in f.datasets():
                group, name = key.split("/")
                arr = f.raw(group, name)
                if arr.dtype.kind not in "SU":
                    np.sum(arr)
        print(f"{n_atoms} atoms; reading every array once: {time.perf_counter() - t0:.2f} s")
        # in this process: time, and the peak of memory allocated (numpy arrays included; the memory-mapped
        # file itself is page cache, not allocated)
        for checksums in (True, False):
            tracemalloc.start()
            t0 = time.perf_counter()
            rep = verify(path, checksums=checksums)
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            label = "verify()" + ("" if checksums else " checksums=False")
            print(f"{label:34s} {dt:6.2f} s   peak allocated {peak:6.0f} MB   ok={rep.ok}")
        # the command in a fresh process: wall time (CLI start-up included) and peak RSS (which counts the
        # mapped file's pages it touched)
        for extra in ([], ["--no-checksums"]):
            code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                    f"p = subprocess.run([sys.executable, '-m', 'scfdata.cli', 'verify', {str(path)!r}, *{extra!r}], "
                    "capture_output=True, text=True); dt = time.perf_counter() - t; "
                    "r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024; "
                    "print(f'{dt:.2f} {r:.0f} {p.returncode}')")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
            dt, rss, rc = float(out[0]), float(out[1]), int(out[2])
            label = "scfdata verify" + (" " + " ".join(extra) if extra else "")
            print(f"{label:34s} {dt:6.2f} s   peak RSS {rss:6.0f} MB   exit {rc}")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scfdata.cli", "--help"], capture_output=True)
        print(f"{'(scfdata --help: CLI start-up)':34s} {time.perf_counter() - t0:6.2f} s")

if __name__ == "__main__":
    main()
