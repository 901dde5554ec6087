"""Open-boundary direct sum: against a plain loop, analytic Gaussian potentials, finite charge arrays."""

import math

import numpy as np
import pytest
from scipy.special import erf

from scfdata.constants import K_E
from scfdata.reference.esp_realspace import realspace_potential_field
from scfdata.reference.multipole_kernels import g_erf, g_erfc

RNG = np.random.default_rng(7)
#: The CPU's compiled loop and the torch engine (the one that runs on GPUs), both checked on the CPU.
ENGINES = ["numba", "torch", "numpy"]


def _random_system(n, with_quads=True):
    pos = RNG.uniform(-3, 3, size=(n, 3))
    q = RNG.normal(size=n)
    p = RNG.normal(size=(n, 3)) * 0.3
    t = RNG.normal(size=(n, 3, 3)) * 0.2
    t = t + t.transpose(0, 2, 1)
    t -= np.trace(t, axis1=1, axis2=2)[:, None, None] / 3 * np.eye(3)
    return pos, q, p, (t if with_quads else None)


def _esp(engine, *args, **kwargs):
    """realspace_potential_field on the given engine."""
    return realspace_potential_field(*args, engine=engine, **kwargs)


def _plain_point_sum(pos, q, p, t):
    """V_i = k Σ_j≠i [q/r + p·r/r^3 + r·Θ·r/r^5], r = r_i − r_j, written as a plain loop."""
    n = len(q)
    v = np.zeros(n)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            r = pos[i] - pos[j]
            d = np.linalg.norm(r)
            v[i] += q[j] / d + p[j] @ r / d**3 + r @ t[j] @ r / d**5
    return K_E * v


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("small_max", [64, 4, 0])
def test_against_plain_sum_batched_and_chunked(engine, small_max, monkeypatch):
    """Every path: torch's size-grouped dense blocks and flat chunked pair list; numba's one-config-per-thread
    half loop and its one-row-per-thread loop for large configs (thresholds lowered to reach them)."""
    import scfdata.reference.direct_sum_numba as numba_mod
    import scfdata.reference.realspace_torch as mod

    monkeypatch.setattr(mod, "_DENSE_MAX_ATOMS", small_max)
    monkeypatch.setattr(numba_mod, "_HALF_LOOP_MAX_ATOMS", small_max)
    systems = [_random_system(n) for n in (1, 2, 5, 9)]
    pos = np.concatenate([s[0] for s in systems])
    q = np.concatenate([s[1] for s in systems])
    p = np.concatenate([s[2] for s in systems])
    t = np.concatenate([s[3] for s in systems])
    ptr = np.array([0, 1, 3, 8, 17])
    want = np.concatenate([_plain_point_sum(*s) for s in systems])
    for max_pairs in (7, 10_000):
        got, _ = realspace_potential_field(pos, q, p, t, ptr, max_pairs=max_pairs, engine=engine)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-10)
    assert got[0] == 0.0  # a lone atom feels nothing


@pytest.mark.parametrize("sigma", [0.3, 1.5])
@pytest.mark.parametrize("engine", ENGINES)
def test_gaussian_charge_potential(sigma, engine):
    r = np.array([0.01, 0.2, 0.9, 1.7, 4.0, 12.0])
    pos = np.zeros((2 * len(r), 3))
    pos[1::2, 0] = r
    q = np.tile([0.0, 1.0], len(r))
    q[0::2] = 0.0
    ptr = np.arange(0, 2 * len(r) + 1, 2)
    v, _ = _esp(engine, pos, q, None, None, ptr, smearing_width=sigma)
    np.testing.assert_allclose(v[0::2], K_E * erf(r / (math.sqrt(2) * sigma)) / r, rtol=1e-12)


def test_erf_kernel_series_and_recursion_agree():
    a = 0.7
    r = np.array([0.5 / a * (1 - 1e-9), 0.5 / a * (1 + 1e-9)])
    g = g_erf(r, a, 3)
    for n in range(4):
        assert abs(g[n][0] - g[n][1]) <= 1e-6 * abs(g[n][0])
    # derivative structure: g1 = (1/r) dg0/dr by finite differences, both branches
    for rr in (0.3, 2.0):
        h = 1e-5
        d = (g_erf(np.array([rr + h]), a, 0)[0] - g_erf(np.array([rr - h]), a, 0)[0]) / (2 * h) / rr
        assert abs(d[0] - g_erf(np.array([rr]), a, 1)[1][0]) < 1e-8
        d = (g_erfc(np.array([rr + h]), a, 2)[1] - g_erfc(np.array([rr - h]), a, 2)[1]) / (2 * h) / rr
        want = g_erfc(np.array([rr]), a, 2)[2][0]
        assert abs(d[0] - want) < 1e-7 * abs(want)


