"""The whole workflow on generated water clusters: configs per second per core, CPU-seconds and peak memory per
rule, with quality flags on or off.

For each dataset size N the script writes N water clusters (1-8 TIP3P-like molecules, energies, forces,
charges) as extxyz, runs the real workflow (`snakemake`, every derived target unless --targets says
otherwise) with a fixed number of configs per shard (or, with --shards, each given shard count), and reports:

- configs per second per core: N / (wall time x cores), the wall time of the whole `snakemake` process
  (start-up, DAG, every job) on --cores cores; and N / CPU-seconds of the whole run (Snakemake and every
  job), which other work on the machine does not inflate;
- per rule, from the rules' `benchmark:` files: jobs, CPU-seconds and wall-seconds summed over the jobs,
  and the peak RSS of one job (MB, the largest over the rule's jobs); with a fixed shard size the shard-level jobs
  (ingest, derive_*, statistics_shard) must not grow with N. Jobs shorter than Snakemake's sampling
  interval report too small a max_rss and cpu_time (or none);
- the CPU-seconds inside jobs against wall x cores (the rest: Snakemake itself and idle cores);
- with --quality on off: the same workflow with quality flags on and off, and the difference (the cost
  of flagging per config). `off` writes `quality: {enabled: false}` into the config; `on` leaves the
  quality block at its defaults (checkouts without `quality.enabled` in the config schema run `on` only);
- unless --no-one-core: the largest size again with --cores 1 (the speed-up of a second core).

    python benchmarks/bench_workflow.py                      # small: 4,000 vs 40,000 configs (a few min)
    python benchmarks/bench_workflow.py --sizes 200000 --no-one-core                  # 10 shards of 20,000
    python benchmarks/bench_workflow.py --sizes 20000 200000 --configs-per-shard 10000   # memory per shard
    python benchmarks/bench_workflow.py --sizes 200000 --quality on off --no-one-core    # flagging cost
    python benchmarks/bench_workflow.py --sizes 200000 --shards 2 10 --no-one-core      # per-job overhead

Outputs go to benchmarks/out/workflow/ (git-ignored); --keep keeps the generated data and results (a kept
data file of the same size is reused by the next run).
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
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
SCHEMA = REPO / "workflows" / "schemas" / "config.schema.yaml"
ALL_TARGETS = ("molecules", "esps", "fields", "dipoles", "molecular_forces", "cluster_virial")

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


def quality_switch_known() -> bool:
    """Does this checkout's config schema know `quality.enabled` (the switch for --quality off)?"""
    schema = yaml.safe_load(SCHEMA.read_text())
    return "enabled" in schema["properties"]["quality"].get("properties", {})


def make_config(data: Path, n_shards: int, targets: list[str], quality: str) -> dict:
    cfg = {
        "shards": n_shards,
        "datasets": {"bench": {
            "inputs": [str(data)],
            "keys": {"info_keys": {"energy": "energy", "total_charge": "total_charge"},
                     "arrays_keys": {"forces": "forces", "charges": "REF_charges"}},
            "split": {"valid_fraction": 0.1, "test_fraction": 0.1, "seed": 0},
        }},
        "reference": {t: {"enabled": t in targets} for t in ALL_TARGETS},
    }
    if quality == "off":
        cfg["quality"] = {"enabled": False}
    return cfg


