"""Derive wiring: fragments hold the target for present configs, masked (not zeroed) elsewhere."""

import json
from pathlib import Path

import numpy as np
import pytest

from scfdata.cli import main
from scfdata.constants import K_E
from scfdata.h5io import ScfdataFile

REPO = Path(__file__).resolve().parent.parent
KEYS = {"info_keys": {"energy": "energy", "dipole": "REF_dipole", "total_charge": "total_charge"},
        "arrays_keys": {"forces": "forces", "charges": "REF_charges"}}


@pytest.fixture(scope="module")
def example_base(tmp_path_factory):
    d = tmp_path_factory.mktemp("derive")
    (d / "keys.yaml").write_text(json.dumps(KEYS))
    out = d / "base.h5"
    inputs = [str(REPO / "examples/data" / f) for f in ("water_clusters.extxyz", "nacl_crystal.extxyz",
                                                         "water_slab.extxyz")]
    assert main(["ingest", *inputs, "--keys", str(d / "keys.yaml"), "-o", str(out), "--on-error", "reject"]) == 0
    return out


def derive(base, target, settings=None, extra=()):
    out = base.with_name(f"{target}.h5")
    assert main(["derive", target, str(base), *map(str, extra), "--settings", json.dumps(settings or {}),
                 "-o", str(out)]) == 0
    return out


def test_esps_open_clusters_equal_direct_coulomb_sum(example_base):
    out = derive(example_base, "esps")
    with ScfdataFile(example_base) as b, ScfdataFile(out) as f:
        assert f.field_attrs("esps")["derived_by"]["max_l"] == 0  # charges-only data
        esps, mask = f.read("esps"), f.mask("esps")
        assert mask.all()
        ptr, pos, q = b.atom_ptr, b.read("positions"), b.read("charges")
        pbc = b.read("pbc")
        for c in np.flatnonzero(~pbc.any(axis=1))[:5]:
            s = slice(ptr[c], ptr[c + 1])
            r = np.linalg.norm(pos[s, None] - pos[None, s], axis=-1)
            np.fill_diagonal(r, np.inf)
            np.testing.assert_allclose(esps[s], K_E * (q[s][None, :] / r).sum(1), rtol=1e-10, atol=1e-10)


def test_dipoles_match_dft_dipole_and_mask_by_boundary(example_base):
    out = derive(example_base, "dipoles")
    with ScfdataFile(example_base) as b, ScfdataFile(out) as f:
        mu, mask = f.read("dipole_from_multipoles"), f.mask("dipole_from_multipoles")
        pbc = b.read("pbc")
        assert mask[~pbc.any(1)].all() and not mask[pbc.all(1)].any()
        assert (mask[pbc[:, :2].all(1) & ~pbc[:, 2]] == [False, False, True]).all()
        dft, dmask = b.read("dipole"), b.mask("dipole")
        both = dmask & mask
        np.testing.assert_allclose(mu[both], dft[both], atol=1e-7)
        assert f.provenance["notes"]["|mu_DFT - mu_multipoles| max (e·Å)"] < 1e-7


def test_esps_without_charges_is_a_clear_error(tmp_path, capsys):
    keys = tmp_path / "k.yaml"
    keys.write_text(json.dumps({"info_keys": {"energy": "energy"}}))
    base = tmp_path / "b.h5"
    main(["ingest", str(REPO / "examples/data/water_clusters.extxyz"), "--keys", str(keys), "-o", str(base),
          "--on-error", "reject"])
    assert main(["derive", "esps", str(base), "-o", str(tmp_path / "e.h5")]) == 1
    assert "need atomic_multipoles or charges" in capsys.readouterr().err
