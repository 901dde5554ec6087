"""configs/s of `scfdata export --format mace` against MACE's own `save_configurations_as_HDF5`.

The data: the real MACE_SCF water clusters (tests/data) with ESPs, repeated to N configs. MACE's
writer gets the same configs as `mace.data.utils.Configuration`s (building them is not timed). Without
mace-torch the reference is a straightforward h5py group-per-config writer.

    python benchmarks/bench_export.py [N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import DATA, MACE_SCF_KEYS  # noqa: E402

from scfdata.cli import main  # noqa: E402
from scfdata.export import mace_block  # noqa: E402
from scfdata.h5io import assemble, read_columns, write_columns  # noqa: E402


def build(d: Path, n: int) -> Path:
    (d / "keys.yaml").write_text(json.dumps(MACE_SCF_KEYS))
    base = d / "base.h5"
    main(["ingest", str(DATA / "mace_scf_water_clusters_40.xyz"), "--keys", str(d / "keys.yaml"), "-o", str(base)])
    main(["derive", "esps", str(base), "-o", str(d / "esps.h5")])
    one = assemble(d / "one.h5", [[base, d / "esps.h5"]])
    cols, _ = read_columns(one)
    big = cols.select(np.arange(n) % cols.n_configs)
    return write_columns(d / "train.h5", big)


def configurations(path):
    from mace.data.utils import Configuration

    blk = mace_block(read_columns(path)[0])
    out = []
    for i in range(blk.n_configs):
        a0, a1 = blk.atom_ptr[i], blk.atom_ptr[i + 1]
        props, weights = {}, {}
        for name, (v, ptr) in blk.properties.items():
            props[name] = (v[i] if ptr is None else v[ptr[i]:ptr[i + 1]]) if blk.present[name][i] else None
            weights[name] = blk.property_weights[name][i]
        out.append(Configuration(atomic_numbers=blk.numbers[a0:a1], positions=blk.positions[a0:a1],
                                 properties=props, property_weights=weights, cell=blk.cell[i],
                                 pbc=tuple(blk.pbc[i]), weight=blk.weight[i], config_type=str(blk.config_type[i])))
    return out


def plain_h5py(path, configs_path, out):
    blk = mace_block(read_columns(configs_path)[0])
    with h5py.File(out, "w") as h5:
        g0 = h5.create_group("config_batch_0")
        for i in range(blk.n_configs):
            a0, a1 = blk.atom_ptr[i], blk.atom_ptr[i + 1]
            g = g0.create_group(f"config_{i}")
            g["atomic_numbers"], g["positions"] = blk.numbers[a0:a1], blk.positions[a0:a1]
            g["cell"], g["pbc"], g["weight"] = blk.cell[i], blk.pbc[i], blk.weight[i]
            g["config_type"], g["head"] = str(blk.config_type[i]), "Default"
            p, w = g.create_group("properties"), g.create_group("property_weights")
            for name, (v, ptr) in blk.properties.items():
                p[name] = v[i] if ptr is None else v[ptr[i]:ptr[i + 1]]
                w[name] = blk.property_weights[name][i]


def main_bench(n: int) -> None:
    import logging

    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = build(d, n)
        rows = []
        t = time.perf_counter()
        main(["export", str(src), "--format", "mace", "-o", str(d / "ours"), "--no-statistics"])
        rows.append(("scfdata export --format mace", time.perf_counter() - t))
        t = time.perf_counter()
        main(["export", str(src), "--format", "extxyz", "-o", str(d / "ours.xyz")])
        rows.append(("scfdata export --format extxyz", time.perf_counter() - t))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from mace.data.utils import save_configurations_as_HDF5
            configs = configurations(src)
            t = time.perf_counter()
            with h5py.File(d / "mace.h5", "w") as h5:
                h5.attrs["drop_last"] = False
                save_configurations_as_HDF5(configs, 0, h5)
            rows.append(("mace save_configurations_as_HDF5", time.perf_counter() - t))
            ref = rows[-1][1]
        except ImportError:
            t = time.perf_counter()
            plain_h5py(d / "plain.h5", src, d / "plain.h5")
            rows.append(("plain h5py group-per-config (no mace)", time.perf_counter() - t))
            ref = rows[-1][1]
        print(f"{n} configs, {int(read_columns(src)[0].n_atoms.sum())} atoms")
        print(f"{'writer':42s} {'time s':>8s} {'configs/s':>10s} {'speed-up':>9s}")
        for name, dt in rows:
            print(f"{name:42s} {dt:8.2f} {n / dt:10.0f} {ref / dt:8.2f}x")


if __name__ == "__main__":
    main_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