def run_workflow(workdir: Path, cores: int) -> tuple[float, float]:
    """(wall time, CPU time) in s of one clean `snakemake` run in ``workdir`` (earlier results removed); the
    CPU time is Snakemake's and every job's, user + system (the rusage of the waited-for process tree)."""
    shutil.rmtree(workdir / "results", ignore_errors=True)
    shutil.rmtree(workdir / ".snakemake", ignore_errors=True)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", str(cores), "--quiet", "all"]
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed in {workdir}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def rule_usage(workdir: Path) -> dict[str, dict[str, float]]:
    """Rule -> {jobs, cpu_s (summed over its jobs), wall_s (summed), max_rss (MB, largest job)}, from the
    benchmark files (results/<ds>/benchmarks/<rule>.tsv or <rule>/<shard>.tsv)."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "cpu_s": 0.0, "wall_s": 0.0, "max_rss": 0.0})
    for tsv in sorted((workdir / "results").glob("*/benchmarks/**/*.tsv")):
        rule = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        with open(tsv) as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                u = out[rule]
                u["jobs"] += 1
                for key, col in (("cpu_s", "cpu_time"), ("wall_s", "s")):
                    u[key] += _number(row.get(col))
                u["max_rss"] = max(u["max_rss"], _number(row.get("max_rss")))
    return dict(out)


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # "NA" for a job too short to sample
        return 0.0


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def _cell(u: dict | None) -> str:
    return "-" if u is None else f"{u['jobs']:.0f} {u['cpu_s']:.1f} {u['wall_s']:.1f} / {u['max_rss']:.0f}"


def report(runs: dict, cores: int) -> None:
    """Print the throughput per run, then per rule CPU-s and peak RSS of every run side by side."""
    print(f"\nthroughput (--cores {cores}; the 1-minute load average before each run: other work on the machine)")
    rows = []
    for (n, quality, _), r in runs.items():
        cpu = sum(u["cpu_s"] for u in r["usage"].values())
        rows.append([f"N={n} quality {quality}", f"{r['shards']}", f"{r['wall']:.1f}",
                     f"{n / (r['wall'] * cores):.0f}", f"{r['cpu']:.1f}", f"{n / r['cpu']:.0f}", f"{cpu:.1f}",
                     f"{100 * cpu / (r['wall'] * cores):.0f}%", f"{r['load']:.2f}"])
    _table(["run", "shards", "wall s", "configs/s/core", "CPU-s", "configs/CPU-s", "CPU-s in jobs",
            "of wall x cores", "load before"], rows)
    print("(configs/s/core = N / (wall x cores); configs/CPU-s = N / all CPU time of the run, Snakemake included:\n"
          " what a core achieves when no other work shares the machine)")

    names = [f"N={n} {q} {k}sh" for n, q, k in runs]
    rules = sorted({rule for r in runs.values() for rule in r["usage"]})
    print("\nper rule: jobs, CPU-s and wall-s summed over the jobs / peak RSS of one job (MB); the CPU-s of jobs "
          "shorter than\nSnakemake's first sample are missing (their wall-s are exact, but include waiting for a core)")
    rows = [[rule] + [_cell(r["usage"].get(rule)) for r in runs.values()] for rule in rules]
    _table(["rule"] + names, rows)

    for n, k in sorted({(n, k) for n, _, k in runs}):
        if (n, "on", k) in runs and (n, "off", k) in runs:
            on, off = runs[(n, "on", k)], runs[(n, "off", k)]
            extra = on["cpu"] - off["cpu"]
            print(f"\nquality at N={n}, {k} shards: wall {on['wall']:.1f} s on vs {off['wall']:.1f} s off "
                  f"({on['wall'] - off['wall']:+.1f} s); CPU {on['cpu']:.1f} s vs {off['cpu']:.1f} s: {extra:+.1f} s, "
                  f"{1e6 * extra / n:+.0f} µs per config (the rules' own figures: the table above)")


def workdir(n: int, shards: int, quality: str) -> Path:
    return OUT / f"n{n}_s{shards}_quality_{quality}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 40000])
    ap.add_argument("--configs-per-shard", type=int, default=20000,
                    help="shard size (default 20,000: on one machine, smaller shards cost more in per-job start-up "
                         "than they gain; docs/workflow.md)")
    ap.add_argument("--shards", type=int, nargs="+", metavar="N",
                    help="run each size with each of these shard counts instead of --configs-per-shard")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--targets", nargs="+", default=list(ALL_TARGETS), choices=ALL_TARGETS,
                    help="derived targets to enable (default: all)")
    ap.add_argument("--quality", nargs="+", default=["on"], choices=["on", "off"],
                    help="quality flags on (the default settings), off (quality: {enabled: false}), or both")
    ap.add_argument("--no-one-core", action="store_true", help="skip the rerun of the largest size with --cores 1")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and results")
    args = ap.parse_args()
    if "off" in args.quality and not quality_switch_known():
        sys.exit(f"--quality off: {SCHEMA.relative_to(REPO)} has no quality.enabled in this checkout (the quality "
                 "flags branch adds it); run with --quality on")
    OUT.mkdir(parents=True, exist_ok=True)

    runs: dict[tuple[int, str, int], dict] = {}
    for n in args.sizes:
        data = OUT / f"water_clusters_{n}.extxyz"
        if not data.exists():
            t0 = time.perf_counter()
            write_water_clusters(data.with_suffix(".tmp"), n)
            data.with_suffix(".tmp").rename(data)
            print(f"N={n}: generated {data.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        for shards in args.shards or [max(1, n // args.configs_per_shard)]:
            for quality in args.quality:
                work = workdir(n, shards, quality)
                work.mkdir(parents=True, exist_ok=True)
                (work / "config.yaml").write_text(yaml.safe_dump(make_config(data, shards, args.targets, quality)))
                load = os.getloadavg()[0]
                wall, cpu = run_workflow(work, cores=args.cores)
                runs[(n, quality, shards)] = {"wall": wall, "cpu": cpu, "shards": shards, "usage": rule_usage(work),
                                              "load": load}
                print(f"N={n} quality {quality}: {shards} shards, --cores {args.cores}: {wall:.1f} s, "
                      f"{n / (wall * args.cores):.0f} configs/s/core, {cpu:.1f} CPU-s (load average before: "
                      f"{load:.2f})", flush=True)

    report(runs, args.cores)
    if not args.no_one_core and args.cores > 1:
        n0, quality, shards = next(reversed(runs))
        one, _ = run_workflow(workdir(n0, shards, quality), cores=1)
        two = runs[(n0, quality, shards)]["wall"]
        print(f"\nwall time N={n0}: --cores 1 {one:.1f} s ({n0 / one:.0f} configs/s/core), --cores {args.cores} "
              f"{two:.1f} s, speed-up {one / two:.2f}")
    if not args.keep:
        for n in args.sizes:
            (OUT / f"water_clusters_{n}.extxyz").unlink(missing_ok=True)
        for n, quality, shards in runs:
            shutil.rmtree(workdir(n, shards, quality), ignore_errors=True)


if __name__ == "__main__":
    main()
