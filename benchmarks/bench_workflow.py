"""Workflow scaling: peak memory per job and wall time vs cores, on generated water clusters.

For each dataset size N the script writes N water clusters (1-8 TIP3P-like molecules, energies,
forces, charges) as extxyz, runs the real workflow (`snakemake`) with a fixed number of configs per
shard, and reads the peak RSS (max_rss, MB) of every job from the rules' `benchmark:` files. With a
fixed shard size the shard-level jobs (ingest, derive_*, statistics_shard) must not grow with N.
It then reruns the largest size with --cores 1, to compare with --cores 2 (shards run in parallel).
Jobs shorter than Snakemake's 1-s sampling interval report a too-small max_rss.

    python benchmarks/bench_workflow.py                      # small: 4,000 vs 40,000 configs (a few min)
    python benchmarks/bench_workflow.py --sizes 20000 200000 --configs-per-shard 10000   # the big one

Outputs go to benchmarks/out/workflow/ (git-ignored). Targets: esps, fields, dipoles, and the
molecule targets when --molecules is given.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out" / "workflow"

# TIP3P-like water: O at the origin, H at 0.9572 Å, HOH angle 104.52°
_ANG = np.deg2rad(104.52) / 2
_WATER = np.array([[0, 0, 0], [0.9572 * np.sin(_ANG), 0, 0.9572 * np.cos(_ANG)],
                   [-0.9572 * np.sin(_ANG), 0, 0.9572 * np.cos(_ANG)]])
_Q = np.array([-0.834, 0.417, 0.417])


def _rotations(n: int, rng) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def write_water_clusters(path: Path, n_configs: int, seed: int = 0) -> None:
    """n water clusters as extxyz (molecules on a 3 Å grid with jitter: no clashes)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * 3.0
    with open(path, "w") as fh:
        for i in range(n_configs):
            k = int(rng.integers(1, 9))
            centres = grid[rng.choice(len(grid), k, replace=False)] + rng.normal(0, 0.2, (k, 3))
            pos = (np.einsum("kij,aj->kai", _rotations(k, rng), _WATER) + centres[:, None, :]).reshape(-1, 3)
            forces = rng.normal(0, 0.5, pos.shape)
            forces -= forces.mean(axis=0)
            energy = -14.2 * k + rng.normal(0, 0.05 * k)
            sym = ["O", "H", "H"] * k
            q = np.tile(_Q, k)
            fh.write(f"{3 * k}\n")
            fh.write('Properties=species:S:1:pos:R:3:forces:R:3:REF_charges:R:1 '
                     f'energy={energy:.8f} total_charge=0.0 config_type=water_{k} pbc="F F F"\n')
            rows = np.column_stack([pos, forces, q])
            fh.write("".join(f"{s} " + " ".join(f"{v:.6f}" for v in r) + "\n" for s, r in zip(sym, rows)))
            if (i + 1) % 50000 == 0:
                print(f"  wrote {i + 1} configs", flush=True)


def _config(data: Path, n_shards: int, molecules: bool) -> dict:
    ref = {t: {"enabled": t in ("esps", "fields", "dipoles") or molecules}
           for t in ("molecules", "esps", "fields", "dipoles", "molecular_forces", "cluster_virial")}
    return {
        "shards": n_shards,
        "datasets": {"bench": {
            "inputs": [str(data)],
            "keys": {"info_keys": {"energy": "energy", "total_charge": "total_charge"},
                     "arrays_keys": {"forces": "forces", "charges": "REF_charges"}},
            "split": {"valid_fraction": 0.1, "test_fraction": 0.1, "seed": 0},
        }},
        "reference": ref,
    }


def run_workflow(workdir: Path, cores: int) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", str(cores), "--quiet", "all"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed in {workdir}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def peak_rss(workdir: Path) -> dict[str, float]:
    """Rule -> largest max_rss (MB) over its jobs, from the benchmark files."""
    out: dict[str, float] = defaultdict(float)
    for tsv in (workdir / "results" / "bench" / "benchmarks").rglob("*.tsv"):
        rule = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        with open(tsv) as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                try:
                    out[rule] = max(out[rule], float(row["max_rss"]))
                except (KeyError, ValueError):
                    pass
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 40000])
    ap.add_argument("--configs-per-shard", type=int, default=4000)
    ap.add_argument("--molecules", action="store_true", help="also derive molecules, molecular forces, virials")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and results")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    rss, walls = {}, {}
    for n in args.sizes:
        work = OUT / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        data = work / "water_clusters.extxyz"
        t0 = time.perf_counter()
        write_water_clusters(data, n)
        print(f"N={n}: generated {data.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s", flush=True)
        shards = max(1, n // args.configs_per_shard)
        (work / "config.yaml").write_text(yaml.safe_dump(_config(data, shards, args.molecules)))
        walls[(n, 2)] = run_workflow(work, cores=2)
        rss[n] = peak_rss(work)
        print(f"N={n}: {shards} shards, --cores 2: {walls[(n, 2)]:.1f} s", flush=True)

    n0 = args.sizes[-1]  # the largest: several shards, so cores can work in parallel
    work = OUT / f"n{n0}"
    shutil.rmtree(work / "results", ignore_errors=True)
    shutil.rmtree(work / ".snakemake", ignore_errors=True)
    walls[(n0, 1)] = run_workflow(work, cores=1)

    print("\npeak RSS per job (MB, max over the rule's jobs), configs per shard fixed at "
          f"{args.configs_per_shard}")
    rules = sorted({r for d in rss.values() for r in d})
    head = ["rule"] + [f"N={n}" for n in args.sizes] + [f"ratio {args.sizes[-1]}/{args.sizes[0]}"]
    print("  ".join(f"{h:>22}" for h in head))
    for r in rules:
        vals = [rss[n].get(r, float("nan")) for n in args.sizes]
        print("  ".join(f"{c:>22}" for c in [r] + [f"{v:.0f}" for v in vals] + [f"{vals[-1] / vals[0]:.2f}"]))
    print(f"\nwall time N={n0}: --cores 1 {walls[(n0, 1)]:.1f} s, --cores 2 {walls[(n0, 2)]:.1f} s, "
          f"speed-up {walls[(n0, 1)] / walls[(n0, 2)]:.2f}")
    if not args.keep:
        for n in args.sizes:
            shutil.rmtree(OUT / f"n{n}", ignore_errors=True)


if __name__ == "__main__":
    main()
