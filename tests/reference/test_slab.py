"""Slab ESPs: against an independent 2D Ewald (Parry) sum, vacuum convergence, gauge invariances."""

import itertools
import math

import numpy as np
import pytest
from scipy.special import erfc, erfcx

from scfdata.constants import K_E
from scfdata.reference.esp_realspace import realspace_potential_field
from scfdata.reference.multipoles import cartesian_to_multipoles, multipoles_to_cartesian, rotate_multipoles
from scfdata.reference.slab import molecule_in_box_potential_field, slab_potential_field

RNG = np.random.default_rng(21)
CELL = np.array([[5.0, 0.0, 0.0], [1.3, 4.6, 0.0], [0.0, 0.0, 30.0]])


def _parry_2d_ewald(pos, q, cell, alpha=0.8, nreal=4, nk=10):
    """Exact 2D-periodic potential of point charges (Parry/Heyes 2D Ewald), written independently."""
    a, b = cell[0, :2], cell[1, :2]
    area = abs(a[0] * b[1] - a[1] * b[0])
    recip = 2 * math.pi * np.linalg.inv(np.array([a, b])).T
    n = len(q)
    v = np.zeros(n)
    for i in range(n):
        for j in range(n):
            d = pos[i] - pos[j]
            zz = d[2]
            for h, k in itertools.product(range(-nreal, nreal + 1), repeat=2):
                if i == j and h == k == 0:
                    continue
                r = np.linalg.norm(d + [*(h * a + k * b), 0])
                v[i] += q[j] * erfc(alpha * r) / r
            for h, k in itertools.product(range(-nk, nk + 1), repeat=2):
                if h == k == 0:
                    continue
                kv = h * recip[0] + k * recip[1]
                km = np.linalg.norm(kv)
                x1, x2 = km / (2 * alpha) + alpha * zz, km / (2 * alpha) - alpha * zz
                radial = math.exp(-(km / (2 * alpha)) ** 2 - (alpha * zz) ** 2) * (erfcx(x1) + erfcx(x2))
                v[i] += q[j] * math.pi / area * math.cos(kv @ d[:2]) / km * radial
            v[i] -= q[j] * 2 * math.pi / area * (zz * math.erf(alpha * zz)
                                                 + math.exp(-(alpha * zz) ** 2) / (alpha * math.sqrt(math.pi)))
        v[i] -= q[i] * 2 * alpha / math.sqrt(math.pi)
    return K_E * v


def _slab(n=6, charged=False):
    frac = RNG.uniform(size=(n, 2))
    pos = np.concatenate([frac @ CELL[:2, :2], RNG.uniform(8.0, 10.5, size=(n, 1))], axis=1)
    q = RNG.normal(size=n)
    if not charged:
        q -= q.mean()
    p = RNG.normal(size=(n, 3)) * 0.3
    t = RNG.normal(size=(n, 3, 3)) * 0.2
    t = t + t.transpose(0, 2, 1)
    t -= np.trace(t, axis1=1, axis2=2)[:, None, None] / 3 * np.eye(3)
    return pos, q, p, t


@pytest.mark.parametrize("charged", [False, True])
def test_charges_match_independent_2d_ewald(charged):
    pos, q, _, _ = _slab(5, charged)
    want = _parry_2d_ewald(pos, q, CELL)
    got, _ = slab_potential_field(pos, q, None, None, CELL, tolerance=1e-8)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_converges_with_vacuum_and_auto_meets_tolerance():
    pos, q, p, t = _slab(6)
    ref, _ = slab_potential_field(pos, q, p, t, CELL, tolerance=1e-12, vacuum=60.0)
    errs = [np.abs(slab_potential_field(pos, q, p, t, CELL, tolerance=1e-12, vacuum=g)[0] - ref).max()
            for g in (1.0, 3.0, 6.0)]
    assert errs[0] > errs[1] > errs[2]
    auto, _ = slab_potential_field(pos, q, p, t, CELL, tolerance=1e-6)
    assert np.abs(auto - ref).max() < 1e-6


