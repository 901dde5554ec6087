"""Config dipoles against a per-config loop written in the test."""

import numpy as np
import pytest

from scfdata.reference.dipoles import compute_dipoles, dipole_mask_from_pbc


def _loop(pos, mp, ptr, masses, origin):
    out = []
    for a, b in zip(ptr[:-1], ptr[1:]):
        if origin == "zero" or a == b:
            o = np.zeros(3)
        elif origin == "centre_of_mass":
            o = (masses[a:b, None] * pos[a:b]).sum(0) / masses[a:b].sum()
        else:
            o = pos[a:b].mean(0)
        mu = (mp[a:b, 0, None] * (pos[a:b] - o)).sum(0)
        if mp.shape[1] >= 4:
            mu = mu + mp[a:b, 1:4][:, [2, 0, 1]].sum(0)
        out.append(mu)
    return np.array(out)


@pytest.mark.parametrize("origin", ["zero", "centre_of_mass", "centre_of_geometry"])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_matches_loop(origin, k):
    rng = np.random.default_rng(0)
    ptr = np.array([0, 3, 3, 10, 11])
    pos = rng.normal(size=(11, 3)) * 3
    mp = rng.normal(size=(11, k))
    masses = rng.uniform(1, 16, 11)
    got = compute_dipoles(pos, mp, ptr, masses=masses, origin=origin)
    np.testing.assert_allclose(got, _loop(pos, mp, ptr, masses, origin), atol=1e-12)
    assert np.all(got[1] == 0)


def test_neutral_dipole_origin_independent():
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(5, 3))
    mp = rng.normal(size=(5, 4))
    mp[:, 0] -= mp[:, 0].mean()
    ptr = np.array([0, 5])
    a = compute_dipoles(pos, mp, ptr)
    b = compute_dipoles(pos, mp, ptr, origin="centre_of_geometry")
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="Must be one of"):
        compute_dipoles(np.zeros((1, 3)), np.zeros((1, 1)), [0, 1], origin="middle")
    with pytest.raises(ValueError, match="masses"):
        compute_dipoles(np.zeros((1, 3)), np.zeros((1, 1)), [0, 1], origin="centre_of_mass")


def test_mask():
    pbc = np.array([[0, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]], bool)
    np.testing.assert_array_equal(dipole_mask_from_pbc(pbc), [[1, 1, 1], [0, 0, 1], [0, 0, 0], [0, 1, 1]])
