"""Batched compiled Ewald: Madelung constants and the Wigner potential in one batch of many cell choices,
agreement with the per-cell numpy Ewald (itself checked against converged sums, limits and −∇V) for every
multipole order, width and boundary detail, fields by finite differences, errors naming the config."""

import math
import warnings

import crystals  # tests/reference/crystals.py: Madelung crystals in several cell choices
import numpy as np
import pytest

from scfdata.constants import K_E
from scfdata.reference.esp import compute_esps
from scfdata.reference.ewald import ewald_potential_field
from scfdata.reference.ewald_numba import ewald_many

RNG = np.random.default_rng(11)


def _batch(systems):
    """Concatenate [(pos, q, p, t, cell), ...] into (pos, q, p, t, ptr, cells); p/t None when all None."""
    ptr = np.concatenate([[0], np.cumsum([len(s[1]) for s in systems])])
    cat = [np.concatenate([s[k] for s in systems]) if systems[0][k] is not None else None for k in range(4)]
    return (*cat, ptr, np.stack([s[4] for s in systems]))


def test_madelung_constants_and_wigner_potential_in_one_batch():
    """Three crystals x five cell choices (primitive, conventional, 3x3x3, rotated, triclinic) and a lone
    charge in two boxes, all in one call: Madelung constants to 1e-6 relative, Wigner's −2.837297 k q/L."""
    systems, want = [], []
    for name in crystals.NAMES:
        *_, d, madelung = crystals.crystal(name)
        for _, pos, q, cell in crystals.cell_choices(name):
            systems.append((pos, q, None, None, cell))
            want.append(-madelung * K_E * q / d)
    for length in (4.0, 9.0):
        systems.append((np.array([[0.3, 0.2, 0.1]]), np.array([1.0]), None, None, np.eye(3) * length))
        want.append(np.array([-2.8372974794806 * K_E / length]))
    pos, q, _, _, ptr, cells = _batch(systems)
    v, e = ewald_many(pos, q, None, None, ptr, cells, tolerance=1e-8)
    assert e is None
    np.testing.assert_allclose(v, np.concatenate(want), rtol=1e-6)


def _random_cells(seed, n_cells=9, quads=True):
    rng = np.random.default_rng(seed)
    systems = []
    for c in range(n_cells):
        n = int(rng.integers(1, 30))
        cell = np.diag(rng.uniform(5.0, 9.0, 3)) + (rng.normal(size=(3, 3)) * 1.2 if c % 2 else 0.0)
        pos = rng.uniform(size=(n, 3)) @ cell + rng.normal(size=3) * 20  # anywhere: wrapped inside
        q = rng.normal(size=n)
        if c % 3:
            q -= q.mean()  # every third cell stays charged
        p = rng.normal(size=(n, 3)) * 0.3
        t = rng.normal(size=(n, 3, 3)) * 0.2
        t = t + t.transpose(0, 2, 1)
        t -= np.trace(t, axis1=1, axis2=2)[:, None, None] / 3 * np.eye(3)
        systems.append((pos, q, p, t if quads else None, cell))
    return systems


@pytest.mark.parametrize("sigma", [0.0, 0.6, 1.5])
@pytest.mark.parametrize("parts", ["q", "qp", "qpt"])
def test_equals_per_cell_numpy_ewald(sigma, parts):
    """Triclinic and orthorhombic, neutral and charged cells of 1-29 atoms, point and Gaussian (1.5 Å: pure
    reciprocal sum), with fields: the batch equals the per-cell numpy Ewald to 1e-10 of the largest value."""
    systems = _random_cells(int(sigma * 10) + len(parts))
    pos, q, p, t, ptr, cells = _batch(systems)
    p = p if "p" in parts else None
    t = t if "t" in parts else None
    kw = dict(smearing_width=sigma, with_fields=True, tolerance=1e-7)
    v, e = ewald_many(pos, q, p, t, ptr, cells, **kw)
    ref = [ewald_potential_field(pos[a:b], q[a:b], None if p is None else p[a:b], None if t is None else t[a:b],
                                 cells[c], **kw) for c, (a, b) in enumerate(zip(ptr[:-1], ptr[1:]))]
    ref_v, ref_e = np.concatenate([r[0] for r in ref]), np.concatenate([r[1] for r in ref])
    assert np.abs(ref_v).max() > 1.0
    np.testing.assert_allclose(v, ref_v, rtol=0, atol=1e-10 * np.abs(ref_v).max())
    np.testing.assert_allclose(e, ref_e, rtol=0, atol=1e-10 * np.abs(ref_e).max())
    if sigma > 0:
        v_self, _ = ewald_many(pos, q, p, t, ptr, cells, smearing_width=sigma, self_interaction="include",
                               tolerance=1e-7)
        np.testing.assert_allclose(v_self - v, K_E * q * math.sqrt(2 / math.pi) / sigma, rtol=1e-10)


