"""The public entry point: dispatch by boundary, options, validation, torch input."""

import math

import numpy as np
import pytest

from scfdata.constants import K_E
from scfdata.reference.esp import compute_esps
from scfdata.reference.esp_realspace import realspace_potential_field
from scfdata.reference.multipoles import multipoles_to_cartesian

RNG = np.random.default_rng(11)


def _molecules(sizes):
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = ptr[-1]
    pos = RNG.uniform(-2, 2, size=(n, 3))
    mp = RNG.normal(size=(n, 9)) * 0.3
    cells = np.zeros((len(sizes), 3, 3))
    pbc = np.zeros((len(sizes), 3), bool)
    return pos, mp, ptr, cells, pbc


@pytest.mark.parametrize("max_l", [0, 1, 2])
def test_realspace_uses_max_l_columns(max_l):
    pos, mp, ptr, cells, pbc = _molecules([3, 5, 2])
    v, e = compute_esps(pos, mp, ptr, cells, pbc, max_l=max_l, with_fields=True)
    q, p, t = multipoles_to_cartesian(mp, max_l)
    want, we = realspace_potential_field(pos, q, p, t, ptr, with_fields=True, engine="torch")  # other engine
    np.testing.assert_allclose(v, want, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(e, we, rtol=1e-11, atol=1e-11)


def test_source_charges_ignores_higher_columns():
    pos, mp, ptr, cells, pbc = _molecules([4, 4])
    a, f = compute_esps(pos, mp, ptr, cells, pbc, source="charges")
    b, _ = compute_esps(pos, mp[:, :1], ptr, cells, pbc, max_l=0)
    np.testing.assert_array_equal(a, b)
    assert f is None


def test_self_include_only_for_smeared():
    pos, mp, ptr, cells, pbc = _molecules([3])
    with pytest.raises(ValueError, match="smearing_width > 0"):
        compute_esps(pos, mp, ptr, cells, pbc, self_interaction="include")
    a, _ = compute_esps(pos, mp, ptr, cells, pbc, smearing_width=1.5)
    b, _ = compute_esps(pos, mp, ptr, cells, pbc, smearing_width=1.5, self_interaction="include")
    np.testing.assert_allclose(b - a, K_E * mp[:, 0] * math.sqrt(2 / math.pi) / 1.5, rtol=1e-12)


def test_bad_pbc_names_config():
    pos, mp, ptr, cells, pbc = _molecules([2, 2])
    pbc[1] = [True, False, False]
    with pytest.raises(ValueError, match=r"config 1 has pbc=\[True, False, False\]"):
        compute_esps(pos, mp, ptr, cells, pbc)


def test_validation_messages():
    pos, mp, ptr, cells, pbc = _molecules([2])
    with pytest.raises(ValueError, match="shape \\[n_atoms, 3\\]"):
        compute_esps(pos[:, :2], mp, ptr, cells, pbc)
    with pytest.raises(ValueError, match="max_l=2 needs 9"):
        compute_esps(pos, mp[:, :4], ptr, cells, pbc, max_l=2)
    with pytest.raises(ValueError, match="Must be one of"):
        compute_esps(pos, mp, ptr, cells, pbc, boundary="open")


def test_molecule_in_box_equals_realspace():
    pos, mp, ptr, cells, pbc = _molecules([3, 4])
    cells[:] = np.eye(3) * 10
    pbc[:] = True
    a, _ = compute_esps(pos, mp, ptr, cells, pbc, boundary="molecule_in_box")
    b, _ = compute_esps(pos, mp, ptr, cells, pbc, boundary="realspace")
    np.testing.assert_array_equal(a, b)


def test_torch_input_gives_torch_output():
    torch = pytest.importorskip("torch")
    pos, mp, ptr, cells, pbc = _molecules([3, 2])
    v, e = compute_esps(torch.tensor(pos), torch.tensor(mp), torch.tensor(ptr), torch.tensor(cells),
                        torch.tensor(pbc), with_fields=True)
    assert isinstance(v, torch.Tensor) and v.dtype == torch.float64
    np.testing.assert_allclose(v.numpy(), compute_esps(pos, mp, ptr, cells, pbc)[0])


@pytest.mark.parametrize("max_l", [1, 2])
def test_torch_open_boundary_stays_torch_and_matches_numpy(max_l):
    """Open boundaries only: the torch engine runs on the tensors (the GPU path); same values as numpy."""
    torch = pytest.importorskip("torch")
    pos, mp, ptr, cells, pbc = _molecules([3, 7, 2, 70])  # dense buckets and the pair list
    want_v, want_e = compute_esps(pos, mp, ptr, cells, pbc, max_l=max_l, with_fields=True)
    v, e = compute_esps(torch.tensor(pos), torch.tensor(mp), torch.tensor(ptr), torch.tensor(cells),
                        torch.tensor(pbc), max_l=max_l, with_fields=True)
    assert isinstance(v, torch.Tensor) and isinstance(e, torch.Tensor) and v.dtype == torch.float64
    np.testing.assert_allclose(v.numpy(), want_v, rtol=0, atol=1e-10)
    np.testing.assert_allclose(e.numpy(), want_e, rtol=0, atol=1e-9)
    q, p, t = multipoles_to_cartesian(torch.tensor(mp), max_l)
    q_np, p_np, t_np = multipoles_to_cartesian(mp, max_l)
    np.testing.assert_array_equal(p.numpy(), p_np)
    if max_l == 2:
        np.testing.assert_array_equal(t.numpy(), t_np)


def test_mixed_batch_dispatch_matches_engines():
    from scfdata.reference.ewald import ewald_potential_field
    from scfdata.reference.slab import slab_potential_field

    sizes = [3, 4, 2, 5, 3]
    pos, mp, ptr, cells, pbc = _molecules(sizes)
    mp = mp[:, :4]
    for c in range(5):
        mp[ptr[c]:ptr[c + 1], 0] -= mp[ptr[c]:ptr[c + 1], 0].mean()
    cells[1] = np.eye(3) * 6.0
    pbc[1] = True
    cells[3] = [[6.0, 0, 0], [0.5, 5.5, 0], [0, 0, 20.0]]
    pbc[3] = [True, True, False]
    v, e = compute_esps(pos, mp, ptr, cells, pbc, with_fields=True, smearing_width=0.5)
    q, p, _ = multipoles_to_cartesian(mp)
    open_idx = np.r_[0:3, 7:9, 14:17]
    vr, _ = realspace_potential_field(pos[open_idx], q[open_idx], p[open_idx], None, np.array([0, 3, 5, 8]),
                                      smearing_width=0.5)
    np.testing.assert_allclose(v[open_idx], vr, rtol=1e-13)
    vp, ep = ewald_potential_field(pos[3:7], q[3:7], p[3:7], None, cells[1], smearing_width=0.5, with_fields=True)
    np.testing.assert_allclose(v[3:7], vp, rtol=1e-13)
    np.testing.assert_allclose(e[3:7], ep, rtol=1e-13)
    vs, _ = slab_potential_field(pos[9:14], q[9:14], p[9:14], None, cells[3], smearing_width=0.5)
    np.testing.assert_allclose(v[9:14], vs, rtol=1e-13)


def test_madelung_through_public_api_and_charged_warning():
    a = 5.64
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    pos = np.concatenate([fcc, fcc + [0.5, 0, 0]]) * a
    mp = np.repeat([1.0, -1.0], 4)[:, None]
    v, _ = compute_esps(pos, mp, np.array([0, 8]), (np.eye(3) * a)[None], np.ones((1, 3), bool), max_l=0)
    np.testing.assert_allclose(-v * mp[:, 0] * (a / 2) / K_E, 1.747564594633, rtol=1e-6)
    with pytest.warns(UserWarning, match="neutralising background"):
        compute_esps(pos[:1], mp[:1], np.array([0, 1]), (np.eye(3) * a)[None], np.ones((1, 3), bool), max_l=0)


@pytest.mark.filterwarnings("ignore:config .* carries a net charge")
def test_mixed_batch_messages_name_the_right_config():
    """Configs interleaved across boundaries: charged-cell warnings and errors name each config by its index
    in the whole batch (atoms counted within the config); a multipole array too narrow for max_l says so."""
    import warnings

    rng = np.random.default_rng(2)
    sizes = [4, 3, 5, 3, 6]  # open, pbc (neutral), open (charged), pbc (charged), open
    ptr = np.concatenate([[0], np.cumsum(sizes)])
    pos = rng.uniform(0, 5, (ptr[-1], 3))
    mp = np.zeros((ptr[-1], 4))
    mp[:, 0] = rng.normal(size=ptr[-1])
    for c in (1,):  # neutral cell
        mp[ptr[c]:ptr[c + 1], 0] -= mp[ptr[c]:ptr[c + 1], 0].mean()
    mp[ptr[3]:ptr[4], 0] = [0.5, 0.25, 0.25]  # charged cell, +1 e
    cells = np.stack([np.zeros((3, 3)), np.eye(3) * 6, np.zeros((3, 3)), np.eye(3) * 6, np.zeros((3, 3))])
    pbc = np.array([[False] * 3, [True] * 3, [False] * 3, [True] * 3, [False] * 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compute_esps(pos, mp, ptr, cells, pbc)
    assert [str(w.message) for w in caught] == [
        "config 3 (pbc) carries a net charge 1 e: a uniform neutralising background is added (gauge: zero "
        "cell-average potential, see scfdata.reference.ewald)"
    ]
    bad = pos.copy()
    bad[ptr[2] + 3] = bad[ptr[2] + 1]  # open config 2, its atoms 1 and 3
    with pytest.raises(ValueError, match="atoms 1 and 3 of config 2 sit at the same position"):
        compute_esps(bad, mp, ptr, cells, pbc)
    bad = mp.copy()
    bad[ptr[3] + 2, 2] = np.nan  # a dipole of cell 3
    with pytest.raises(ValueError, match="config 3: dipoles of atom 2 are not finite"):
        compute_esps(pos, bad, ptr, cells, pbc)
    with pytest.raises(ValueError, match="max_l=1 needs 4 multipole columns, the array has 1"):
        compute_esps(pos, mp[:, :1], ptr, cells, pbc)
    with pytest.raises(ValueError, match=r"K in \(1, 4, 9\), got shape \(21, 2\)"):
        compute_esps(pos, mp[:, :2], ptr, cells, pbc, max_l=0)
