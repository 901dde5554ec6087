from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent

MACE_SCF_KEYS = {
    "info_keys": {"energy": "AIMS_energy", "dipole": "AIMS_dipole", "total_charge": "total_charge",
                  "fermi_level": "the_fermi_level", "external_field": "the_external_field"},
    "arrays_keys": {"forces": "AIMS_forces", "atomic_multipoles": "AIMS_atom_multipoles"},
}


@pytest.fixture
def mace_scf_keys() -> dict:
    return MACE_SCF_KEYS


@pytest.fixture
def water_fixture() -> Path:
    return DATA / "mace_scf_water_clusters_40.xyz"
