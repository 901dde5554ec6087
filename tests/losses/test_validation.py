"""Bad predictions, batches and options are one-line errors that say what was expected (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_numpy_batch, to_torch

from scfdata.losses import LOSSES, WeightedLoss, check_schedule
from scfdata.losses.batch import LossInputError
from scfdata.losses.support import DataSummary


@pytest.fixture
def batch():
    ref, pred = make_numpy_batch(0)
    return to_torch(ref), to_torch(pred)


@pytest.mark.parametrize("bad_shape", ["column", "vector", "transposed"])
def test_forces_of_the_wrong_shape_are_refused(batch, bad_shape):
    ref, pred = batch
    N = int(ref["ptr"][-1])
    f = pred["forces"]
    pred["forces"] = {"column": f[:, :1], "vector": f[0], "transposed": f.t().contiguous()}[bad_shape]
    for name in ("forces", "molecular_forces", "cluster_virial"):
        with pytest.raises(LossInputError) as info:
            LOSSES[name].fn(ref, pred)
        assert str(info.value) == (f"pred['forces']: expected shape ({N}, 3) (N={N} atoms × 3), "
                                   f"got {tuple(pred['forces'].shape)}")


@pytest.mark.parametrize("name,key,shape", [("dipole", "dipole", lambda B: (3, B)),
                                            ("energy_per_atom", "energy", lambda B: (B, 2)),
                                            ("stress", "stress", lambda B: (B, 3)),
                                            ("esps", "esps", lambda B: (1,))])
def test_config_and_atom_outputs_of_the_wrong_shape(batch, name, key, shape):
    ref, pred = batch
    B = len(ref["ptr"]) - 1
    pred[key] = torch.zeros(shape(B), dtype=torch.float64)
    with pytest.raises(LossInputError, match=rf"{key}.*expected shape .* got \({', '.join(map(str, shape(B)))}"):
        WeightedLoss({name: 1.0})(ref, pred)


def test_numpy_predictions_are_refused_with_the_fix(batch):
    ref, pred = batch
    pred["forces"] = pred["forces"].numpy()
    with pytest.raises(LossInputError, match=r"pred\['forces'\] must be a torch.Tensor, got ndarray: convert "
                                             r"it with torch.from_numpy"):
        WeightedLoss({"forces": 1.0})(ref, pred)


def test_numpy_reference_is_refused(batch):
    ref, pred = batch
    ref["energy"] = ref["energy"].numpy()
    with pytest.raises(LossInputError, match=r"ref\['energy'\] must be a torch.Tensor, got ndarray"):
        LOSSES["energy_per_atom"].fn(ref, pred)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_predictions_are_refused(batch, dtype):
    ref, pred = batch
    pred["forces"] = pred["forces"].to(dtype)
    with pytest.raises(LossInputError, match=rf"pred\['forces'\] has dtype {dtype}; the losses need float32 "
                                             "or float64"):
        WeightedLoss({"forces": 1.0})(ref, pred)


def test_batch_inconsistent_with_ptr(batch):
    ref, pred = batch
    ref["batch"] = ref["batch"][:-1]
    with pytest.raises(LossInputError, match=r"ref\['batch'\]: expected shape \(\d+,\) \(one config index per "
                                             r"atom, N = ptr\[-1\]"):
        WeightedLoss({"forces": 1.0})(ref, pred)


def test_modifier_of_the_wrong_shape(batch):
    ref, pred = batch
    pred["loss_weight_modifier"] = torch.ones(2, dtype=torch.float64)
    with pytest.raises(LossInputError, match=r"pred\['loss_weight_modifier'\]: expected shape \(7,\)"):
        WeightedLoss({"forces": 1.0})(ref, pred)


@pytest.mark.parametrize("value,expected", [(-1, "an integer ≥ 0"), ("abc", "an integer ≥ 0"),
                                            (1.5, "an integer ≥ 0"), (True, "an integer ≥ 0")])
def test_max_l_values(batch, value, expected):
    msg = f"loss 'atomic_multipoles': option max_l must be {expected}, got {value!r} ({type(value).__name__})"
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        WeightedLoss({"atomic_multipoles": {"weight": 1.0, "max_l": value}})
    with pytest.raises(ValueError, match="option max_l must be"):
        LOSSES["atomic_multipoles"].fn(*batch, max_l=value)
    cfg = {"train_schedule": [{"name": "s", "loss": {"atomic_multipoles": {"weight": 1.0, "max_l": value}}}]}
    problems = check_schedule(cfg, DataSummary(5, {"atomic_multipoles": 5}))
    assert problems == [f"stage 's': {msg}"]


def test_max_l_zero_compares_the_charges_only(batch):
    ref, pred = batch
    got = LOSSES["atomic_multipoles"].fn(ref, pred, max_l=0).item()
    assert got > 0
    assert got == pytest.approx(LOSSES["atomic_multipoles"].fn(
        ref, {**pred, "density_coefficients": pred["density_coefficients"][:, :1]}).item(), rel=1e-12)


@pytest.mark.parametrize("loss,option,value", [("fourier_density", "form", "cubic"),
                                               ("fixedpoint_scf_stability", "beta", 0),
                                               ("fixedpoint_scf_stability", "smooth", "yes"),
                                               ("forces", "convention", "mace")])
def test_other_option_values(loss, option, value):
    with pytest.raises(ValueError, match=f"loss '{loss}': option {option} must be"):
        WeightedLoss({loss: {"weight": 1.0, option: value}})


def test_unknown_convention():
    with pytest.raises(ValueError, match=r"unknown loss convention 'mace-scf'; did you mean 'mace_scf'"):
        WeightedLoss({"forces": 1.0}, convention="mace-scf")


def test_options_of_functions_are_rejected_where_mace_scf_would_crash():
    """MACE_SCF calls a function loss with its options and fails; here the option is named unknown."""
    with pytest.raises(ValueError, match=r"loss 'esps': unknown option\(s\) 'form'"):
        WeightedLoss({"esps": {"weight": 1.0, "form": "poly"}})


def test_nan_free_in_float32(batch):
    ref, pred = batch
    p32 = {k: v.float() for k, v in pred.items()}
    out = WeightedLoss({"forces": 1.0, "energy_per_atom": 1.0})(ref, p32)
    assert out.dtype == torch.float32 and np.isfinite(out.item())
