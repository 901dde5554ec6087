"""Ingest throughput: extxyz -> scfdata HDF5 against the parsers alone, whole processes side by side.

Generates an N-config water-cluster extxyz (2-8 waters each, energy, forces, 4-column multipoles, dipole,
total charge), then times, each as a fresh process (wall time of the whole process, start-up included; peak
RSS from resource.getrusage of the child):
  1. `ase.io.iread` alone: `for atoms in ase.io.iread(path): pass`
  2. the C parser alone: `for frame in extxyz.iread_dicts(path): pass` (libextxyz, PyPI `extxyz`)
  3. `scfdata ingest` (default parser: the C path; parse + validate + write the contiguous HDF5)
  4. `scfdata ingest --parser ase` (every frame through ASE's reader)
Reports wall and CPU (user + system) seconds and each one's speed-up over (1) (goal: scfdata ingest >= 3x;
CPU time is the steadier figure on a shared machine), at N/5 and N configs,
and the peak RSS of `scfdata ingest` at 20k and 200k configs with `--rss` (memory must not grow with N).

Run: python benchmarks/bench_ingest.py [--n 50000] [--rss]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARSE_ASE = "import ase.io, sys\nfor a in ase.io.iread(sys.argv[1]): pass\n"
PARSE_C = "import extxyz, sys\nfor f in extxyz.iread_dicts(sys.argv[1]): pass\n"
INGEST = ["-m", "scfdata.cli", "ingest", "--on-error", "reject"]  # as the workflow runs it (overlaps happen)
KEYS = {"info_keys": {"energy": "DFT_energy", "dipole": "DFT_dipole", "total_charge": "total_charge"},
        "arrays_keys": {"forces": "DFT_forces", "atomic_multipoles": "DFT_multipoles"}}


def generate(path: Path, n: int, seed: int = 0) -> None:
    """N water clusters in extxyz, written directly (fast) with MACE_SCF-style keys."""
    rng = np.random.default_rng(seed)
    q = np.array([-0.8, 0.4, 0.4])
    with open(path, "w") as fh:
        for _ in range(n):
            k = int(rng.integers(2, 9))
            nat = 3 * k
            o = rng.uniform(0, 3.0 * k ** (1 / 3) + 3, (k, 3)) + 3.0 * np.arange(k)[:, None]
            pos = np.repeat(o, 3, axis=0) + np.tile([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], (k, 1))
            f = rng.normal(size=(nat, 3))
            mp = np.c_[np.tile(q, k), rng.normal(scale=0.05, size=(nat, 3))]
            mu = (mp[:, :1] * pos).sum(0) + mp[:, [3, 1, 2]].sum(0)
            fh.write(f"{nat}\n")
            fh.write('Properties=species:S:1:pos:R:3:DFT_forces:R:3:DFT_multipoles:R:4 '
                     f'DFT_energy={rng.normal() - 14 * k:.8f} DFT_dipole="{mu[0]:.8f} {mu[1]:.8f} {mu[2]:.8f}" '
                     f'total_charge=0.0 config_type=water_{k} pbc="F F F"\n')
            for s, r in zip(np.tile(["O", "H", "H"], k), np.c_[pos, f, mp]):
                fh.write(s + " " + " ".join(f"{x:.8f}" for x in r) + "\n")


def run(*argv) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, *map(str, argv)], check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def rss_of(*argv) -> float:
    """Peak RSS (MiB) of one child process alone (a fresh helper process reports its own child's)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, *map(str, argv)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--rss", action="store_true", help="also peak RSS of scfdata ingest at 20k and 200k configs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        keys = d / "keys.yaml"
        keys.write_text(json.dumps(KEYS))
        print("wall s (CPU s) of each whole process; speed-up over the ase.io.iread process by wall (by CPU)")
        print(f"{'configs':>8} {'MiB':>6} {'ase.io.iread':>14} {'C parser':>14} {'scfdata ingest':>15} "
              f"{'ingest --parser ase':>20}  {'C parser':>15} {'scfdata ingest':>15} {'ingest ase':>15}")
        for n in (args.n // 5, args.n):
            src = d / f"w{n}.extxyz"
            generate(src, n)
            times = [run("-c", PARSE_ASE, src), run("-c", PARSE_C, src),
                     run(*INGEST, src, "--keys", keys, "-o", d / f"w{n}.h5"),
                     run(*INGEST, src, "--keys", keys, "-o", d / f"w{n}-ase.h5", "--parser", "ase")]
            cells = [f"{w:.2f} ({c:.2f})" for w, c in times]
            ratios = [f"{times[0][0] / w:.2f}x ({times[0][1] / c:.2f}x)" for w, c in times[1:]]
            print(f"{n:8d} {src.stat().st_size / 2**20:6.1f} {cells[0]:>14} {cells[1]:>14} {cells[2]:>15} "
                  f"{cells[3]:>20}  {ratios[0]:>15} {ratios[1]:>15} {ratios[2]:>15}", flush=True)
        if args.rss:
            for n in (20000, 200000):
                src = d / f"r{n}.extxyz"
                generate(src, n)
                rss = rss_of(*INGEST, src, "--keys", keys, "-o", d / f"r{n}.h5")
                print(f"peak RSS of scfdata ingest, {n} configs ({src.stat().st_size / 2**20:.0f} MiB): {rss:.0f} MiB",
                      flush=True)
                src.unlink()


if __name__ == "__main__":
    main()
