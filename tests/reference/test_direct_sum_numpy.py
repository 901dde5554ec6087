"""The numpy open-boundary direct sum (engine="numpy"): analytic potentials, fields as −∇V, invariances,
chunking, and parity with the compiled numba loop; what engine="auto" picks."""

import math
import sys
import warnings

import numpy as np
import pytest

from scfdata.constants import K_E
from scfdata.reference import direct_sum_numpy as mod
from scfdata.reference import esp_realspace
from scfdata.reference.esp_realspace import realspace_potential_field


def _traceless(rng, n, scale=0.2):
    t = rng.normal(size=(n, 3, 3)) * scale
    t = t + t.transpose(0, 2, 1)
    return t - np.trace(t, axis1=1, axis2=2)[:, None, None] / 3 * np.eye(3)


def _batch(sizes, seed=0, min_distance=0.7):
    """Random configs of the given sizes (atoms at least ``min_distance`` Å apart, off-centre), with net
    charges, dipoles and quadrupoles."""
    rng = np.random.default_rng(seed)
    pos = []
    for n in sizes:
        pts, centre = [], rng.uniform(-30, 30, 3)
        while len(pts) < n:
            x = centre + rng.uniform(-1, 1, 3) * 1.2 * (1.0 + n) ** (1 / 3)
            if all(np.linalg.norm(x - y) >= min_distance for y in pts):
                pts.append(x)
        pos.append(np.reshape(pts, (n, 3)))
    pos = np.concatenate(pos)
    n = pos.shape[0]
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return pos, rng.normal(size=n) * 0.6, rng.normal(size=(n, 3)) * 0.2, _traceless(rng, n), ptr


def _numpy(*args, **kw):
    return realspace_potential_field(*args, engine="numpy", **kw)


