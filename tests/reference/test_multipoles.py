"""MACE_SCF multipole conventions against independent moment integrals of point-charge distributions."""

import numpy as np
import pytest

from scfdata.reference.multipoles import (
    cartesian_to_multipoles,
    charges_dipoles_to_multipoles,
    multipoles_to_cartesian,
    multipoles_to_charges_dipoles,
    rotate_multipoles,
)

S3 = np.sqrt(3.0)


def _moments_of_charges(q, s):
    """Moments of point charges q at s, written out independently of the module."""
    x, y, z = s.T
    r2 = x * x + y * y + z * z
    big_q = q.sum()
    dip = (q[:, None] * s).sum(0)
    q2 = np.array(
        [
            (q * S3 * x * y).sum(),
            (q * S3 * y * z).sum(),
            (q * (3 * z * z - r2) / 2).sum(),
            (q * S3 * x * z).sum(),
            (q * S3 / 2 * (x * x - y * y)).sum(),
        ]
    )
    theta = np.einsum("i,ia,ib->ab", q, s, s) * 1.5 - 0.5 * np.eye(3) * (q * r2).sum()
    return big_q, dip, q2, theta


def test_column_order_and_l2_normalisation():
    rng = np.random.default_rng(0)
    q = rng.normal(size=6)
    s = rng.normal(size=(6, 3))
    big_q, dip, q2, theta = _moments_of_charges(q, s)
    mp = cartesian_to_multipoles([big_q], dip[None], theta[None])[0]
    assert mp.shape == (9,)
    np.testing.assert_allclose(mp[0], big_q, atol=1e-12)
    np.testing.assert_allclose(mp[1:4], [dip[1], dip[2], dip[0]], atol=1e-12)  # [d_y, d_z, d_x]
    np.testing.assert_allclose(mp[4:], q2, atol=1e-12)
    q_back, d_back, t_back = multipoles_to_cartesian(mp[None])
    np.testing.assert_allclose(t_back[0], theta, atol=1e-12)
    np.testing.assert_allclose(d_back[0], dip, atol=1e-12)


def test_quadrupole_far_field_matches_charges():
    """k Θ_ab r_a r_b / r^5 with Θ from the conversion reproduces the l=2 part of a charge cluster."""
    q = np.array([1.0, -2.0, 1.0])
    s = np.array([[0.0, 0.0, 0.1], [0.0, 0.0, 0.0], [0.0, 0.0, -0.1]]) @ np.linalg.qr(
        np.random.default_rng(1).normal(size=(3, 3))
    )[0]
    big_q, dip, _, theta = _moments_of_charges(q, s)
    mp = cartesian_to_multipoles([big_q], dip[None], theta[None])
    _, _, theta = multipoles_to_cartesian(mp)
    r = np.array([3.0, -4.0, 12.0]) * 10
    exact = (q / np.linalg.norm(r - s, axis=1)).sum()
    approx = r @ theta[0] @ r / np.linalg.norm(r) ** 5
    assert abs(exact - approx) < 1e-3 * abs(approx)


def test_charges_dipoles_roundtrip():
    rng = np.random.default_rng(2)
    q, d = rng.normal(size=5), rng.normal(size=(5, 3))
    mp = charges_dipoles_to_multipoles(q, d)
    np.testing.assert_array_equal(mp[:, 1:], d[:, [1, 2, 0]])
    q2, d2 = multipoles_to_charges_dipoles(mp)
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(d2, d)


def test_rotation_consistent_with_rotating_charges():
    rng = np.random.default_rng(3)
    q, s = rng.normal(size=7), rng.normal(size=(7, 3))
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    before = _moments_of_charges(q, s)
    after = _moments_of_charges(q, s @ rot.T)
    mp = cartesian_to_multipoles([before[0]], before[1][None], before[3][None])
    np.testing.assert_allclose(rotate_multipoles(mp, rot)[0, 4:], after[2], atol=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="K in"):
        multipoles_to_cartesian(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="max_l=2"):
        multipoles_to_cartesian(np.zeros((3, 4)), max_l=2)
