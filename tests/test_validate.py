"""Every ingest validation threshold just inside and just outside its limit, through `scfdata ingest`.

Each test writes one extxyz file with frames on both sides of a limit (1 % away from it, far above the
8 printed decimals of the file), ingests it with `--on-error reject` and the option given explicitly in
`--settings` (as the workflow passes a dataset's `validation:` block), and checks which frames were written
and which were rejected, with the reason. A loosened or tightened threshold, a lost `abs`, a `<` turned into
`>`, or an option that is not passed through fails here.
"""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase import Atoms

from scfdata.cli import main
from scfdata.h5io import ScfdataFile

ENERGY_KEYS = {"info_keys": {"energy": "E"}}


def ingest(tmp_path, frames, keys, validation=None):
    """`scfdata ingest` of ``frames``; returns (source frame indices written, {frame: reason} rejected, file)."""
    path = tmp_path / "in.extxyz"
    ase.io.write(path, frames, format="extxyz")
    (tmp_path / "keys.yaml").write_text(json.dumps(keys))
    out = tmp_path / "out.h5"
    args = ["ingest", str(path), "--keys", str(tmp_path / "keys.yaml"), "-o", str(out), "--on-error", "reject"]
    if validation is not None:
        args += ["--settings", json.dumps({"validation": validation})]
    assert main(args) == 0
    with ScfdataFile(out) as f:
        written = f.read("source")[:, 1].tolist() if f.n_configs else []
        rejected = {frame: reason for _, frame, reason in f.rejects()}
    assert len(written) + len(rejected) == len(frames)
    return written, rejected, out


def frame(symbols, positions, cell=None, pbc=False, energy=-1.0, **arrays):
    a = Atoms(symbols, positions=positions, cell=cell, pbc=pbc)
    a.info["E"] = energy
    for k, v in arrays.items():
        a.arrays[k] = np.asarray(v, dtype=float)
    return a


# ------------------------------------------------------------------ charge sum (default 1e-3 e)
WATER = [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]
DEVIATIONS = [0.99, -0.99, 1.01, -1.01, 0.0]  # in units of the tolerance: frames 2 and 3 are outside


def charged_waters(total, tol, key):
    frames = []
    for d in DEVIATIONS:
        q = np.array([-0.8, 0.4, 0.4]) + (total + d * tol) / 3  # sums to total + d * tol
        a = frame("OHH", WATER, **({"q": q} if key == "charges" else
                                   {"mp": np.c_[q, np.tile([0.01, -0.02, 0.03], (3, 1))]}))
        a.info["Q"] = total
        frames.append(a)
    return frames


@pytest.mark.parametrize("key", ["charges", "atomic_multipoles"])
@pytest.mark.parametrize("tol, validation", [(1e-3, None), (1e-3, {"charge_tolerance": 1e-3}),
                                             (0.05, {"charge_tolerance": 0.05})])
def test_charge_sum_tolerance_both_signs_both_keys(tmp_path, key, tol, validation):
    keys = {"info_keys": {"energy": "E", "total_charge": "Q"},
            "arrays_keys": {key: "q" if key == "charges" else "mp"}}
    written, rejected, _ = ingest(tmp_path, charged_waters(-1.0, tol, key), keys, validation)
    assert written == [0, 1, 4] and sorted(rejected) == [2, 3]
    for k in (2, 3):
        assert "total_charge" in rejected[k] and str(tol) in rejected[k]  # the reason names the key and limit


def test_renormalise_shifts_charges_outside_the_tolerance_uniformly_onto_the_total(tmp_path):
    keys = {"info_keys": {"energy": "E", "total_charge": "Q"}, "arrays_keys": {"charges": "q"}}
    frames = charged_waters(-1.0, 1e-3, "charges")
    written, rejected, out = ingest(tmp_path, frames, keys, {"charge_tolerance": 1e-3, "renormalise_charges": True})
    assert written == [0, 1, 2, 3, 4] and not rejected
    with ScfdataFile(out) as f:
        q = f.read("charges").reshape(5, 3)
    given = np.array([a.arrays["q"] for a in frames])
    shift = np.where(np.abs(np.array(DEVIATIONS)) > 1, (-1.0 - given.sum(1)) / 3, 0.0)  # only outside the limit
    np.testing.assert_allclose(q, given + shift[:, None], atol=1e-12)
    np.testing.assert_allclose(q[2:4].sum(1), -1.0, atol=1e-12)