@pytest.mark.parametrize("sigma", [0.0, 0.9])
@pytest.mark.parametrize("charged", [False, True])
def test_invariant_under_z_translation_and_cell_height(sigma, charged):
    pos, q, p, t = _slab(6, charged)
    v0, e0 = slab_potential_field(pos, q, p, t, CELL, smearing_width=sigma, with_fields=True, tolerance=1e-9)
    cell2 = CELL.copy()
    cell2[2, 2] = 80.0
    v1, e1 = slab_potential_field(pos + [2.2, -0.7, 13.7], q, p, t, cell2, smearing_width=sigma,
                                  with_fields=True, tolerance=1e-9)
    np.testing.assert_allclose(v1, v0, atol=1e-8)
    np.testing.assert_allclose(e1, e0, atol=1e-7)


def test_rotation_and_permutation():
    pos, q, p, t = _slab(5)
    v, e = slab_potential_field(pos, q, p, t, CELL, tolerance=1e-9, with_fields=True)
    rot = np.linalg.qr(RNG.normal(size=(3, 3)))[0]
    q2, p2, t2 = multipoles_to_cartesian(rotate_multipoles(cartesian_to_multipoles(q, p, t), rot))
    v2, e2 = slab_potential_field(pos @ rot.T, q2, p2, t2, CELL @ rot.T, tolerance=1e-9, with_fields=True)
    np.testing.assert_allclose(v2, v, atol=1e-8)
    np.testing.assert_allclose(e2, e @ rot.T, atol=1e-7)
    perm = RNG.permutation(5)
    v3, _ = slab_potential_field(pos[perm], q[perm], p[perm], t[perm], CELL, tolerance=1e-9)
    np.testing.assert_allclose(v3, v[perm], atol=1e-8)


@pytest.mark.parametrize("sigma", [0.0, 0.7])
def test_fields_are_minus_gradient_at_probes(sigma):
    pos, q, p, t = _slab(6, charged=True)
    q[[0, 3]], p[[0, 3]], t[[0, 3]] = 0.0, 0.0, 0.0
    _, e = slab_potential_field(pos, q, p, t, CELL, smearing_width=sigma, tolerance=1e-10, with_fields=True)
    h = 1e-5
    for i in (0, 3):
        for c in range(3):
            pp, pm = pos.copy(), pos.copy()
            pp[i, c] += h
            pm[i, c] -= h
            vp = slab_potential_field(pp, q, p, t, CELL, smearing_width=sigma, tolerance=1e-10, vacuum=40.0)[0][i]
            vm = slab_potential_field(pm, q, p, t, CELL, smearing_width=sigma, tolerance=1e-10, vacuum=40.0)[0][i]
            assert abs(-(vp - vm) / (2 * h) - e[i, c]) < 2e-6 * max(1.0, abs(e[i, c]))


def test_neutral_slab_far_field_gauge():
    """Far above and below a neutral slab the potential is ±2π k M_z / A (mean of the two levels is 0)."""
    pos, q, p, _ = _slab(4)
    probes = np.array([[0.3, 0.2, 9.0 + 40.0], [0.3, 0.2, 9.0 - 40.0]])
    allpos = np.concatenate([pos, probes])
    v, _ = slab_potential_field(allpos, np.concatenate([q, [0, 0]]), np.concatenate([p, np.zeros((2, 3))]), None,
                                CELL, tolerance=1e-9)
    area = np.linalg.norm(np.cross(CELL[0], CELL[1]))
    m_z = np.sum(q * pos[:, 2] + p[:, 2])
    np.testing.assert_allclose(v[-2:], [2 * math.pi * K_E * m_z / area, -2 * math.pi * K_E * m_z / area], atol=1e-6)


def test_molecule_in_box_is_realspace():
    pos, q, p, t = _slab(4)
    a, _ = molecule_in_box_potential_field(pos, q, p, t, CELL, tolerance=1e-3)
    b, _ = realspace_potential_field(pos, q, p, t)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sigma", [0.0, 0.7])
