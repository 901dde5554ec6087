"""Ingest throughput: extxyz -> scfdata HDF5 against `ase.io.iread` alone on the same file.

Generates an N-config water-cluster extxyz (2-8 waters each, energy, forces, 4-column multipoles,
dipole), then times, each in a fresh subprocess (peak RSS from resource.getrusage):
  1. parsing only: `for atoms in ase.io.iread(path): pass`
  2. scfdata ingest (parse + validate + write the contiguous HDF5)
Reports both, their ratio (goal <= 1.5) and peak RSS at N/5 and N (memory must not grow with N).

Run: python benchmarks/bench_ingest.py [--n 50000]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PARSE = """
import ase.io, resource, sys, time
t = time.perf_counter(); n = 0
for a in ase.io.iread(sys.argv[1]): n += 1
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
INGEST = """
import resource, sys, time
from scfdata.cli import main
t = time.perf_counter()
main(["ingest", sys.argv[1], "--keys", sys.argv[2], "-o", sys.argv[3]])
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
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


def run(code, *args):
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    t, rss = out.stdout.split()[-2:]
    return float(t), float(rss)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        keys = d / "keys.yaml"
        keys.write_text(json.dumps(KEYS))
        print(f"{'configs':>8} {'MiB':>6} {'iread s':>8} {'ingest s':>9} {'ratio':>6} {'iread RSS':>10} "
              f"{'ingest RSS':>11}")
        for n in (args.n // 5, args.n):
            src = d / f"w{n}.extxyz"
            generate(src, n)
            t_parse, rss_parse = run(PARSE, src)
            t_ingest, rss_ingest = run(INGEST, src, keys, d / f"w{n}.h5")
            print(f"{n:8d} {src.stat().st_size / 2**20:6.1f} {t_parse:8.2f} {t_ingest:9.2f} "
                  f"{t_ingest / t_parse:6.2f} {rss_parse:8.0f}MB {rss_ingest:9.0f}MB", flush=True)


if __name__ == "__main__":
    main()