def _rotation(seed=1):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_point_charges_against_coulomb_by_hand():
    """Three charges: V_i = k Σ_j q_j/r_ij and E_i = k Σ_j q_j r_ij/r_ij³, written out; a lone atom and an
    empty config feel nothing, and configs do not see each other."""
    pos = np.array([[0.0, 0, 0], [3.0, 0, 0], [0, 4.0, 0], [0.5, 0.5, 0.5], [0.1, 0.2, 0.3], [1.0, 0.2, 0.3]])
    q = np.array([1.0, -2.0, 0.5, 7.0, 1.5, -1.5])
    ptr = np.array([0, 3, 3, 4, 6])
    v, e = _numpy(pos, q, ptr=ptr, with_fields=True)
    want_v = K_E * np.array([-2 / 3 + 0.5 / 4, 1 / 3 + 0.5 / 5, 1 / 4 - 2 / 5, 0.0, -1.5 / 0.9, 1.5 / 0.9])
    want_e = K_E * np.array([[2 / 9, -0.5 / 16, 0], [1 / 9 + 0.5 * 3 / 125, -0.5 * 4 / 125, 0],
                             [2 * 3 / 125, 1 / 16 - 2 * 4 / 125, 0], [0, 0, 0],
                             [1.5 / 0.81, 0, 0], [1.5 / 0.81, 0, 0]])
    np.testing.assert_allclose(v, want_v, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(e, want_e, rtol=1e-14, atol=1e-13)


@pytest.mark.parametrize("sigma", [0.2, 0.9, 3.0])
def test_gaussian_charges_against_erf(sigma):
    """σ > 0: V = k q erf(r/(√2σ))/r, on both sides of the series/closed-form switch (β r = 0.5)."""
    r = np.array([0.05, 0.3, 0.7, 1.3, 2.9, 6.0]) * sigma
    pos = np.zeros((2 * r.size, 3))
    pos[1::2, 0] = r
    q = np.tile([0.0, 1.3], r.size)
    v, _ = _numpy(pos, q, ptr=np.arange(0, 2 * r.size + 1, 2), smearing_width=sigma)
    want = K_E * 1.3 * np.array([math.erf(x / (math.sqrt(2) * sigma)) / x for x in r])
    np.testing.assert_allclose(v[0::2], want, rtol=1e-13)
    np.testing.assert_array_equal(v[1::2], 0.0)


@pytest.mark.parametrize("sigma", [0.0, 0.6])
def test_fields_are_minus_gradient_of_the_potential(sigma):
    """E_i = −∂V_i/∂r_i (V_i from the other atoms), by central differences, charges + dipoles + quadrupoles."""
    pos, q, p, t, _ = _batch([6], seed=4)
    _, e = _numpy(pos, q, p, t, smearing_width=sigma, with_fields=True)
    h = 1e-5
    for i in range(pos.shape[0]):
        for a in range(3):
            step = np.zeros_like(pos)
            step[i, a] = h
            vp = _numpy(pos + step, q, p, t, smearing_width=sigma)[0][i]
            vm = _numpy(pos - step, q, p, t, smearing_width=sigma)[0][i]
            assert abs(-(vp - vm) / (2 * h) - e[i, a]) <= 1e-6 * (1 + abs(e[i, a])), (i, a)


def test_dipole_and_quadrupole_as_limits_of_charge_arrays():
    """A point dipole p = q d (charges ±q at ±d/2) and a linear quadrupole (q, −2q, q), d → 0, seen from
    an atom 3 Å away off-axis: the multipole terms are the limits of the charge arrays."""
    probe = np.array([1.1, -0.7, 2.7])
    d = 1e-4
    axis = np.array([0.3, 0.5, -0.2]) / np.linalg.norm([0.3, 0.5, -0.2])
    charges = np.array([probe, axis * d / 2, -axis * d / 2])
    v_pair, e_pair = _numpy(charges, np.array([0.0, 1 / d, -1 / d]), with_fields=True)
    v_dip, e_dip = _numpy(np.array([probe, [0, 0, 0]]), np.zeros(2), np.array([[0, 0, 0], axis]), with_fields=True)
    np.testing.assert_allclose(v_dip[0], v_pair[0], rtol=1e-7)
    np.testing.assert_allclose(e_dip[0], e_pair[0], rtol=1e-7)
    quad_charges = np.array([probe, axis * d, [0, 0, 0], -axis * d])
    v_arr, _ = _numpy(quad_charges, np.array([0.0, 1, -2, 1]) / d**2)
    theta = 3 * np.outer(axis, axis) - np.eye(3)  # Θ = Σ q (3 r r − r² I)/2 of the array, per 1/d²·d²
    v_quad, _ = _numpy(np.array([probe, [0, 0, 0]]), np.zeros(2), None, np.array([np.zeros((3, 3)), theta]))
    np.testing.assert_allclose(v_quad[0], v_arr[0], rtol=1e-6)


def test_translation_rotation_and_permutation_invariance():
    """Shifting every atom changes nothing; rotating atoms, dipoles (Rp) and quadrupoles (RΘRᵀ) rotates the
    fields; permuting atoms within a config and reordering configs permutes the results."""
    sizes = [4, 7, 1, 5]
    pos, q, p, t, ptr = _batch(sizes, seed=5)
    v, e = _numpy(pos, q, p, t, ptr, smearing_width=0.5, with_fields=True)
    rot = _rotation()
    v2, e2 = _numpy(pos @ rot.T + [5.0, -2.0, 1.0], q, p @ rot.T, np.einsum("ab,nbc,dc->nad", rot, t, rot), ptr,
                    smearing_width=0.5, with_fields=True)
    np.testing.assert_allclose(v2, v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(e2, e @ rot.T, rtol=1e-11, atol=1e-11)
    order = [3, 0, 2, 1]  # configs reversed-ish, atoms shuffled inside each
    rng = np.random.default_rng(6)
    perm = np.concatenate([ptr[c] + rng.permutation(sizes[c]) for c in order])
    new_ptr = np.concatenate([[0], np.cumsum([sizes[c] for c in order])])
    v3, e3 = _numpy(pos[perm], q[perm], p[perm], t[perm], new_ptr, smearing_width=0.5, with_fields=True)
    np.testing.assert_allclose(v3, v[perm], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(e3, e[perm], rtol=1e-13, atol=1e-13)


PARTS = {"q": (False, False), "qp": (True, False), "qpt": (True, True)}


@pytest.mark.parametrize("sigma", [0.0, 0.7])
@pytest.mark.parametrize("parts", list(PARTS))
@pytest.mark.parametrize("with_fields", [False, True])
def test_equals_the_numba_engine(sigma, parts, with_fields):
    """Random configs of 0-30 atoms (charged, all multipole orders, an empty and a lone atom) and one of
    300 atoms (larger than a chunk: split into blocks of rows): the numpy and numba engines agree to
    1e-12 of each result (plus 1e-12 of the largest, for results that cancel to ~0)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(11)
    sizes = [0, 1, 300, *rng.integers(0, 31, 60)]
    pos, q, p, t, ptr = _batch(sizes, seed=12, min_distance=0.3)
    have_p, have_t = PARTS[parts]
    args = (pos, q, p if have_p else None, t if have_t else None, ptr)
    kw = dict(smearing_width=sigma, with_fields=with_fields)
    assert 300 * 300 > mod.PAIR_CHUNK
    v, e = realspace_potential_field(*args, engine="numpy", **kw)
    vb, eb = realspace_potential_field(*args, engine="numba", **kw)
    assert np.abs(q.sum()) > 1.0  # charged batch
    np.testing.assert_allclose(v, vb, rtol=1e-12, atol=1e-12 * np.abs(vb).max())
    if with_fields:
        np.testing.assert_allclose(e, eb, rtol=1e-12, atol=1e-12 * np.abs(eb).max())
    else:
        assert e is None and eb is None
    assert v[ptr[1]] == 0.0 and (v[ptr[2]:ptr[3]] != 0).all()  # the lone atom feels nothing, the others do


def test_mace_scf_dipole_columns_read_in_place():
    """dipole_columns=(3, 1, 2) reads [Q, d_y, d_z, d_x] as it is: the same as Cartesian dipoles."""
    pos, q, p, _, ptr = _batch([5, 8], seed=2)
    mp = np.column_stack([q, p[:, 1], p[:, 2], p[:, 0]])
    a = _numpy(pos, q, p, None, ptr, with_fields=True)
    b = _numpy(pos, mp[:, 0], mp, None, ptr, with_fields=True, dipole_columns=(3, 1, 2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_results_do_not_depend_on_the_chunk_size(monkeypatch):
    """Chunks of a few configs, of single rows of one config, or everything at once: each atom's row is
    summed whole, so the results are the same to the last bit."""
    pos, q, p, t, ptr = _batch([3, 9, 2, 9, 9, 14], seed=8)
    want = mod.direct_sum(pos, q, p, t, ptr, 0.8, True)
    for chunk in (1, 20, 100, 1 << 30):
        monkeypatch.setattr(mod, "PAIR_CHUNK", chunk)
        got = mod.direct_sum(pos, q, p, t, ptr, 0.8, True)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_empty_and_lone_atom_batches():
    for ptr in ([0], [0, 0], [0, 0, 0], [0, 1], [0, 0, 1, 1]):
        n = ptr[-1]
        v, e = _numpy(np.zeros((n, 3)), np.ones(n), ptr=np.array(ptr), with_fields=True)
        assert v.shape == (n,) and e.shape == (n, 3)
        np.testing.assert_array_equal(v, 0.0)
        np.testing.assert_array_equal(e, 0.0)


@pytest.mark.parametrize("sigma", [0.0, 0.8])
def test_coincident_atoms_are_refused(sigma):
    """Both atoms of a pair closer than MIN_SEPARATION get NaN from the engine; the caller names the pair."""
    pos = np.array([[0.0, 0, 0], [5, 5, 5], [1, 0, 0], [1 + 1e-9, 0, 0]])
    v, _ = mod.direct_sum(pos, np.ones(4), None, None, np.array([0, 4]), None, False)
    assert np.isnan(v[[2, 3]]).all() and np.isfinite(v[[0, 1]]).all()
    pos[3, 0] = 1.0  # at the same point: no numpy warning (divide by zero) before the error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v, e = mod.direct_sum(pos, np.ones(4), np.ones((4, 3)), _traceless(np.random.default_rng(0), 4),
                              np.array([0, 4]), 1.0 if sigma else None, True)
    assert np.isnan(v[[2, 3]]).all() and np.isfinite(v[[0, 1]]).all()
    with pytest.raises(ValueError, match=r"atoms 2 and 3 of config 0 sit at the same position .*below 1e-06 Å"):
        _numpy(pos, np.ones(4), smearing_width=sigma)


def test_torch_cpu_tensors():
    """CPU tensors through the numpy engine: tensors back, the same values as for numpy arrays."""
    torch = pytest.importorskip("torch")
    pos, q, p, t, ptr = _batch([4, 6], seed=9)
    v, e = _numpy(torch.from_numpy(pos), torch.from_numpy(q), p, t, ptr, with_fields=True)
    assert v.dtype == torch.float64 and e.shape == (10, 3)
    want = _numpy(pos, q, p, t, ptr, with_fields=True)
    np.testing.assert_array_equal(v.numpy(), want[0])
    np.testing.assert_array_equal(e.numpy(), want[1])


def test_auto_gives_a_config_the_same_bits_whatever_else_is_in_its_batch(monkeypatch):
    """engine='auto' picks per config by its own atom count (numpy up to AUTO_NUMPY_MAX_ATOMS, numba above),
    so a small config's values are bit for bit the same alone, beside a large config, and after numba has
    been loaded by other work in the process: a shard count never changes stored arrays."""
    monkeypatch.setattr(esp_realspace, "AUTO_NUMPY_MAX_ATOMS", 8)
    pos, q, p, t, ptr = _batch([3, 5, 12, 4], seed=21)  # the 12-atom config goes to numba
    alone_v, alone_e = realspace_potential_field(pos[:8], q[:8], p[:8], t[:8], ptr[:3], with_fields=True)
    v, e = realspace_potential_field(pos, q, p, t, ptr, with_fields=True)
    np.testing.assert_array_equal(v[:8], alone_v)
    np.testing.assert_array_equal(e[:8], alone_e)
    np.testing.assert_array_equal(v[8:20], realspace_potential_field(pos[8:20], q[8:20], p[8:20], t[8:20],
                                                                     engine="numba")[0])
    np.testing.assert_array_equal(v[20:], realspace_potential_field(pos[20:], q[20:], p[20:], t[20:])[0])
    np.testing.assert_array_equal(v[:8], realspace_potential_field(pos[:8], q[:8], p[:8], t[:8], ptr[:3],
                                                                   engine="numpy")[0])
    assert "numba" in sys.modules  # loaded now, and the small configs still take the numpy engine
    again_v, _ = realspace_potential_field(pos[:8], q[:8], p[:8], t[:8], ptr[:3])
    np.testing.assert_array_equal(again_v, alone_v)
    want = realspace_potential_field(pos, q, p, t, ptr, with_fields=True, engine="numba")
    np.testing.assert_allclose(v, want[0], rtol=1e-12, atol=1e-12)  # and both agree to round-off
    np.testing.assert_allclose(e, want[1], rtol=1e-12, atol=1e-12)


def test_auto_runs_numpy_only_for_small_configs(monkeypatch):
    """engine='auto' on a batch of small configs calls the numpy engine once, with the whole batch."""
    called = []
    real = mod.direct_sum
    monkeypatch.setattr(mod, "direct_sum", lambda *a, **k: called.append(len(a[0])) or real(*a, **k))
    pos, q, p, _, ptr = _batch([3, 5], seed=10)
    v, _ = realspace_potential_field(pos, q, p, None, ptr)
    assert called == [8]
    np.testing.assert_array_equal(v, _numpy(pos, q, p, None, ptr)[0])


def test_unknown_engine_names_the_choices():
    with pytest.raises(ValueError, match="Must be one of 'auto', 'numba', 'torch', 'numpy'"):
        realspace_potential_field(np.zeros((2, 3)), np.ones(2), engine="fortran")