@pytest.mark.parametrize("sigma", [0.0, 0.8])
@pytest.mark.parametrize("engine", ENGINES)
def test_dipole_and_quadrupole_are_limits_of_charge_arrays(sigma, engine):
    """A dipole = ±q at ±d/2 and a linear quadrupole = (q, −2q, q), for d -> 0 (point and Gaussian)."""
    probe = np.array([[1.1, -0.7, 1.9]])
    axis = np.array([0.3, 0.5, -0.81])
    axis /= np.linalg.norm(axis)
    d = 1e-3
    # dipole p = q d axis
    pos = np.concatenate([probe, [d / 2 * axis], [-d / 2 * axis]])
    v_charges, _ = _esp(engine, pos, np.array([0.0, 1 / d, -1 / d]), smearing_width=sigma)
    v_dip, _ = _esp(
        engine,
        np.concatenate([probe, [[0, 0, 0]]]), np.zeros(2), np.array([[0, 0, 0], axis]), smearing_width=sigma
    )
    assert abs(v_charges[0] - v_dip[0]) < 1e-5 * abs(v_dip[0])
    # traceless quadrupole: +Q at ±d a, −Q at ±d b (a ⟂ b): Θ = 3 Q d² (aa − bb)
    b = np.cross(axis, [1.0, 0, 0])
    b /= np.linalg.norm(b)
    big_q = 1 / d**2
    pos = np.concatenate([probe, [d * axis], [-d * axis], [d * b], [-d * b]])
    v_charges, _ = _esp(
        engine,
        pos, np.array([0, big_q, big_q, -big_q, -big_q]), smearing_width=sigma
    )
    theta = 3 * (np.outer(axis, axis) - np.outer(b, b))[None]
    v_quad, _ = _esp(
        engine,
        np.concatenate([probe, [[0, 0, 0]]]), np.zeros(2), None, np.concatenate([np.zeros((1, 3, 3)), theta]),
        smearing_width=sigma,
    )
    assert abs(v_charges[0] - v_quad[0]) < 1e-5 * abs(v_quad[0])


@pytest.mark.parametrize("sigma", [0.0, 1.0])
@pytest.mark.parametrize("engine", ENGINES)
def test_fields_are_minus_gradient(sigma, engine):
    pos, q, p, t = _random_system(6)
    v0, e0 = _esp(engine, pos, q, p, t, smearing_width=sigma, with_fields=True)
    h = 1e-5
    for i in (0, 3):
        for c in range(3):
            pp, pm = pos.copy(), pos.copy()
            pp[i, c] += h
            pm[i, c] -= h
            vp = _esp(engine, pp, q, p, t, smearing_width=sigma)[0][i]
            vm = _esp(engine, pm, q, p, t, smearing_width=sigma)[0][i]
            assert abs(-(vp - vm) / (2 * h) - e0[i, c]) < 1e-6 * max(1.0, abs(e0[i, c]))


@pytest.mark.parametrize("engine", ENGINES)
def test_self_interaction_include(engine):
    pos, q, p, t = _random_system(4)
    sigma = 1.5
    a, ea = _esp(engine, pos, q, p, t, smearing_width=sigma, with_fields=True)
    b, eb = _esp(engine, pos, q, p, t, smearing_width=sigma, self_interaction="include",
                                      with_fields=True)
    np.testing.assert_allclose(b - a, K_E * q * math.sqrt(2 / math.pi) / sigma, rtol=1e-12)
    # own smeared dipole's field at its centre: -p k (4 beta^3 / (3 sqrt(pi)))
    beta = 1 / (math.sqrt(2) * sigma)
    np.testing.assert_allclose(eb - ea, -K_E * p * 4 * beta**3 / (3 * math.sqrt(math.pi)), rtol=1e-12)
    with pytest.raises(ValueError, match="smearing_width"):
        _esp(engine, pos, q, p, t, self_interaction="include")


