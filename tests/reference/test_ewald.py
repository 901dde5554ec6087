"""3D Ewald: Madelung constants in many cell choices, γ independence, limits, fields, converged sums."""

import itertools
import math

import crystals  # tests/reference/crystals.py: Madelung crystals in several cell choices
import numpy as np
import pytest
from scipy.special import erfc

from scfdata.constants import K_E
from scfdata.reference.esp_realspace import realspace_potential_field
from scfdata.reference.ewald import choose_parameters, ewald_potential_field

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("name", crystals.NAMES)
def test_madelung_constants_all_cell_choices(name):
    *_, d, madelung = crystals.crystal(name)
    for label, pos, q, cell in crystals.cell_choices(name):
        v, _ = ewald_potential_field(pos, q, None, None, cell, tolerance=1e-6)
        m = -v * q * d / K_E
        np.testing.assert_allclose(m, madelung, rtol=1e-6, err_msg=label)


def test_single_charge_in_cubic_box_wigner_potential():
    """Charged cell: potential at a lone charge from its images + background = −2.837297479 k q / L."""
    for L in (4.0, 9.0):
        v, _ = ewald_potential_field(np.array([[0.3, 0.2, 0.1]]), np.array([1.0]), None, None, np.eye(3) * L,
                                     tolerance=1e-9)
        np.testing.assert_allclose(v[0], -2.8372974794806 * K_E / L, rtol=1e-8)


def _random_cell_system(n, with_quads=False, charged=False):
    cell = np.array([[7.0, 0.3, -0.2], [1.2, 6.5, 0.4], [-0.8, 0.9, 7.7]])
    frac = RNG.uniform(size=(n, 3))
    pos = frac @ cell
    q = RNG.normal(size=n)
    if not charged:
        q -= q.mean()
    p = RNG.normal(size=(n, 3)) * 0.3
    t = None
    if with_quads:
        t = RNG.normal(size=(n, 3, 3)) * 0.2
        t = t + t.transpose(0, 2, 1)
        t -= np.trace(t, axis1=1, axis2=2)[:, None, None] / 3 * np.eye(3)
    return pos, q, p, t, cell


@pytest.mark.parametrize("sigma", [0.0, 0.7])
@pytest.mark.parametrize("charged", [False, True])
def test_independent_of_splitting_parameter(sigma, charged):
    pos, q, p, t, cell = _random_cell_system(12, with_quads=True, charged=charged)
    out = []
    for g in (0.35, 0.5, 0.62):
        prm = dict(gamma=g, r_cut=6.5 / g, k_cut=13.0 * g)
        out.append(ewald_potential_field(pos, q, p, t, cell, smearing_width=sigma, params=prm, with_fields=True))
    for v, e in out[1:]:
        np.testing.assert_allclose(v, out[0][0], atol=1e-9)
        np.testing.assert_allclose(e, out[0][1], atol=1e-9)


@pytest.mark.parametrize("with_quads", [False, True])
def test_automatic_parameters_meet_tolerance(with_quads):
    pos, q, p, t, cell = _random_cell_system(30, with_quads=with_quads)
    ref, eref = ewald_potential_field(pos, q, p, t, cell, tolerance=1e-13, with_fields=True)
    for tol in (1e-4, 1e-6):
        v, e = ewald_potential_field(pos, q, p, t, cell, tolerance=tol, with_fields=True)
        assert np.abs(v - ref).max() < tol
        assert np.abs(e - eref).max() < 10 * tol


def test_smeared_equals_point_minus_short_range_direct_sum():
    """Gaussian charges: V_σ = V_point − k Σ_images q_j erfc(r/(√2σ))/r (short ranged, summed directly)."""
    pos, q, _, _, cell = _random_cell_system(8)
    sigma = 0.6
    vp, _ = ewald_potential_field(pos, q, None, None, cell, tolerance=1e-11)
    vs, _ = ewald_potential_field(pos, q, None, None, cell, smearing_width=sigma, tolerance=1e-11)
    diff = np.zeros(len(q))
    for n in itertools.product(range(-2, 3), repeat=3):
        shift = np.array(n) @ cell
        for i in range(len(q)):
            r = np.linalg.norm(pos[i] - pos - shift, axis=1)
            if n == (0, 0, 0):
                r[i] = np.inf
            diff[i] += np.sum(q * erfc(r / (math.sqrt(2) * sigma)) / r)
    np.testing.assert_allclose(vs, vp - K_E * diff, atol=1e-8)


