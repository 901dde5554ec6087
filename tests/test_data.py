"""scfdata.data: batches equal the per-config reads; collate equals batch; works in a DataLoader."""

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from scfdata.columns import Columns
from scfdata.data import H5Dataset, collate
from scfdata.h5io import write_columns


def make_file(path, n=23, seed=0):
    rng = np.random.default_rng(seed)
    n_at = rng.integers(1, 7, n)
    n_mol = np.minimum(rng.integers(1, 4, n), n_at)
    N, M = int(n_at.sum()), int(n_mol.sum())
    molecule = np.concatenate([np.arange(a) % m for a, m in zip(n_at, n_mol)])
    cols = Columns(
        n_atoms=n_at, n_molecules=n_mol,
        configs={"energy": rng.normal(size=n), "weight": rng.random(n), "pbc": np.zeros((n, 3), bool),
                 "cell": np.zeros((n, 3, 3)), "config_type": np.array(["a"] * n), "dipole": rng.normal(size=(n, 3)),
                 "dipole_weight": np.ones((n, 3))},
        atoms={"numbers": rng.integers(1, 9, N), "positions": rng.normal(size=(N, 3)),
               "forces": rng.normal(size=(N, 3)), "molecule": molecule},
        molecules={"molecular_forces": rng.normal(size=(M, 3))},
        masks={"energy": rng.random(n) > 0.2, "dipole": rng.random((n, 3)) > 0.5, "forces": np.ones(n, bool)},
    )
    write_columns(path, cols)
    return cols


def test_batch_equals_collate_of_items(tmp_path):
    make_file(tmp_path / "train.h5")
    ds = H5Dataset(tmp_path, split="train")
    idx = [5, 0, 22, 7]
    a = ds.batch(idx)
    b = collate([ds[i] for i in idx])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert a["molecule"].max() == a["molecule_ptr"][-1] - 1
    assert torch.equal(a["molecule_batch"][a["molecule"]], a["batch"])  # molecule and atom agree on config


def test_dataloader_with_workers_reads_every_config_once(tmp_path):
    cols = make_file(tmp_path / "d.h5", n=40)
    ds = H5Dataset(tmp_path / "d.h5")
    loader = DataLoader(ds, sampler=BatchSampler(SequentialSampler(ds), 8, False), batch_size=None,
                        num_workers=2)
    energies = torch.cat([b["energy"] for b in loader])
    np.testing.assert_array_equal(energies.numpy(), cols.configs["energy"])


def test_scalar_indices_of_every_integer_kind_and_negative_wrap(tmp_path):
    cols = make_file(tmp_path / "d.h5", n=9)
    ds = H5Dataset(tmp_path / "d.h5")
    ref = ds[4]
    for index in (np.int64(4), np.int32(4), torch.tensor(4), np.array(4), -5, np.int64(-5), torch.tensor(-5)):
        got = ds[index]
        assert got.keys() == ref.keys()
        for k in ref:
            assert torch.equal(got[k], ref[k]), (index, k)
    assert ds[-1]["energy"].item() == cols.configs["energy"][8]
    b = ds[torch.tensor([-1, 0, -9])]
    np.testing.assert_array_equal(b["energy"].numpy(), cols.configs["energy"][[8, 0, 0]])
    for bad in (9, -10, [0, 9], torch.tensor(-10)):
        with pytest.raises(IndexError, match=r"out of range .* 9 configs \(valid: -9 \.\. 8\)"):
            ds[bad]
    with pytest.raises(TypeError, match="integer"):
        ds[1.5]


def test_a_worker_refuses_a_file_renamed_over_the_path_since_the_dataset_was_created(tmp_path):
    """A DataLoader worker reopens the path: when a new run has published another file there, it must
    not read it as if it were the dataset's."""
    import os
    import pickle

    from scfdata.h5io import FormatError

    make_file(tmp_path / "d.h5", n=10, seed=0)
    ds = H5Dataset(tmp_path / "d.h5")
    make_file(tmp_path / "new.h5", n=10, seed=1)
    os.replace(tmp_path / "new.h5", tmp_path / "d.h5")
    worker_copy = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets
    with pytest.raises(FormatError, match="is not the file this dataset was created on"):
        worker_copy.batch([0])
    with pytest.raises(FormatError, match="is not the file this dataset was created on"):
        ds[0]
    assert len(H5Dataset(tmp_path / "d.h5")) == 10  # a new dataset reads the new file
