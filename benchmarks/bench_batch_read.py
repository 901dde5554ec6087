"""Random batches of 32 configs: scfdata's columnar file vs MACE's group-per-config HDF5 layout.

Both files hold the same 20,000 water clusters (numbers, positions, cell, pbc, energy, forces,
4-column multipoles, dipole, weights). MACE's layout (config_batch_0/config_j/{atomic_numbers, positions,
cell, pbc, weight, config_type, properties/*, property_weights/*}) is written here with h5py the way
MACE's save_configurations_as_HDF5 lays it out. Reported: mean time per batch and the ratio (goal >= 20x).

Run: python benchmarks/bench_batch_read.py [--n 20000] [--batches 200]
"""

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from scfdata.columns import Columns
from scfdata.data import H5Dataset
from scfdata.h5io import ScfdataFile, write_columns


def make(n, seed=0):
    rng = np.random.default_rng(seed)
    n_at = 3 * rng.integers(2, 9, n)
    N = int(n_at.sum())
    return Columns(
        n_atoms=n_at,
        configs={"energy": rng.normal(size=n), "dipole": rng.normal(size=(n, 3)), "weight": np.ones(n),
                 "pbc": np.zeros((n, 3), bool), "cell": np.zeros((n, 3, 3)),
                 "config_type": np.array(["water"] * n), "energy_weight": np.ones(n),
                 "dipole_weight": np.ones((n, 3))},
        atoms={"numbers": rng.integers(1, 9, N), "positions": rng.normal(size=(N, 3)),
               "forces": rng.normal(size=(N, 3)), "atomic_multipoles": rng.normal(size=(N, 4))},
        masks={"energy": np.ones(n, bool), "dipole": np.ones((n, 3), bool), "forces": np.ones(n, bool),
               "atomic_multipoles": np.ones(n, bool)},
    )


def write_mace_layout(path, cols):
    ptr = cols.atom_ptr
    with h5py.File(path, "w") as h5:
        g = h5.create_group("config_batch_0")
        for i in range(cols.n_configs):
            c = g.create_group(f"config_{i}")
            s = slice(ptr[i], ptr[i + 1])
            c["atomic_numbers"] = cols.atoms["numbers"][s]
            c["positions"] = cols.atoms["positions"][s]
            c["cell"] = cols.configs["cell"][i]
            c["pbc"] = cols.configs["pbc"][i]
            c["weight"] = 1.0
            c["config_type"] = "water"
            c["head"] = "Default"
            p = c.create_group("properties")
            p["energy"] = cols.configs["energy"][i]
            p["forces"] = cols.atoms["forces"][s]
            p["dipole"] = cols.configs["dipole"][i]
            p["atomic_multipoles"] = cols.atoms["atomic_multipoles"][s]
            w = c.create_group("property_weights")
            for k in ("energy", "forces", "dipole", "atomic_multipoles"):
                w[k] = 1.0


def read_mace_batch(h5, idx):
    out = []
    for i in idx:
        c = h5[f"config_batch_0/config_{i}"]
        d = {k: c[k][()] for k in ("atomic_numbers", "positions", "cell", "pbc", "weight")}
        d.update({f"p_{k}": v[()] for k, v in c["properties"].items()})
        d.update({f"w_{k}": v[()] for k, v in c["property_weights"].items()})
        out.append(d)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args()
    cols = make(args.n)
    rng = np.random.default_rng(1)
    batches = [rng.choice(args.n, 32, replace=False) for _ in range(args.batches)]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t = time.perf_counter()
        write_columns(d / "s.h5", cols)
        t_write_s = time.perf_counter() - t
        t = time.perf_counter()
        write_mace_layout(d / "m.h5", cols)
        t_write_m = time.perf_counter() - t
        with ScfdataFile(d / "s.h5") as f:
            f.read_batch(batches[0])
            t = time.perf_counter()
            for b in batches:
                f.read_batch(b)
            t_s = (time.perf_counter() - t) / len(batches)
        ds = H5Dataset(d / "s.h5")
        ds.batch(batches[0])
        t = time.perf_counter()
        for b in batches:
            ds.batch(b)
        t_t = (time.perf_counter() - t) / len(batches)
        with h5py.File(d / "m.h5", "r") as h5:
            t = time.perf_counter()
            for b in batches:
                read_mace_batch(h5, b)
            t_m = (time.perf_counter() - t) / len(batches)
    print(f"{args.n} configs, {args.batches} random batches of 32")
    print(f"write: scfdata {t_write_s:.2f} s, MACE layout {t_write_m:.2f} s ({t_write_m / t_write_s:.0f}x)")
    print(f"scfdata read_batch (numpy)   {t_s * 1e3:8.3f} ms/batch")
    print(f"scfdata H5Dataset.batch      {t_t * 1e3:8.3f} ms/batch (torch tensors)")
    print(f"MACE group-per-config layout {t_m * 1e3:8.3f} ms/batch")
    print(f"ratio MACE / scfdata: {t_m / t_s:.0f}x (numpy), {t_m / t_t:.0f}x (torch)")


if __name__ == "__main__":
    main()
