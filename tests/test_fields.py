import pytest

from scfdata import fields


def test_every_field_declares_level_unit_and_description():
    for name, f in fields.FIELDS.items():
        assert f.level in fields.LEVELS, name
        assert f.description, name
        assert isinstance(f.shape, tuple)


def test_design_units():
    u = {n: f.unit for n, f in fields.FIELDS.items()}
    assert u["energy"] == "eV" and u["forces"] == "eV/Å" and u["esps"] == "V" and u["fields"] == "V/Å"
    assert u["dipole"] == "e·Å" and u["stress"] == "eV/Å^3" and u["cluster_virial"] == "eV"
    assert fields.FIELDS["dipole"].mask_shape == (3,)
    assert fields.FIELDS["molecular_forces"].level == "molecule"


def test_weight_fields_are_derived_from_the_registry():
    assert fields.get("dipole_weight").shape == (3,)
    assert fields.get("energy_weight").level == "config"
    with pytest.raises(KeyError, match="unknown field"):
        fields.get("energie")


def test_coulomb_constant_from_scipy():
    import scipy.constants as c

    from scfdata.constants import K_E

    assert K_E == pytest.approx(1 / (4 * c.pi * c.epsilon_0) * c.e * 1e10, rel=1e-12)
    assert K_E == pytest.approx(14.3996454784, rel=1e-8)