# ------------------------------------------------------------------ minimum distance
def pair_frames(kind, d):
    """A config whose closest pair is ``d`` apart: in a small cluster, a 300-atom cluster (neighbour-list
    path), across a periodic cell face, and across a slab's in-plane face."""
    if kind == "cluster":
        return frame("OHH", [[0, 0, 0], [d, 0, 0], [-1.0, 1.0, 0]])
    if kind == "large_cluster":
        g = np.stack(np.meshgrid(*[np.arange(7) * 2.0] * 3, indexing="ij"), -1).reshape(-1, 3)[:300]
        g[1] = g[0] + [0, 0, d]
        return frame("C300", g)
    pbc = [True, True, kind == "bulk"]
    return frame("HH", [[0.3 * d, 1, 1], [6.0 - 0.7 * d, 1, 1]], cell=np.diag([6.0, 6.0, 6.0]), pbc=pbc)


@pytest.mark.parametrize("kind", ["cluster", "large_cluster", "bulk", "slab"])
@pytest.mark.parametrize("limit", [0.1, 0.5])
def test_min_distance_just_inside_and_outside(tmp_path, kind, limit):
    frames = [pair_frames(kind, limit * f) for f in (1.01, 0.99, 1.5)]
    written, rejected, _ = ingest(tmp_path, frames, ENERGY_KEYS,
                                  {"min_distance": limit, "max_volume_per_atom": None})
    assert written == [0, 2] and list(rejected) == [1]
    assert "positions" in rejected[1] and f"{0.99 * limit:.4f} Å apart" in rejected[1] and str(limit) in rejected[1]


# ------------------------------------------------------------------ volume per atom (fully periodic only)
def cubic_pair(volume_per_atom, pbc=True):
    L = (2 * volume_per_atom) ** (1 / 3)
    return frame("HH", [[0, 0, 0], [L / 2, L / 2, L / 2]], cell=np.diag([L, L, L]), pbc=pbc)


@pytest.mark.parametrize("limit", [50.0, 100.0])
def test_max_volume_per_atom_just_inside_and_outside(tmp_path, limit):
    frames = [cubic_pair(0.99 * limit), cubic_pair(1.01 * limit), cubic_pair(1.01 * limit, pbc=[True, True, False]),
              cubic_pair(0.5 * limit)]
    written, rejected, _ = ingest(tmp_path, frames, ENERGY_KEYS, {"max_volume_per_atom": limit})
    assert written == [0, 2, 3] and list(rejected) == [1]  # a slab (TTF) is never checked
    assert "per atom" in rejected[1] and str(limit) in rejected[1]


def test_max_volume_per_atom_null_switches_the_check_off(tmp_path):
    frames = [cubic_pair(1e4), cubic_pair(1e6)]
    written, rejected, _ = ingest(tmp_path, frames, ENERGY_KEYS, {"max_volume_per_atom": None})
    assert written == [0, 1] and not rejected


# ------------------------------------------------------------------ singular and left-handed cells
def test_cell_determinant_limits(tmp_path):
    """|det| < 1e-8 Å^3 is singular, det < 0 left-handed, for any periodic config; a cluster's cell is free."""
    heights = [0.5e-10, 2e-10, -0.5e-10, -2e-10]  # det = 100 h: 5e-9, 2e-8, -5e-9, -2e-8 Å^3
    frames = [frame("HH", [[0, 0, 0], [3, 0, 0]], cell=np.diag([10.0, 10.0, h]), pbc=[True, True, False])
              for h in heights]
    frames.append(frame("HH", [[0, 0, 0], [3, 0, 0]], cell=np.diag([10.0, 10.0, -10.0])))  # open: not checked
    written, rejected, _ = ingest(tmp_path, frames, ENERGY_KEYS, {"max_volume_per_atom": None})
    assert written == [1, 4] and sorted(rejected) == [0, 2, 3]
    assert "singular" in rejected[0] and "singular" in rejected[2] and "left-handed" in rejected[3]
