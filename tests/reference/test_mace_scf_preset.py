"""preset: mace_scf (graph-longrange's ESP) against scfdata's own engine.

Where the conventions coincide (3D periodic; a cluster evaluated periodically in its box; a slab as the
periodic sum plus the Yeh–Berkowitz ramp) the two independent implementations agree once the Coulomb
constants are normalised; where they differ (isolated cluster, scfdata's slab gauge) the difference has
the documented closed form.
"""

import sys
import warnings

import numpy as np
import pytest
import torch

from scfdata.constants import K_E
from scfdata.reference import mace_scf_preset as preset
from scfdata.reference.esp import compute_esps

torch.serialization.add_safe_globals([slice])  # e3nn 0.4.4 (imported by graph-longrange) under torch >= 2.6
pytest.importorskip("graph_longrange.features")

SIGMA = 1.5
EXPLICIT = dict(smearing_width=SIGMA, self_interaction="include", max_l=1, tolerance=1e-10)
CONVERGED = 10.0 / SIGMA  # reciprocal cut-off at which graph-longrange's sum is exact to ~1e-14 V


@pytest.fixture(scope="module")
def ratio():
    """scfdata's K_E over graph-longrange's Coulomb constant (to compare below 1e-8 relative)."""
    return K_E / preset.coulomb_constant()


def _config(rng, n, cell, neutral=True, z_range=None):
    pos = rng.uniform(0, 1, (n, 3)) @ cell
    if z_range is not None:
        pos[:, 2] = rng.uniform(*z_range, n)
    mp = rng.normal(0, 0.4, (n, 4))
    if neutral:
        mp[:, 0] -= mp[:, 0].mean()
    return pos, mp