@pytest.mark.parametrize("engine", ENGINES)
def test_translation_rotation_permutation_invariance(engine):
    from scfdata.reference.multipoles import cartesian_to_multipoles, multipoles_to_cartesian, rotate_multipoles

    pos, q, p, t = _random_system(7)
    v, e = _esp(engine, pos, q, p, t, smearing_width=0.5, with_fields=True)
    rot = np.linalg.qr(RNG.normal(size=(3, 3)))[0]
    mp = rotate_multipoles(cartesian_to_multipoles(q, p, t), rot)
    q2, p2, t2 = multipoles_to_cartesian(mp)
    v2, e2 = _esp(engine, pos @ rot.T + [5, -2, 1], q2, p2, t2, smearing_width=0.5,
                                       with_fields=True)
    np.testing.assert_allclose(v2, v, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(e2, e @ rot.T, rtol=1e-9, atol=1e-9)
    perm = RNG.permutation(7)
    v3, _ = _esp(engine, pos[perm], q[perm], p[perm], t[perm], smearing_width=0.5)
    np.testing.assert_allclose(v3, v[perm], rtol=1e-12, atol=1e-12)


def test_compiled_radial_kernels_against_high_precision():
    """g_0..g_3 of erf(βr)/r (series below x = β²r² = 0.25, closed form above) and of 1/r, as the compiled
    kernels evaluate them, against the derivatives of erf(βr)/r in 40-digit arithmetic, r = 1e-6 … 10 Å,
    both sides of the switch."""
    mpmath = pytest.importorskip("mpmath")
    from scfdata.reference.multipole_kernels_numba import radial_point_or_erf

    mpmath.mp.dps = 40

    def exact(r, beta, n):  # g_{n+1} = (1/r) d g_n / dr, i.e. g_n = 2^n d^n f / ds^n with s = r²
        f = (lambda s: mpmath.erf(beta * mpmath.sqrt(s)) / mpmath.sqrt(s)) if beta else (lambda s: 1 / mpmath.sqrt(s))
        return float(2**n * mpmath.diff(f, mpmath.mpf(r) ** 2, n))

    for sigma in (0.05, 0.3, 1.0, 3.0):
        beta = 1 / (math.sqrt(2) * sigma)
        switch = 0.5 / beta
        for r in (1e-6, 1e-3, 0.1 * switch, switch * (1 - 1e-9), switch * (1 + 1e-9), 1.3 * switch, 2 * switch,
                  0.5, 2.0, 10.0):
            got = radial_point_or_erf(r * r, beta)
            for n in range(4):
                want = exact(r, mpmath.mpf(beta), n)
                assert abs(got[n] - want) <= 1e-11 * abs(want), (sigma, r, n, got[n], want)
    for r in (1e-3, 0.7, 10.0):
        got = radial_point_or_erf(r * r, None)
        for n in range(4):
            want = exact(r, None, n)
            assert abs(got[n] - want) <= 1e-13 * abs(want), (r, n)


@pytest.mark.parametrize("sigma", [0.0, 0.8])
@pytest.mark.parametrize("engine", ENGINES)
def test_coincident_atoms_raise(sigma, engine):
    """Two atoms at one point, or 1e-9 Å apart (round-off, not data), are refused; 1e-4 Å apart is data."""
    kw = {"smearing_width": sigma}
    for gap in (0.0, 1e-9):
        with pytest.raises(ValueError, match=r"atoms 0 and 1 of config 0 sit at the same position .*below 1e-06 Å"):
            _esp(engine, np.array([[0, 0, 0], [gap, 0, 0], [1, 0, 0]]), np.ones(3), **kw)
    v, _ = _esp(engine, np.array([[0, 0, 0], [1e-4, 0, 0]]), np.ones(2), **kw)
    want = K_E * (1e4 if sigma == 0 else erf(1e-4 / (math.sqrt(2) * sigma)) / 1e-4)
    np.testing.assert_allclose(v, want, rtol=1e-10)


# ----------------------------------------------------------------------------- padded buckets, torch inputs


def _molecule_batch(sizes, seed=3, min_distance=0.6):
    """Random molecules (atoms at least ``min_distance`` Å apart, as in real molecules), all multipoles."""
    rng = np.random.default_rng(seed)
    pos = []
    for n in sizes:
        pts = []
        while len(pts) < n:
            x = rng.uniform(-1, 1, 3) * (1.0 + n) ** (1 / 3) * 1.3 + rng.uniform(-20, 20)  # off-centre
            if all(np.linalg.norm(x - y) >= min_distance for y in pts):
                pts.append(x)
            if not pts:
                pts.append(x)
        pos.append(np.array(pts[:n]).reshape(n, 3))
    pos = np.concatenate(pos)
    n = pos.shape[0]
    q = rng.normal(size=n) * 0.5
    p = rng.normal(size=(n, 3)) * 0.2
    t = rng.normal(size=(n, 3, 3)) * 0.1
    t = t + t.transpose(0, 2, 1)
    t -= np.trace(t, axis1=1, axis2=2)[:, None, None] / 3 * np.eye(3)
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return pos, q, p, t, ptr


@pytest.mark.parametrize("sigma", [0.0, 0.7])
@pytest.mark.parametrize("parts", ["q", "qp", "qpt"])
def test_padded_buckets_equal_pair_path(sigma, parts, monkeypatch):
    """The padded dense buckets (several bucket steps, chunks and plane blocks) against the flat pair list.

    Potentials to 1e-10 V; fields to 1e-11 of the largest field (the dense path expands r_ij = x_i − x_j
    around each config's centroid, which costs a few digits for point quadrupole fields: ~1e-10 V/Å here).
    """
    import scfdata.reference.realspace_torch as mod

    sizes = [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 30, 31, 2, 3, 5, 12]
    pos, q, p, t, ptr = _molecule_batch(sizes)
    p = p if "p" in parts else None
    t = t if "t" in parts else None
    kw = dict(smearing_width=sigma, with_fields=True, engine="torch")
    monkeypatch.setattr(mod, "_DENSE_MAX_ATOMS", 0)  # every config through the pair list
    want_v, want_e = realspace_potential_field(pos, q, p, t, ptr, **kw)
    monkeypatch.setattr(mod, "_DENSE_MAX_ATOMS", 64)
    for step, chunk, block in ((1, 1 << 18, 1 << 17), (4, 50, 40), (8, 1 << 18, 7)):
        monkeypatch.setattr(mod, "_BUCKET_STEP", step)
        monkeypatch.setattr(mod, "_CHUNK_ELEMENTS", chunk)
        monkeypatch.setattr(mod, "_BLOCK_SLOTS", block)
        v, e = realspace_potential_field(pos, q, p, t, ptr, **kw)
        np.testing.assert_allclose(v, want_v, rtol=0, atol=1e-10)
        np.testing.assert_allclose(e, want_e, rtol=0, atol=1e-11 * np.abs(want_e).max())
        v_only, e_none = realspace_potential_field(pos, q, p, t, ptr, smearing_width=sigma, engine="torch")
        np.testing.assert_allclose(v_only, want_v, rtol=0, atol=1e-10)
        assert e_none is None
    assert np.abs(want_v).max() > 1.0  # a meaningful comparison
    assert want_v[0] == 0.0  # the lone atom


def test_torch_inputs_give_numpy_values_as_tensors():
    torch = pytest.importorskip("torch")
    pos, q, p, t, ptr = _molecule_batch([3, 70, 5, 12, 1])  # dense buckets and the pair list
    want_v, want_e = realspace_potential_field(pos, q, p, t, ptr, smearing_width=0.5, with_fields=True)
    args = [torch.from_numpy(a.copy()) for a in (pos, q, p, t, ptr)]
    v, e = realspace_potential_field(*args, smearing_width=0.5, with_fields=True)
    assert isinstance(v, torch.Tensor) and isinstance(e, torch.Tensor)
    vt, et = realspace_potential_field(*args, smearing_width=0.5, with_fields=True, engine="torch")
    np.testing.assert_allclose(vt.numpy(), want_v, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(et.numpy(), want_e, rtol=1e-12, atol=1e-11)
    assert v.dtype == torch.float64 and v.device == args[0].device and e.shape == (pos.shape[0], 3)
    np.testing.assert_allclose(v.numpy(), want_v, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(e.numpy(), want_e, rtol=1e-13, atol=1e-12)
    # float32 positions: float32 results (computed in float64 from the float32 inputs)
    pos32 = torch.from_numpy(pos).float()
    v32, _ = realspace_potential_field(pos32, q, p, t, ptr)
    assert v32.dtype == torch.float32
    want32, _ = realspace_potential_field(pos32.double().numpy(), q, p, t, ptr)
    np.testing.assert_allclose(v32.numpy(), want32, rtol=1e-6, atol=1e-6)
    # numpy in -> numpy out
    assert isinstance(realspace_potential_field(pos, q, p)[0], np.ndarray)


@pytest.mark.parametrize("sigma", [0.0, 1.0])
@pytest.mark.parametrize("size", [4, 80])  # dense bucket / pair list
@pytest.mark.parametrize("engine", ENGINES)
def test_coincident_atoms_in_a_batch_raise(sigma, size, engine):
    pos, q, p, _, ptr = _molecule_batch([3, size, 5])
    pos[5] = pos[4]
    with pytest.raises(ValueError, match="atoms 1 and 2 of config 1 sit at the same position"):
        _esp(engine, pos, q, p, None, ptr, smearing_width=sigma)


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_inputs_name_what_is_wrong(engine):
    pos, q, p, _, ptr = _molecule_batch([3, 4])
    bad = pos.copy()
    bad[5, 1] = np.inf
    with pytest.raises(ValueError, match=r"config 1: positions of atom 2 are not finite"):
        _esp(engine, bad, q, p, None, ptr)
    with pytest.raises(ValueError, match=r"`charges` must have shape \[7\]"):
        _esp(engine, pos, q[:3], p, None, ptr)
    with pytest.raises(ValueError, match="`ptr` must rise from 0 to n_atoms=7"):
        _esp(engine, pos, q, p, None, [0, 3, 6])


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_multipoles_of_a_lone_atom_and_raw_quadrupoles_are_refused(engine):
    """An atom alone in its config has ESP 0 without the self term, so a NaN charge there never reached the
    result; with the self term it gave NaN silently. A quadrupole must be symmetric and traceless (engines
    read one triangle or all of it; a raw second moment would be misread)."""
    pos, q, p, t, ptr = _molecule_batch([3, 1, 4])
    t = np.zeros((len(q), 3, 3))
    t[:, 0, 0], t[:, 1, 1] = 0.2, -0.2
    for name, col in (("charges", None), ("dipoles", 1)):
        bad_q, bad_p = q.copy(), p.copy()
        if col is None:
            bad_q[3] = np.nan
        else:
            bad_p[3, col] = np.inf
        for kw in ({}, {"smearing_width": 0.7, "self_interaction": "include", "with_fields": True}):
            with pytest.raises(ValueError, match=f"config 1: {name} of atom 0 are not finite"):
                _esp(engine, pos, bad_q, bad_p, t, ptr, **kw)
    raw = t.copy()
    raw[5] += np.eye(3) * 0.1
    with pytest.raises(ValueError, match="config 2: the quadrupole of atom 1 must be symmetric and traceless"):
        _esp(engine, pos, q, p, raw, ptr)
    raw = t.copy()
    raw[5, 0, 2] += 0.1
    with pytest.raises(ValueError, match=r"config 2: the quadrupole of atom 1 .* asymmetry 0\.1 e·Å²"):
        _esp(engine, pos, q, p, raw, ptr)


def test_close_pairs_fall_back_to_the_pair_list(monkeypatch):
    """A config with a pair much closer than its size is evaluated by the pair list: no loss of digits."""
    import scfdata.reference.realspace_torch as mod

    pos, q, p, t, ptr = _molecule_batch([6, 20, 9])
    pos[10] = pos[9] + [2e-3, 0.0, 0.0]  # config 1: R/d ~ 1e3
    monkeypatch.setattr(mod, "_DENSE_MAX_ATOMS", 0)
    want_v, want_e = realspace_potential_field(pos, q, p, t, ptr, with_fields=True, engine="torch")
    monkeypatch.setattr(mod, "_DENSE_MAX_ATOMS", 64)
    v, e = realspace_potential_field(pos, q, p, t, ptr, with_fields=True, engine="torch")
    assert np.abs(want_e).max() > 1e6
    np.testing.assert_allclose(v, want_v, rtol=1e-13, atol=1e-10)
    np.testing.assert_allclose(e, want_e, rtol=1e-13, atol=1e-10)


# ----------------------------------------------------------------------------- the two engines


@pytest.mark.parametrize("sigma", [0.0, 0.7])
@pytest.mark.parametrize("parts", ["q", "qp", "qpt"])
def test_numba_and_torch_engines_agree(sigma, parts):
    """Every kernel variant (point/Gaussian, l = 0..2, fields) on small configs and two large ones (numba's
    row-per-thread loop above 512 atoms, torch's pair list above 64): the two engines to ~1e-13."""
    sizes = [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 30, 31, 2, 3, 5, 12, 80, 600]
    pos, q, p, t, ptr = _molecule_batch(sizes, min_distance=0.4)
    p = p if "p" in parts else None
    t = t if "t" in parts else None
    kw = dict(smearing_width=sigma, with_fields=True)
    v_n, e_n = realspace_potential_field(pos, q, p, t, ptr, engine="numba", **kw)
    v_t, e_t = realspace_potential_field(pos, q, p, t, ptr, engine="torch", **kw)
    assert np.abs(v_t).max() > 1.0
    np.testing.assert_allclose(v_n, v_t, rtol=0, atol=1e-12 * np.abs(v_t).max())
    np.testing.assert_allclose(e_n, e_t, rtol=0, atol=1e-12 * np.abs(e_t).max())
    v_only, e_none = realspace_potential_field(pos, q, p, t, ptr, engine="numba", smearing_width=sigma)
    np.testing.assert_allclose(v_only, v_n, rtol=1e-13, atol=1e-13)  # with or without fields: same potential
    assert e_none is None


def test_numba_engine_does_not_depend_on_the_thread_count():
    numba = pytest.importorskip("numba")
    pos, q, p, t, ptr = _molecule_batch([5, 9, 600, 3, 17] * 3)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        v1, e1 = realspace_potential_field(pos, q, p, t, ptr, with_fields=True, engine="numba")
        numba.set_num_threads(before)
        v2, e2 = realspace_potential_field(pos, q, p, t, ptr, with_fields=True, engine="numba")
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(e1, e2)


@pytest.mark.parametrize("engine", ENGINES)
def test_dipole_columns_read_mace_scf_multipoles_in_place(engine):
    """``dipole_columns=(3, 1, 2)`` on a [Q, d_y, d_z, d_x] array (and a strided charge column) equals the
    Cartesian call."""
    pos, q, p, _, ptr = _molecule_batch([3, 12, 7])
    mp = np.column_stack([q, p[:, 1], p[:, 2], p[:, 0]])
    want_v, want_e = _esp(engine, pos, q, p, None, ptr, smearing_width=0.6, with_fields=True)
    v, e = _esp(engine, pos, mp[:, 0], mp, None, ptr, smearing_width=0.6, with_fields=True,
                dipole_columns=(3, 1, 2))
    np.testing.assert_allclose(v, want_v, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(e, want_e, rtol=1e-13, atol=1e-13)
    # the self field of smeared dipoles reads them in Cartesian order
    want_v, want_e = _esp(engine, pos, q, p, None, ptr, smearing_width=0.6, self_interaction="include",
                          with_fields=True)
    v, e = _esp(engine, pos, mp[:, 0], mp, None, ptr, smearing_width=0.6, self_interaction="include",
                with_fields=True, dipole_columns=(3, 1, 2))
    np.testing.assert_allclose(v, want_v, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(e, want_e, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match=r"`dipoles` must have shape \[22, >=5\]"):
        _esp(engine, pos, q, p, None, ptr, dipole_columns=(4, 1, 2))
    for bad in ((0, 1), (0, 0, 0), (3, -1, 2)):
        with pytest.raises(ValueError, match=r"`dipole_columns` must be 3 distinct non-negative column indices"):
            _esp(engine, pos, q, p, None, ptr, dipole_columns=bad)


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="Unknown engine 'cuda'. Must be one of 'auto', 'numba', 'torch'"):
        realspace_potential_field(np.zeros((2, 3)), np.ones(2), engine="cuda")
