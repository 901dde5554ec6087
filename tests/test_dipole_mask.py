"""The dipole component mask that ingest writes when the input gives no `config_dipole_weight`:
FFF (1,1,1), TTF (0,0,1), TTT (0,0,0) — a periodic DFT dipole is never a training target along a
periodic direction. Through `scfdata ingest`, the dipole loss, and a real snakemake run to the final file.
"""

from __future__ import annotations

import json

import ase.io
import numpy as np
import periodic_molecules as pm
import pytest

from scfdata.cli import main
from scfdata.h5io import ScfdataFile


def _frames():
    """The cubic, triclinic, slab and cluster configs, then a cubic one with an explicit weight and a slab
    without a dipole; with the masks expected."""
    frames, _ = pm.build()
    explicit = frames[0].copy()
    explicit.info["config_dipole_weight"] = [1.0, 0.0, 1.0]
    absent = frames[2].copy()
    del absent.info["mu"]
    expect = [pm.DIPOLE_MASK[tuple(map(bool, a.pbc))] for a in frames] + [[1, 0, 1], [0, 0, 0]]
    return frames + [explicit, absent], np.array(expect, dtype=bool)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    d = tmp_path_factory.mktemp("dipole_mask")
    frames, expect = _frames()
    ase.io.write(d / "in.extxyz", frames, format="extxyz")
    (d / "keys.yaml").write_text(json.dumps(pm.KEYS))
    out = d / "base.h5"
    assert main(["ingest", str(d / "in.extxyz"), "--keys", str(d / "keys.yaml"), "-o", str(out), "--on-error",
                 "raise", "--settings", json.dumps({"validation": {"max_volume_per_atom": None}})]) == 0
    return out, expect


def test_ingest_masks_the_dipole_by_boundary_class(ingested):
    out, expect = ingested
    with ScfdataFile(out) as f:
        assert f.read("pbc").tolist()[:4] == [[True] * 3, [True] * 3, [True, True, False], [False] * 3]
        np.testing.assert_array_equal(f.mask("dipole"), expect)
        # the DFT values are kept as they are (masked, not zeroed); the absent one is masked everywhere
        np.testing.assert_allclose(f.read("dipole")[:5], np.tile(pm.DFT_DIPOLE, (5, 1)))
        np.testing.assert_array_equal(f.read("dipole_weight")[:5], expect[:5].astype(float))


def test_dipole_loss_ignores_periodic_components(ingested):
    """An error on masked components costs nothing; the same error on the open ones does."""
    import torch

    from scfdata.data import H5Dataset
    from scfdata.losses import WeightedLoss

    out, expect = ingested
    ref = H5Dataset(out).batch(np.arange(len(expect)))
    loss = WeightedLoss({"dipole": 1.0})
    mask = torch.as_tensor(expect)
    err_masked = torch.where(mask, 0.0, 5.0).double()
    assert float(loss(ref, {"dipole": ref["dipole"] + err_masked})) == 0.0
    assert float(loss(ref, {"dipole": ref["dipole"] + 2.0})) == pytest.approx(4.0, rel=1e-12)


@pytest.mark.slow
def test_workflow_final_file_masks_dft_and_derived_dipoles_by_boundary(periodic_workflow_run):
    path, _, frames = periodic_workflow_run
    with ScfdataFile(path) as f:
        order = f.read("source")[:, 1]
        expect = np.array([pm.DIPOLE_MASK[tuple(map(bool, frames[k].pbc))] for k in order], dtype=bool)
        assert {tuple(r) for r in expect.astype(int).tolist()} == {(0, 0, 0), (0, 0, 1), (1, 1, 1)}
        np.testing.assert_array_equal(f.mask("dipole"), expect)
        np.testing.assert_array_equal(f.mask("dipole_from_multipoles"), expect)
        b = f.read_batch(np.arange(f.n_configs))
        np.testing.assert_array_equal(b["dipole_mask"], expect)