def _explicit(pos, mp, cell, pbc, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # charged-cell background warning
        return compute_esps(pos, mp, [0, len(pos)], cell[None], [pbc], with_fields=True, **{**EXPLICIT, **kw})


def test_coulomb_constant_is_graph_longranges_own(ratio):
    assert 5e-9 < ratio - 1 < 1e-8  # 8.0e-9: compare below 1e-8 only after normalising


@pytest.mark.parametrize("neutral", [True, False])
def test_periodic_charges_and_dipoles_agree_with_scfdata_ewald(ratio, neutral):
    rng = np.random.default_rng(1)
    cell = np.array([[9.0, 0, 0], [1.0, 10.0, 0], [0.5, -0.7, 11.0]])  # triclinic
    pos, mp = _config(rng, 24, cell, neutral)
    v, e = preset.mace_scf_esps(pos, mp, [0, 24], cell[None], [[1, 1, 1]], kspace_cutoff=CONVERGED,
                                with_fields=True)
    v_ref, e_ref = _explicit(pos, mp, cell, [1, 1, 1])
    assert np.abs(v_ref).max() > 1.0
    np.testing.assert_allclose(v * ratio, v_ref, rtol=0, atol=1e-9)  # measured ~2e-14 V
    np.testing.assert_allclose(e * ratio, e_ref, rtol=0, atol=1e-8)


def test_default_cutoff_is_converged_model_cutoff_close_bare_heuristic_not(ratio):
    rng = np.random.default_rng(2)
    cell = np.diag([12.0, 11.0, 13.0])
    pos, mp = _config(rng, 30, cell)
    exact, _ = preset.mace_scf_esps(pos, mp, [0, 30], cell[None], [[1, 1, 1]], kspace_cutoff=CONVERGED)
    default, _ = preset.mace_scf_esps(pos, mp, [0, 30], cell[None], [[1, 1, 1]])
    assert np.abs(default - exact).max() < 1e-6
    # MACE_SCF's own cut-off with its parser defaults: 1.25 x 2.25 x 2^0.3 / min(1.5, 1.0, 2.0)
    kc_model = preset.model_kspace_cutoff()
    assert kc_model == pytest.approx(1.25 * 2.25 * 2**0.3, rel=1e-12)
    model, _ = preset.mace_scf_esps(pos, mp, [0, 30], cell[None], [[1, 1, 1]], kspace_cutoff=kc_model)
    assert np.abs(model - exact).max() < 2e-5
    bare, _ = preset.mace_scf_esps(pos, mp, [0, 30], cell[None], [[1, 1, 1]], kspace_cutoff=2.25 / SIGMA)
    assert np.abs(bare - exact).max() > 0.05  # the trap: graph-longrange's bare heuristic


def test_cluster_is_periodic_in_its_box_not_isolated(ratio):
    rng = np.random.default_rng(3)
    L = 30.0
    box = np.eye(3) * L
    pos, mp = _config(rng, 12, np.eye(3) * 4.0)
    pos += L / 2
    v, e = preset.mace_scf_esps(pos, mp, [0, 12], box[None], [[0, 0, 0]], kspace_cutoff=CONVERGED,
                                with_fields=True)
    v_pbc, e_pbc = _explicit(pos, mp, box, [1, 1, 1])  # same convention: tin-foil periodic in the box
    np.testing.assert_allclose(v * ratio, v_pbc, rtol=0, atol=1e-9)
    np.testing.assert_allclose(e * ratio, e_pbc, rtol=0, atol=1e-8)
    # against the isolated cluster: the image terms, +(2πk_e/3V) Σ_j [q_j |r_j − r_i|² + 2 p_j·(r_j − r_i)]
    v_open, _ = _explicit(pos, mp, box, [0, 0, 0])
    d = pos[None, :, :] - pos[:, None, :]
    p = mp[:, [3, 1, 2]]
    leading = 2 * np.pi * K_E / (3 * L**3) * ((mp[None, :, 0] * (d**2).sum(-1)).sum(1)
                                               + 2 * np.einsum("jc,ijc->i", p, d))
    diff = v * ratio - v_open
    assert np.abs(diff).max() > 0.008  # 0.011 V here
    np.testing.assert_allclose(diff, leading, rtol=0, atol=1e-3)  # higher image orders: 4.7e-4 V here


def test_charged_cluster_carries_the_madelung_offset(ratio):
    rng = np.random.default_rng(4)
    L = 40.0
    pos, mp = _config(rng, 10, np.eye(3) * 4.0, neutral=False)
    mp[:, 0] += (1.0 - mp[:, 0].sum()) / 10  # Q = +1
    pos += L / 2
    v, _ = preset.mace_scf_esps(pos, mp, [0, 10], np.eye(3)[None] * L, [[0, 0, 0]])
    v_open, _ = _explicit(pos, mp, np.eye(3) * L, [0, 0, 0])
    assert (v * ratio - v_open).mean() == pytest.approx(-2.837297 * K_E / L, abs=0.01)


def test_slab_is_periodic_sum_plus_ramp_and_differs_from_scfdata_slab_by_a_z_dependent_constant(ratio):
    rng = np.random.default_rng(5)
    cell = np.diag([10.0, 11.0, 40.0])
    vol = float(np.prod(np.diag(cell)))
    pos, mp = _config(rng, 20, cell, z_range=(15.0, 21.0))

    def both(z_shift):
        r = pos + [0, 0, z_shift]
        v, e = preset.mace_scf_esps(r, mp, [0, 20], cell[None], [[1, 1, 0]], kspace_cutoff=CONVERGED,
                                    with_fields=True)
        return r, v * ratio, e * ratio

    r, v, e = both(0.0)
    m_z = (mp[:, 0] * r[:, 2]).sum() + mp[:, 2].sum()
    v_3d, e_3d = _explicit(r, mp, cell, [1, 1, 1])
    ramp = 4 * np.pi * K_E * m_z / vol
    np.testing.assert_allclose(v, v_3d + ramp * r[:, 2], rtol=0, atol=1e-9)
    np.testing.assert_allclose(e, e_3d - [0, 0, ramp], rtol=0, atol=1e-8)

    def offset(r):  # graph-longrange misses −(2πk_e/V) Σ_j (q_j z_j² + 2 p_j,z z_j) of the exact slab ESP
        return 2 * np.pi * K_E / vol * ((mp[:, 0] * r[:, 2] ** 2).sum() + 2 * (mp[:, 2] * r[:, 2]).sum())

    v_slab, e_slab = _explicit(r, mp, cell, [1, 1, 0], tolerance=1e-9)
    assert abs(offset(r)) > 0.5  # 0.95 V here
    np.testing.assert_allclose(v - v_slab, offset(r), rtol=0, atol=1e-6)
    np.testing.assert_allclose(e, e_slab, rtol=0, atol=1e-6)
    # translating the slab along z moves the preset's zero of potential by (4πk_e/V) M_z Δz; scfdata's stays
    r2, v2, _ = both(3.0)
    v_slab2, _ = _explicit(r2, mp, cell, [1, 1, 0], tolerance=1e-9)
    np.testing.assert_allclose(v2 - v, 4 * np.pi * K_E / vol * m_z * 3.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(v_slab2, v_slab, rtol=0, atol=1e-6)


def test_batching_and_k_pieces_do_not_change_the_result():
    rng = np.random.default_rng(6)
    cfgs = [(_config(rng, 8, np.eye(3) * 4.0), np.eye(3) * 20.0, [0, 0, 0]),
            ((np.zeros((0, 3)), np.zeros((0, 4))), np.eye(3) * 5.0, [1, 1, 1]),  # an empty config
            (_config(rng, 16, np.diag([8.0, 9.0, 10.0])), np.diag([8.0, 9.0, 10.0]), [1, 1, 1]),
            (_config(rng, 10, np.diag([8.0, 8.0, 25.0]), z_range=(10, 14)), np.diag([8.0, 8.0, 25.0]), [1, 1, 0])]
    pos = np.concatenate([c[0][0] for c in cfgs])
    mp = np.concatenate([c[0][1] for c in cfgs])
    ptr = np.concatenate([[0], np.cumsum([len(c[0][0]) for c in cfgs])])
    cells, pbc = np.array([c[1] for c in cfgs]), np.array([c[2] for c in cfgs], bool)
    kw = dict(kspace_cutoff=4.0, with_fields=True)
    v, e = preset.mace_scf_esps(pos, mp, ptr, cells, pbc, **kw)
    for opts in ({"batch_elements": 1}, {"batch_elements": 2**30}, {"max_elements": 500}):
        v2, e2 = preset.mace_scf_esps(pos, mp, ptr, cells, pbc, **kw, **opts)
        np.testing.assert_allclose(v2, v, rtol=0, atol=1e-12)
        np.testing.assert_allclose(e2, e, rtol=0, atol=1e-12)
    for c in range(len(cfgs)):  # one config at a time
        s = slice(ptr[c], ptr[c + 1])
        v1, _ = preset.mace_scf_esps(pos[s], mp[s], [0, ptr[c + 1] - ptr[c]], cells[c:c + 1], pbc[c:c + 1], **kw)
        np.testing.assert_allclose(v1, v[s], rtol=0, atol=1e-12)


def test_fields_are_minus_the_gradient_at_a_probe():
    """E at atom i equals −∇ of the potential of the other atoms and i's own density held fixed: probe it
    with a tiny test charge moved around atom i (its own contribution, charge ∝ ε, is divided out)."""
    rng = np.random.default_rng(7)
    cell = np.diag([9.0, 10.0, 11.0])
    pos, mp = _config(rng, 6, cell)
    _, e = preset.mace_scf_esps(pos, mp, [0, 6], cell[None], [[1, 1, 1]], kspace_cutoff=CONVERGED,
                                with_fields=True)
    h, i = 1e-4, 2
    probe = np.zeros((1, 4))  # a zero-charge probe atom: receives the potential, adds nothing to it
    grad = []
    for a in range(3):
        vals = []
        for sgn in (1, -1):
            r = pos[i] + sgn * h * np.eye(3)[a]
            v, _ = preset.mace_scf_esps(np.vstack([pos, r]), np.vstack([mp, probe]), [0, 7], cell[None],
                                        [[1, 1, 1]], kspace_cutoff=CONVERGED)
            vals.append(v[-1])
        grad.append((vals[0] - vals[1]) / (2 * h))
    np.testing.assert_allclose(e[i], -np.array(grad), rtol=0, atol=1e-6)


def test_external_field_adds_e_dot_r_as_mace_scf_does():
    rng = np.random.default_rng(8)
    cell = np.eye(3) * 20.0
    pos, mp = _config(rng, 5, np.eye(3) * 3.0)
    field = np.array([[0.01, -0.02, 0.03]])
    v0, e0 = preset.mace_scf_esps(pos, mp, [0, 5], cell[None], [[0, 0, 0]], with_fields=True)
    v1, e1 = preset.mace_scf_esps(pos, mp, [0, 5], cell[None], [[0, 0, 0]], with_fields=True,
                                  external_field=field)
    np.testing.assert_allclose(v1 - v0, pos @ field[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(e1 - e0, -np.repeat(field, 5, axis=0), rtol=0, atol=1e-12)


def test_torch_in_torch_out_and_l0_data():
    rng = np.random.default_rng(9)
    cell = np.diag([8.0, 9.0, 10.0])
    pos, mp = _config(rng, 6, cell)
    v, _ = preset.mace_scf_esps(pos, mp[:, :1], [0, 6], cell[None], [[1, 1, 1]])
    vt, et = preset.mace_scf_esps(torch.tensor(pos, dtype=torch.float32), torch.tensor(mp[:, :1]), [0, 6],
                                  cell[None], [[1, 1, 1]], with_fields=True)
    assert vt.dtype == torch.float32 and et.shape == (6, 3)
    np.testing.assert_allclose(vt.numpy(), v, rtol=1e-6, atol=1e-5)
    v0, _ = preset.mace_scf_esps(pos, mp, [0, 6], cell[None], [[1, 1, 1]], max_l=0)
    np.testing.assert_allclose(v0, v, rtol=0, atol=1e-12)  # max_l 0 = charges only


@pytest.mark.parametrize(
    "kw, msg",
    [({"max_l": 2}, "max_l 0 or 1"), ({"pbc": [[1, 0, 0]]}, "pbc TFF"),
     ({"cells": np.zeros((1, 3, 3))}, "zero volume"), ({"smearing_width": 0.0}, "smearing_width > 0")],
)
def test_unsupported_inputs_are_clear_errors(kw, msg):
    args = dict(positions=np.ones((2, 3)), multipoles=np.ones((2, 4)), ptr=[0, 2], cells=np.eye(3)[None] * 9,
                pbc=[[1, 1, 1]])
    args.update({k: v for k, v in kw.items() if k in args})
    opts = {k: v for k, v in kw.items() if k not in args}
    with pytest.raises(ValueError, match=msg):
        preset.mace_scf_esps(**args, **opts)


def test_missing_graph_longrange_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "graph_longrange", None)
    with pytest.raises(preset.GraphLongrangeMissing, match=r"pip install 'scfdata\[mace_scf\]'") as info:
        preset.mace_scf_esps(np.zeros((1, 3)), np.zeros((1, 1)), [0, 1], np.eye(3)[None] * 9, [[1, 1, 1]])
    assert isinstance(info.value, ValueError) and isinstance(info.value, ImportError)
