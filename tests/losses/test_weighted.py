"""WeightedLoss: the weighted sum, breakdown, log line, validation of the stage loss dict."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from conftest import data_losses, make_numpy_batch, to_torch

from scfdata.losses import LOSSES, WeightedLoss
from scfdata.plot_losses import parse_breakdown


def test_sum_of_weighted_terms_and_breakdown():
    ref, pred = make_numpy_batch(0)
    weights = {name: 0.5 + i for i, name in enumerate(data_losses())}
    loss_fn = WeightedLoss(weights)
    r, p = to_torch(ref), to_torch(pred, requires_grad=True)
    total = loss_fn(r, p)
    expected = {n: w * LOSSES[n].fn(r, p).item() for n, w in weights.items()}
    assert list(loss_fn.last_breakdown) == list(weights)
    for n, v in expected.items():
        assert loss_fn.last_breakdown[n] == pytest.approx(v, rel=1e-12)
    assert total.item() == pytest.approx(sum(expected.values()), rel=1e-12)
    total.backward()
    assert all(torch.isfinite(v.grad).all() for v in p.values())
    assert p["forces"].grad.abs().sum() > 0


def test_gradient_equals_sum_of_term_gradients():
    ref, pred = make_numpy_batch(1)
    r = to_torch(ref)
    p1, p2 = to_torch(pred, requires_grad=True), to_torch(pred, requires_grad=True)
    WeightedLoss({"forces": 2.0, "molecular_forces": 3, "cluster_virial": 0.25})(r, p1).backward()
    (2.0 * LOSSES["forces"].fn(r, p2) + 3 * LOSSES["molecular_forces"].fn(r, p2)
     + 0.25 * LOSSES["cluster_virial"].fn(r, p2)).backward()
    torch.testing.assert_close(p1["forces"].grad, p2["forces"].grad, rtol=1e-12, atol=1e-15)


def test_zero_weight_term_is_not_computed():
    ref, pred = make_numpy_batch(2)
    del pred["polarizability"]  # would raise if the term were computed
    del ref["esps"]
    loss_fn = WeightedLoss({"forces": 1.0, "polarizability": 0, "esps": {"weight": 0.0}})
    loss_fn(to_torch(ref), to_torch(pred))
    assert list(loss_fn.last_breakdown) == ["forces"]


def test_all_zero_weights_give_a_zero_that_backpropagates():
    ref, pred = make_numpy_batch(3)
    p = to_torch(pred, requires_grad=True)
    out = WeightedLoss({"forces": 0})(to_torch(ref), p)
    assert out.item() == 0.0
    out.backward()


def test_unknown_name_did_you_mean():
    with pytest.raises(ValueError, match=r"unknown loss 'forcse'; did you mean 'forces'"):
        WeightedLoss({"forcse": 1.0})
    with pytest.raises(ValueError, match=r"did you mean 'esps'"):
        WeightedLoss({"esp": 1.0})


@pytest.mark.parametrize("bad", [-1.0, "1.0", True, math.nan, math.inf, None, [1.0]])
def test_bad_weights(bad):
    with pytest.raises(ValueError, match="'forces': weight must be"):
        WeightedLoss({"forces": bad})
    with pytest.raises(ValueError, match="'forces': weight must be"):
        WeightedLoss({"forces": {"weight": bad}})


def test_options():
    ref, pred = make_numpy_batch(4, k_pred=9)
    r, p = to_torch(ref), to_torch(pred)
    loss_fn = WeightedLoss({"atomic_multipoles": {"weight": 2.0, "max_l": 0}})
    got = loss_fn(r, p).item()
    p0 = {**p, "density_coefficients": p["density_coefficients"][:, :1]}
    assert got == pytest.approx(2.0 * LOSSES["atomic_multipoles"].fn(r, p0).item(), rel=1e-12)
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'max_L'.*did you mean 'max_l'"):
        WeightedLoss({"atomic_multipoles": {"weight": 1.0, "max_L": 1}})
    with pytest.raises(ValueError, match="needs a 'weight' key"):
        WeightedLoss({"forces": {"wieght": 1.0}})


def test_debug_line_shape_and_round_trip(caplog):
    ref, pred = make_numpy_batch(5)
    loss_fn = WeightedLoss({"energy_per_atom": 1.0, "forces": 10, "esps": 0.1})
    with caplog.at_level(logging.DEBUG, logger="scfdata.losses"):
        loss_fn(to_torch(ref), to_torch(pred))
    lines = [r.getMessage() for r in caplog.records if r.name == "scfdata.losses"]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("loss breakdown: energy_per_atom: ") and line.endswith(", ")
    assert "tensor" not in line
    parsed = parse_breakdown(line)
    assert list(parsed) == ["energy_per_atom", "forces", "esps"]
    for n, v in parsed.items():
        assert v == pytest.approx(loss_fn.last_breakdown[n], rel=1e-5)


def test_float32_total():
    ref, pred = make_numpy_batch(6)
    out = WeightedLoss({"forces": 1, "dipole": 1})(to_torch(ref, torch.float32), to_torch(pred, torch.float32))
    assert out.dtype == torch.float32


def test_unknown_name_without_close_match_lists_the_known_losses():
    with pytest.raises(ValueError, match=r"unknown loss 'banana' \(known: energy_per_atom, forces"):
        WeightedLoss({"banana": 1})
