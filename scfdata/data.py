"""Training batches from scfdata files: a torch Dataset whose batches are a few gathers, not B reads.

``ref`` layout (what scfdata.losses reads): ``ptr`` (B+1), ``batch`` (atom -> config), ``weight``,
every field at its level, ``molecule`` made global within the batch with ``molecule_ptr`` and
``molecule_batch``, ``<field>_mask`` and ``<field>_weight``.

>>> ds = H5Dataset("results/water", split="train")
>>> ref = ds.batch([0, 5, 9])                        # one dict for three configs
>>> loader = DataLoader(ds, sampler=BatchSampler(RandomSampler(ds), 32, False), batch_size=None,
...                     num_workers=2)               # ds[list] -> one batched read per step
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .h5io import FormatError, ScfdataFile

_POINTERS = {"ptr", "batch", "molecule_ptr", "molecule_batch"}


def to_tensors(arrays: dict[str, np.ndarray], dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """numpy arrays -> tensors (floats in ``dtype``; strings dropped)."""
    out = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.dtype.kind in "USO":
            continue
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.to(dtype=dtype, device=device) if t.is_floating_point() else t.to(device=device)
    return out


class H5Dataset(torch.utils.data.Dataset):
    """An scfdata file as a torch Dataset. ``path`` is a file, or a results directory with ``split``.

    A split file of a results directory is read only when it belongs to the directory's published set
    (its split id is the manifest's), so train and test can never come from two runs. The file is
    opened lazily in each process, so the dataset works in a DataLoader with workers; every process
    reads the very file the dataset was created on: when the path names another file by then (a new
    set was published), the reopen is refused instead of reading other data.
    """

    def __init__(self, path: str | os.PathLike, split: str | None = None, dtype: torch.dtype = torch.float64):
        path = Path(path)
        if path.is_dir():
            path = path / f"{split or 'train'}.h5"
        elif split is not None:
            raise ValueError(f"split={split!r} needs a results directory, got the file {path}")
        self.path, self.dtype = path, dtype
        with ScfdataFile(path) as f:
            self._n = f.n_configs
            self._identity = f.identity
        self._file: ScfdataFile | None = None
        self._pid = os.getpid()

    @property
    def file(self) -> ScfdataFile:
        if self._file is None or self._pid != os.getpid():  # first use in this process (a forked worker too)
            self._file, self._pid = None, os.getpid()
            f = ScfdataFile(self.path)
            if f.identity != self._identity:
                f.close()
                raise FormatError(
                    f"{self.path}: is not the file this dataset was created on (another file was written at this "
                    "path since, e.g. a new run published its results); create the dataset again to read the "
                    "new file"
                )
            self._file = f
        return self._file

    def __getstate__(self):
        return {**self.__dict__, "_file": None}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        """``ds[i]`` (an int, numpy integer or 0-d tensor/array) or ``ds[indices]`` (a sequence, 1-d
        array or tensor): a ``ref`` dict. Negative indices count from the end, as for a sequence.
        Not supported: slices and boolean masks."""
        if isinstance(index, (torch.Tensor, np.ndarray)) and index.ndim == 0:
            index = index.item()
        if isinstance(index, (list, tuple, np.ndarray, torch.Tensor)):
            return self.batch(index)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"H5Dataset index must be an integer or a sequence of integers, got "
                            f"{type(index).__name__} ({index!r})")
        return self.batch([int(index)])

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """One ``ref`` dict for many configs (one gather per stored array); negative indices wrap."""
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices)
        if idx.size and (idx.dtype.kind not in "iu" or idx.ndim != 1):
            raise TypeError(f"H5Dataset indices must be a 1-d sequence of integers, got dtype {idx.dtype} "
                            f"with shape {idx.shape}")
        idx = idx.astype(np.int64).reshape(-1)
        bad = (idx < -self._n) | (idx >= self._n)
        if bad.any():
            raise IndexError(f"index {int(idx[bad][0])} out of range for {self.path} with {self._n} configs "
                             f"(valid: {-self._n} .. {self._n - 1})")
        return to_tensors(self.file.read_batch(np.where(idx < 0, idx + self._n, idx)), self.dtype)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate ``ds[i]`` dicts into one batch (offsets for ``ptr``, ``batch`` and ``molecule``)."""
    if not items:
        raise ValueError("collate needs at least one item")
    n_cfg = torch.tensor([len(it["ptr"]) - 1 for it in items])
    n_at = torch.stack([it["ptr"][-1] for it in items])
    n_mol = torch.stack([it["molecule_ptr"][-1] for it in items])
    out: dict[str, torch.Tensor] = {}
    for key in items[0]:
        if key in _POINTERS:
            continue
        out[key] = torch.cat([it[key] for it in items])
    at_counts = torch.cat([torch.diff(it["ptr"]) for it in items])
    mol_counts = torch.cat([torch.diff(it["molecule_ptr"]) for it in items])
    zero = torch.zeros(1, dtype=torch.long)
    out["ptr"] = torch.cat([zero, torch.cumsum(at_counts, 0)])
    out["molecule_ptr"] = torch.cat([zero, torch.cumsum(mol_counts, 0)])
    b = torch.arange(int(n_cfg.sum()))
    out["batch"] = torch.repeat_interleave(b, at_counts)
    out["molecule_batch"] = torch.repeat_interleave(b, mol_counts)
    if "molecule" in out:
        item_mol_offset = torch.cumsum(torch.cat([zero, n_mol[:-1]]), 0)
        out["molecule"] = out["molecule"] + torch.repeat_interleave(item_mol_offset, n_at)
    return out