def test_dipoles_and_quadrupoles_are_limits_of_charges():
    cell = np.eye(3) * 6.0 + [[0, 0.5, 0], [0, 0, 0], [0.3, 0, 0]]
    centres = np.array([[1.0, 2.0, 0.5], [3.5, 4.0, 4.5]])
    axis = np.array([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0]])
    d = 1e-3
    probes = np.array([[4.4, 1.3, 2.2], [0.2, 5.0, 3.3]])
    # dipoles ±1/d at ±d/2 along axis
    pos = np.concatenate([probes, centres + d / 2 * axis, centres - d / 2 * axis])
    qv = np.concatenate([[0, 0], [1 / d] * 2, [-1 / d] * 2])
    v_c, _ = ewald_potential_field(pos, qv, None, None, cell, tolerance=1e-10)
    p = np.concatenate([np.zeros((2, 3)), axis])
    v_d, _ = ewald_potential_field(np.concatenate([probes, centres]), np.zeros(4), p, None, cell, tolerance=1e-10)
    np.testing.assert_allclose(v_c[:2], v_d[:2], rtol=1e-5)
    # traceless quadrupoles Q at ±d a, −Q at ±d b: Θ = 3 Q d² (aa − bb)
    b = np.cross(axis, [[0, 0, 1.0], [1.0, 0, 0]])
    b /= np.linalg.norm(b, axis=1)[:, None]
    pos = np.concatenate([probes, centres + d * axis, centres - d * axis, centres + d * b, centres - d * b])
    big = 1 / d**2
    qv = np.concatenate([[0, 0], [big] * 4, [-big] * 4])
    v_c, _ = ewald_potential_field(pos, qv, None, None, cell, tolerance=1e-10)
    t = np.concatenate([np.zeros((2, 3, 3)), 3 * (np.einsum("na,nb->nab", axis, axis) - np.einsum("na,nb->nab", b, b))])
    v_q, _ = ewald_potential_field(np.concatenate([probes, centres]), np.zeros(4), None, t, cell, tolerance=1e-10)
    np.testing.assert_allclose(v_c[:2], v_q[:2], rtol=1e-5)


@pytest.mark.parametrize("sigma", [0.0, 0.8])
def test_fields_are_minus_gradient(sigma):
    """At multipole-free probe atoms (an atom's own periodic images move with it, so −∂V_i/∂r_i is the
    field only where the atom carries no dipole: the field of its own dipole's images is real)."""
    pos, q, p, t, cell = _random_cell_system(6, with_quads=True)
    for i in (0, 4):
        p[i] = 0.0
        t[i] = 0.0
    q[[0, 4]] = 0.0
    _, e = ewald_potential_field(pos, q, p, t, cell, smearing_width=sigma, tolerance=1e-11, with_fields=True)
    h = 1e-5
    for i in (0, 4):
        for c in range(3):
            pp, pm = pos.copy(), pos.copy()
            pp[i, c] += h
            pm[i, c] -= h
            vp = ewald_potential_field(pp, q, p, t, cell, smearing_width=sigma, tolerance=1e-11)[0][i]
            vm = ewald_potential_field(pm, q, p, t, cell, smearing_width=sigma, tolerance=1e-11)[0][i]
            assert abs(-(vp - vm) / (2 * h) - e[i, c]) < 1e-6 * max(1.0, abs(e[i, c]))


def test_molecule_in_growing_box_approaches_realspace():
    pos = RNG.uniform(-1.5, 1.5, size=(5, 3))
    q = RNG.normal(size=5)
    q -= q.mean()
    p = RNG.normal(size=(5, 3)) * 0.2
    v_open, _ = realspace_potential_field(pos, q, p)
    errs = []
    for L in (15.0, 30.0, 60.0):
        v, _ = ewald_potential_field(pos, q, p, None, np.eye(3) * L, tolerance=1e-9)
        errs.append(np.abs(v - v_open).max())
    assert errs[1] < errs[0] / 5 and errs[2] < errs[1] / 5 and errs[2] < 1e-3


def test_invariances():
    pos, q, p, t, cell = _random_cell_system(10, with_quads=True)
    from scfdata.reference.multipoles import cartesian_to_multipoles, multipoles_to_cartesian, rotate_multipoles

    v, e = ewald_potential_field(pos, q, p, t, cell, tolerance=1e-9, with_fields=True)
    rot = crystals.rotation()
    q2, p2, t2 = multipoles_to_cartesian(rotate_multipoles(cartesian_to_multipoles(q, p, t), rot))
    v2, e2 = ewald_potential_field(pos @ rot.T + [1, 2, 3], q2, p2, t2, cell @ rot.T, tolerance=1e-9,
                                   with_fields=True)
    np.testing.assert_allclose(v2, v, atol=1e-8)
    np.testing.assert_allclose(e2, e @ rot.T, atol=1e-7)
    perm = RNG.permutation(10)
    v3, _ = ewald_potential_field(pos[perm] + cell[0] * 2, q[perm], p[perm], t[perm], cell, tolerance=1e-9)
    np.testing.assert_allclose(v3, v[perm], atol=1e-8)


def test_parameters_and_zero_volume_cell():
    prm = choose_parameters(np.eye(3) * 20, 800, np.ones(800), None, None, 0.0, 1e-6)
    assert prm["r_cut"] * prm["gamma"] == pytest.approx(prm["s"])
    prm = choose_parameters(np.eye(3) * 20, 800, np.ones(800), None, None, 1.5, 1e-6)
    assert prm["gamma"] <= 1 / (math.sqrt(2) * 1.5)
    with pytest.raises(ValueError, match="non-zero volume"):
        ewald_potential_field(np.zeros((1, 3)), np.ones(1), None, None, np.zeros((3, 3)))