def test_many_slabs_in_one_call_equal_one_by_one(sigma, monkeypatch):
    """Three slabs (different thickness, one charged, one in a rotated frame) in one batched call equal three
    single calls; with every auxiliary box sent to PME instead, equal within the tolerance."""
    import scfdata.reference.periodic as periodic
    from scfdata.reference.slab import slabs_potential_field

    rot = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))[0]
    systems = [(*_slab(6), CELL), (*_slab(9, charged=True), CELL * [1.2, 1.0, 1.0])]
    pos, q, p, t = _slab(4)
    mp = rotate_multipoles(cartesian_to_multipoles(q, p, t), rot)
    systems.append((pos @ rot.T, *multipoles_to_cartesian(mp), CELL @ rot.T))
    ptr = np.concatenate([[0], np.cumsum([len(s[1]) for s in systems])])
    cat = [np.concatenate([s[k] for s in systems]) for k in range(4)]
    cells = np.stack([s[4] for s in systems])
    kw = dict(smearing_width=sigma, with_fields=True, tolerance=1e-8)
    v, e = slabs_potential_field(*cat, ptr, cells, **kw)
    want = [slab_potential_field(*s[:4], s[4], **kw) for s in systems]
    want_v, want_e = np.concatenate([w[0] for w in want]), np.concatenate([w[1] for w in want])
    assert np.abs(want_v).max() > 1.0
    np.testing.assert_allclose(v, want_v, rtol=0, atol=1e-10 * np.abs(want_v).max())
    np.testing.assert_allclose(e, want_e, rtol=0, atol=1e-10 * np.abs(want_e).max())
    monkeypatch.setattr(periodic, "PME_MIN_ATOMS", 1)
    v_pme, _ = slabs_potential_field(*cat, ptr, cells, **kw)
    np.testing.assert_allclose(v_pme, want_v, rtol=0, atol=1e-7)
    if sigma == 0.0:  # charges only: the two slabs in the xy plane against the independent 2D Ewald sum
        monkeypatch.setattr(periodic, "PME_MIN_ATOMS", 600)
        v_q, _ = slabs_potential_field(cat[0], cat[1], None, None, ptr, cells, tolerance=1e-8)
        for c in (0, 1):
            a, b = ptr[c], ptr[c + 1]
            np.testing.assert_allclose(v_q[a:b], _parry_2d_ewald(cat[0][a:b], cat[1][a:b], cells[c]), atol=1e-6)
    with pytest.raises(ValueError, match="config 7: a slab needs two independent in-plane cell vectors"):
        bad = cells.copy()
        bad[1, 1] = bad[1, 0]
        slabs_potential_field(*cat, ptr, bad, config_index=[3, 7, 9])


def test_unreduced_in_plane_cell_gets_enough_vacuum():
    """a = (10, 0, 0), b = (40, 3, 0) is the 10 x 3 Å lattice: the automatic vacuum must follow the shortest
    reciprocal vector of the lattice (2π/10 Å⁻¹), not of the cell vectors as given (it was 2.09 Å⁻¹ from a
    small search, and the ESP off by 2e-2 V at tolerance 1e-6)."""
    rng = np.random.default_rng(8)
    reduced = np.array([[10.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 30.0]])
    skewed = reduced.copy()
    skewed[1] += 4 * reduced[0]
    n = 6
    pos = np.concatenate([rng.uniform(size=(n, 2)) @ reduced[:2, :2], rng.uniform(8.0, 10.5, (n, 1))], axis=1)
    q = rng.normal(size=n)
    q -= q.mean()
    p = rng.normal(size=(n, 3)) * 0.3
    want = _parry_2d_ewald(pos, q, reduced)
    got, _ = slab_potential_field(pos, q, None, None, skewed, tolerance=1e-6)
    np.testing.assert_allclose(got, want, atol=2e-6)
    ref, _ = slab_potential_field(pos, q, p, None, reduced, tolerance=1e-9)
    got, _ = slab_potential_field(pos, q, p, None, skewed, tolerance=1e-6)
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_non_finite_input_names_its_atom():
    """One bad coordinate must not be blamed on atom 0 of its slab (the centring used to spread it)."""
    from scfdata.reference.slab import slabs_potential_field

    (p0, q0, d0, _), (p1, q1, d1, _) = _slab(4), _slab(5)
    pos, q, p = np.concatenate([p0, p1]), np.concatenate([q0, q1]), np.concatenate([d0, d1])
    cells = np.stack([CELL, CELL])
    for name, arr, col in (("positions", pos, 2), ("dipoles", p, 0), ("charges", q, None)):
        bad = arr.copy()
        if col is None:
            bad[4 + 2] = np.inf
        else:
            bad[4 + 2, col] = np.nan
        args = {"positions": pos, "charges": q, "dipoles": p} | {name: bad}
        with pytest.raises(ValueError, match=f"config 1: {name} of atom 2 are not finite"):
            slabs_potential_field(args["positions"], args["charges"], args["dipoles"], None, [0, 4, 9], cells)
    nan_cell = cells.copy()
    nan_cell[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="config 1: the in-plane cell vectors are not finite"):
        slabs_potential_field(pos, q, p, None, [0, 4, 9], nan_cell)
