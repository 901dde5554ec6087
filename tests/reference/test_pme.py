"""Smooth particle-mesh Ewald against the plain Ewald engine, Madelung constants, limits and dispatch."""

import math

import crystals  # tests/reference/crystals.py: Madelung crystals in several cell choices
import numpy as np
import pytest

from scfdata.constants import K_E
from scfdata.reference.ewald import ewald_potential_field
from scfdata.reference.pme import _bspline, choose_pme_parameters, pme_potential_field

TRICLINIC = np.array([[7.0, 0.3, -0.2], [1.2, 6.5, 0.4], [-0.8, 0.9, 7.7]])
CUBIC = np.eye(3) * 7.3


def _system(n, cell, lmax, charged, seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(size=(n, 3)) @ cell
    q = rng.normal(size=n)
    if not charged:
        q -= q.mean()
    p = rng.normal(size=(n, 3)) * 0.3 if lmax >= 1 else None
    t = None
    if lmax >= 2:
        t = rng.normal(size=(n, 3, 3)) * 0.2
        t = t + t.transpose(0, 2, 1)
        t -= np.trace(t, axis1=1, axis2=2)[:, None, None] / 3 * np.eye(3)
    return pos, q, p, t


def _water(n, seed=0):
    """N atoms at water density (0.1 Å⁻³): rigid-ish waters with charges −0.8/+0.4 and small dipoles."""
    rng = np.random.default_rng(seed)
    nm = n // 3
    box = (3 * nm / 0.1) ** (1 / 3)
    m = int(math.ceil(nm ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:nm]
    o = (grid + 0.5) * (box / m) + rng.uniform(-0.3, 0.3, (nm, 3))
    d = rng.normal(size=(2, nm, 3))
    d /= np.linalg.norm(d, axis=2)[..., None]
    pos = np.concatenate([o, o + 0.96 * d[0], o + 0.96 * d[1]], 1).reshape(-1, 3)
    return pos, np.tile([-0.8, 0.4, 0.4], nm), rng.normal(size=(3 * nm, 3)) * 0.1, np.eye(3) * box


def test_bspline_partition_of_unity_and_derivatives():
    w = np.random.default_rng(1).uniform(size=50)
    for p in (4, 6, 8, 10):
        m, d1, d2 = _bspline(w, p, 2)
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-14)
        np.testing.assert_allclose(d1.sum(1), 0.0, atol=1e-13)  # derivative of a constant
        np.testing.assert_allclose((m * (w[:, None] + np.arange(p))).sum(1), p / 2, atol=1e-12)  # centre p/2
        h = 1e-6
        mp, mm = _bspline(w + h, p, 0)[0], _bspline(w - h, p, 0)[0]
        np.testing.assert_allclose((mp - mm) / (2 * h), d1, atol=1e-7)
        dp, dm = _bspline(w + h, p, 1)[1], _bspline(w - h, p, 1)[1]
        np.testing.assert_allclose((dp - dm) / (2 * h), d2, atol=1e-6)


@pytest.mark.parametrize("cell", [CUBIC, TRICLINIC], ids=["cubic", "triclinic"])
@pytest.mark.parametrize("lmax", [0, 1, 2])
@pytest.mark.parametrize("sigma", [0.0, 0.7])
@pytest.mark.parametrize("charged", [False, True])
def test_fine_mesh_equals_ewald_exactly(cell, lmax, sigma, charged):
    """With a fine mesh and order 10 PME must reproduce the converged Ewald sum to ~1e-10 V (the algebra)."""
    pos, q, p, t = _system(24, cell, lmax, charged)
    ref, eref = ewald_potential_field(pos, q, p, t, cell, smearing_width=sigma, tolerance=1e-12, with_fields=True)
    prm = dict(gamma=0.6, r_cut=6.5 / 0.6, mesh=(64, 60, 72), order=10)
    v, e = pme_potential_field(pos, q, p, t, cell, smearing_width=sigma, with_fields=True, params=prm)
    np.testing.assert_allclose(v, ref, atol=1e-10)
    np.testing.assert_allclose(e, eref, atol=1e-9)


@pytest.mark.parametrize("cell", [CUBIC, TRICLINIC], ids=["cubic", "triclinic"])
@pytest.mark.parametrize("lmax", [0, 1, 2])
@pytest.mark.parametrize("sigma", [0.0, 0.7])
@pytest.mark.parametrize("charged", [False, True])
def test_automatic_parameters_meet_tolerance(cell, lmax, sigma, charged):
    pos, q, p, t = _system(40, cell, lmax, charged, seed=2)
    ref, eref = ewald_potential_field(pos, q, p, t, cell, smearing_width=sigma, tolerance=1e-12, with_fields=True)
    for tol in (1e-4, 1e-6):
        v, e = pme_potential_field(pos, q, p, t, cell, smearing_width=sigma, tolerance=tol, with_fields=True)
        assert np.abs(v - ref).max() < tol
        assert np.abs(e - eref).max() < 10 * tol
        # the mesh is really used (not a degenerate all-real-space choice): a coarse mesh must fail
    prm = choose_pme_parameters(cell, 40, q, p, t, sigma, 1e-6)
    prm = dict(prm, mesh=tuple(max(m // 3, 2 * prm["order"]) for m in prm["mesh"]))
    v, _ = pme_potential_field(pos, q, p, t, cell, smearing_width=sigma, params=prm)
    assert np.abs(v - ref).max() > 1e-6


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_water_box_meets_tolerance(sigma):
    pos, q, p, cell = _water(384)
    for pp in (None, p):
        ref, eref = ewald_potential_field(pos, q, pp, None, cell, smearing_width=sigma, tolerance=1e-10,
                                          with_fields=True)
        v, e = pme_potential_field(pos, q, pp, None, cell, smearing_width=sigma, tolerance=1e-6, with_fields=True)
        assert np.abs(v - ref).max() < 1e-6
        assert np.abs(e - eref).max() < 1e-5


def test_self_interaction_include_matches_ewald():
    pos, q, p, _ = _system(20, TRICLINIC, 1, False, seed=4)
    ref, eref = ewald_potential_field(pos, q, p, None, TRICLINIC, smearing_width=0.9, self_interaction="include",
                                      tolerance=1e-12, with_fields=True)
    v, e = pme_potential_field(pos, q, p, None, TRICLINIC, smearing_width=0.9, self_interaction="include",
                               tolerance=1e-7, with_fields=True)
    np.testing.assert_allclose(v, ref, atol=1e-7)
    np.testing.assert_allclose(e, eref, atol=1e-6)
    with pytest.raises(ValueError, match="smearing_width > 0"):
        pme_potential_field(pos, q, p, None, TRICLINIC, self_interaction="include")


@pytest.mark.parametrize("name", crystals.NAMES)
def test_madelung_constants_all_cell_choices(name):
    *_, d, madelung = crystals.crystal(name)
    for label, pos, q, cell in crystals.cell_choices(name):
        v, _ = pme_potential_field(pos, q, None, None, cell, tolerance=1e-6)
        np.testing.assert_allclose(-v * q * d / K_E, madelung, rtol=1e-6, err_msg=label)


def test_lone_charge_background_wigner_constant():
    for L in (4.0, 9.0):
        v, _ = pme_potential_field(np.array([[0.3, 0.2, 0.1]]), np.array([1.0]), None, None, np.eye(3) * L,
                                   tolerance=1e-9)
        np.testing.assert_allclose(v[0], -2.8372974794806 * K_E / L, rtol=1e-8)


def test_translation_and_permutation_invariance():
    pos, q, p, t = _system(30, TRICLINIC, 2, False, seed=6)
    v, e = pme_potential_field(pos, q, p, t, TRICLINIC, tolerance=1e-8, with_fields=True)
    perm = np.random.default_rng(0).permutation(30)
    v2, e2 = pme_potential_field(pos[perm] + [0.37, -2.1, 5.3] + 2 * TRICLINIC[1], q[perm], p[perm], t[perm],
                                 TRICLINIC, tolerance=1e-8, with_fields=True)
    np.testing.assert_allclose(v2, v[perm], atol=2e-8)
    np.testing.assert_allclose(e2, e[perm], atol=2e-7)


def test_dispatch_large_periodic_config_to_pme(monkeypatch):
    from scfdata.reference import esp, periodic, pme

    pos, q, p, cell = _water(300, seed=3)
    mp = np.concatenate([q[:, None], p[:, [1, 2, 0]]], 1)
    calls = []
    real = pme.pme_potential_field

    def spy(*args, **kw):
        calls.append(len(args[0]))
        return real(*args, **kw)

    monkeypatch.setattr(pme, "pme_potential_field", spy)
    monkeypatch.setattr(periodic, "PME_MIN_ATOMS", 100)
    v, e = esp.compute_esps(pos, mp, np.array([0, 300]), cell[None], np.ones((1, 3), bool), with_fields=True)
    assert calls == [300]
    ref, eref = ewald_potential_field(pos, q, p, None, cell, tolerance=1e-10, with_fields=True)
    assert np.abs(v - ref).max() < 1e-6 and np.abs(e - eref).max() < 1e-5
    calls.clear()
    monkeypatch.setattr(periodic, "PME_MIN_ATOMS", 1000)
    esp.compute_esps(pos, mp, np.array([0, 300]), cell[None], np.ones((1, 3), bool))
    assert calls == []


def test_zero_volume_cell_is_an_error():
    with pytest.raises(ValueError, match="non-zero volume"):
        pme_potential_field(np.zeros((1, 3)), np.ones(1), None, None, np.zeros((3, 3)))