@pytest.mark.parametrize("sigma", [0.0, 0.8])
def test_fields_are_minus_gradient(sigma):
    """At multipole-free probe atoms, one per cell (an atom's own images move with it: −∂V_i/∂r_i is the
    field only where atom i carries nothing)."""
    systems = _random_cells(3, n_cells=3, quads=False)
    pos, q, p, _, ptr, cells = _batch(systems)
    probes = [0, int(ptr[1]), int(ptr[2]) + 1]
    q[probes], p[probes] = 0.0, 0.0
    kw = dict(smearing_width=sigma, tolerance=1e-10)
    _, e = ewald_many(pos, q, p, None, ptr, cells, with_fields=True, **kw)
    h = 1e-5
    for i in probes:
        for c in range(3):
            pp, pm = pos.copy(), pos.copy()
            pp[i, c] += h
            pm[i, c] -= h
            vp, vm = ewald_many(pp, q, p, None, ptr, cells, **kw)[0], ewald_many(pm, q, p, None, ptr, cells, **kw)[0]
            assert abs(-(vp[i] - vm[i]) / (2 * h) - e[i, c]) < 1e-6 * max(1.0, abs(e[i, c]))


def test_does_not_depend_on_the_thread_count_or_the_batch():
    numba = pytest.importorskip("numba")
    pos, q, p, t, ptr, cells = _batch(_random_cells(5))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        v1, e1 = ewald_many(pos, q, p, t, ptr, cells, with_fields=True)
    finally:
        numba.set_num_threads(before)
    v2, e2 = ewald_many(pos, q, p, t, ptr, cells, with_fields=True)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(e1, e2)
    a, b = int(ptr[4]), int(ptr[5])  # one cell alone = the same cell in the batch
    v_one, _ = ewald_many(pos[a:b], q[a:b], p[a:b], t[a:b], [0, b - a], cells[4:5])
    np.testing.assert_allclose(v_one, v2[a:b], rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:config .* carries a net charge")
def test_compute_esps_batches_small_cells_and_names_bad_configs():
    """compute_esps sends all small cells to one call (equal to the per-cell engine), warns per charged cell,
    and an error names the config by its index in the whole batch."""
    systems = _random_cells(7, n_cells=4, quads=False)
    pos, q, p, _, ptr, cells = _batch(systems)
    mp = np.column_stack([q, p[:, 1], p[:, 2], p[:, 0]])
    pbc = np.ones((4, 3), bool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v, _ = compute_esps(pos, mp, ptr, cells, pbc)
    charged = [c for c in range(4) if abs(q[ptr[c]:ptr[c + 1]].sum()) > 1e-8]
    assert [str(w.message).split(" ")[1] for w in caught] == [str(c) for c in charged]
    ref = np.concatenate([ewald_potential_field(pos[a:b], q[a:b], p[a:b], None, cells[c])[0]
                          for c, (a, b) in enumerate(zip(ptr[:-1], ptr[1:]))])
    np.testing.assert_allclose(v, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    bad = pos.copy()
    bad[ptr[2] + 1] = bad[ptr[2]] + cells[2][0]  # an atom on a periodic image of another, config 2
    open_first = np.concatenate([np.zeros((2, 3)) + [[0, 0, 0], [1, 0, 0]], bad])
    mp2 = np.concatenate([np.zeros((2, 4)), mp])
    with pytest.raises(ValueError, match="config 3: two atoms, or an atom and a periodic image"):
        compute_esps(open_first, mp2, np.concatenate([[0], ptr + 2]), np.concatenate([np.zeros((1, 3, 3)), cells]),
                     np.concatenate([[[False] * 3], pbc]))
    flat = cells.copy()
    flat[1, 2] = flat[1, 0]
    with pytest.raises(ValueError, match="config 1: periodic evaluation needs a cell with non-zero volume"):
        ewald_many(pos, q, p, None, ptr, flat)
    with pytest.raises(ValueError, match=f"`ptr` must rise from 0 to n_atoms={len(q)}"):
        ewald_many(pos, q, p, None, ptr[:-1], cells[:-1])
    with pytest.raises(ValueError, match=rf"`dipoles` must have shape \[{len(q)}, 3\]"):
        ewald_many(pos, q, p[:-1], None, ptr, cells)
    with pytest.raises(ValueError, match="`cells` must have one"):
        ewald_many(pos, q, p, None, ptr, cells[:-1])


def _image_of_another(seed):
    """A triclinic cell of 8 atoms in which atom 5 is put on a random periodic image of atom 2 (a lattice
    combination that is not exact in floating point after the fractional round trip)."""
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(5.0, 9.0, 3)) + rng.normal(size=(3, 3)) * 1.2
    pos = rng.uniform(size=(8, 3)) @ cell + rng.normal(size=3) * 10
    pos[5] = pos[2] + rng.integers(-3, 4, size=3) @ cell
    return pos, cell


def test_an_atom_on_an_image_of_another_is_an_error_in_every_periodic_engine(monkeypatch):
    """Coincident up to round-off (~1e-15 Å) used to pass unnoticed (values of 1e16 V) unless exactly zero:
    every engine (compiled Ewald, numpy Ewald, PME, the dispatcher to PME) refuses atoms closer than 1e-6 Å."""
    from scfdata.reference import periodic
    from scfdata.reference.pme import pme_potential_field

    monkeypatch.setattr(periodic, "PME_MIN_ATOMS", 8)  # the dispatcher sends these cells to PME

    for seed in range(20):
        pos, cell = _image_of_another(seed)
        q = np.random.default_rng(seed).normal(size=8)
        with pytest.raises(ValueError, match=r"config 1: two atoms, or an atom and a periodic image .*1e-06 Å"):
            ewald_many(np.concatenate([pos, pos]), np.concatenate([q, q]), None, None, [0, 8, 16],
                       np.stack([cell + np.eye(3) * 0.5, cell]))  # config 0: the atoms apart, no image overlap
        for engine in (ewald_potential_field, pme_potential_field):
            with pytest.raises(ValueError, match=r"sit at the same position \(closer than 1e-06 Å\)"):
                engine(pos, q, None, None, cell)
        with pytest.raises(ValueError, match=r"config 4: atoms \d and \d \(or an image of it\) sit at the same"):
            periodic.periodic_potential_field(pos, q, None, None, [0, 8], cell[None], config_index=[4])


def test_cells_and_quadrupoles_are_checked():
    """A non-finite cell is named as such (it used to read as coincident atoms); a quadrupole that is not
    symmetric and traceless (a raw second moment) is refused, naming its config and atom."""
    from scfdata.reference.periodic import periodic_potential_field

    systems = _random_cells(4, n_cells=3)
    pos, q, p, t, ptr, cells = _batch(systems)
    nan_cell = cells.copy()
    nan_cell[2, 1, 1] = np.nan
    for engine in (ewald_many, periodic_potential_field):
        with pytest.raises(ValueError, match="config 2: periodic evaluation needs a cell of finite vectors"):
            engine(pos, q, p, t, ptr, nan_cell)
        raw = t.copy()
        k = ptr[1] + 1
        raw[k] += np.eye(3) * 0.3  # a trace
        with pytest.raises(ValueError, match="config 1: the quadrupole of atom 1 must be symmetric and traceless"):
            engine(pos, q, p, raw, ptr, cells)
        raw = t.copy()
        raw[k, 0, 1] += 0.2  # asymmetric
        with pytest.raises(ValueError, match="config 1: the quadrupole of atom 1 must be symmetric and traceless"):
            engine(pos, q, p, raw, ptr, cells)
