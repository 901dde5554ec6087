"""Write MACE's own HDF5 layout (a foreign format): the second module that imports h5py.

Layout, as MACE's ``save_configurations_as_HDF5`` writes it and ``mace.data.HDF5Dataset`` reads it::

    /                       attrs drop_last=False
    /config_batch_0/config_j/atomic_numbers, positions, cell, pbc, weight, config_type, head
    /config_batch_0/config_j/properties/<name>        the value, or the string "None" when absent
    /config_batch_0/config_j/property_weights/<name>  the weight, 0 when absent

One ``config_batch_0`` group per file (``HDF5Dataset`` assumes every batch group of a file has the
same size), so a dataset is a directory of such files (MACE's ``train/train_<k>.h5``). The file is
written under a temporary name and renamed. Not supported: appending to an existing MACE file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from .export import MaceBlock
from .h5io import remove_stale_temporaries

_STR = h5py.string_dtype("utf-8")


class _Writer:
    """Creates datasets with the low-level API (a fixed dataspace and type per shape) for speed."""

    def __init__(self):
        self._space: dict[tuple, h5py.h5s.SpaceID] = {}
        self._types: dict[str, h5py.h5t.TypeID] = {}

    def _tid(self, dtype: np.dtype) -> h5py.h5t.TypeID:
        key = dtype.str
        if key not in self._types:
            self._types[key] = h5py.h5t.py_create(dtype, logical=True)
        return self._types[key]

    def _sid(self, shape: tuple) -> h5py.h5s.SpaceID:
        if shape not in self._space:
            self._space[shape] = h5py.h5s.create(h5py.h5s.SCALAR) if shape == () else h5py.h5s.create_simple(shape)
        return self._space[shape]

    def put(self, gid, name: bytes, value: np.ndarray) -> None:
        if value.dtype.kind in "US":
            ds = h5py.h5d.create(gid, name, h5py.h5t.py_create(_STR, logical=True), self._sid(()))
            ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(str(value), dtype=_STR))
            return
        value = np.require(value, requirements="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        ds = h5py.h5d.create(gid, name, self._tid(value.dtype), self._sid(value.shape))
        ds.write(h5py.h5s.ALL, h5py.h5s.ALL, value)


_NONE = np.array("None")


def write_mace_file(path: str | os.PathLike, blocks: Iterable[MaceBlock], *, drop_last: bool = False) -> Path:
    """Write blocks of configs as one MACE HDF5 file (configs numbered on across blocks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # a killed earlier writer's
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = _Writer()
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["drop_last"] = drop_last
            batch = h5.create_group("config_batch_0").id
            j = 0
            for blk in blocks:
                ptr = blk.atom_ptr
                props = [(k.encode(), *blk.properties[k], blk.present[k], blk.property_weights[k])
                         for k in blk.properties]
                for i in range(blk.n_configs):
                    a0, a1 = ptr[i], ptr[i + 1]
                    g = h5py.h5g.create(batch, f"config_{j}".encode())
                    w.put(g, b"atomic_numbers", blk.numbers[a0:a1])
                    w.put(g, b"positions", blk.positions[a0:a1])
                    w.put(g, b"cell", blk.cell[i])
                    w.put(g, b"pbc", blk.pbc[i])
                    w.put(g, b"weight", blk.weight[i : i + 1].reshape(()))
                    w.put(g, b"config_type", blk.config_type[i])
                    w.put(g, b"head", blk.head[i])
                    gp = h5py.h5g.create(g, b"properties")
                    gw = h5py.h5g.create(g, b"property_weights")
                    for name, values, vptr, pres, weights in props:
                        if not pres[i]:
                            w.put(gp, name, _NONE)
                        elif vptr is None:
                            w.put(gp, name, values[i])
                        else:
                            w.put(gp, name, values[vptr[i] : vptr[i + 1]])
                        w.put(gw, name, np.asarray(weights[i], dtype=np.float64))
                    j += 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
