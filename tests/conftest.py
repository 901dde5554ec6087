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


@pytest.fixture(scope="session")
def periodic_workflow_run(tmp_path_factory):
    """One real snakemake run (molecules, dipoles, molecular forces, cluster virial) on the configs of
    tests/periodic_molecules.py: molecules across cubic, triclinic and slab cell faces, plus a cluster.
    Returns (final train.h5 path, expected centres per input frame, input frames)."""
    import subprocess
    import sys

    import periodic_molecules as pm
    import yaml

    work = tmp_path_factory.mktemp("periodic_wf")
    frames, expected = pm.write(work / "periodic_molecules.extxyz")
    on = {"enabled": True}
    cfg = {
        "shards": 1,
        "datasets": {"pm": {"inputs": [str(work / "periodic_molecules.extxyz")], "keys": pm.KEYS,
                            "validation": {"max_volume_per_atom": None}}},
        "reference": {"molecules": {**on, "source": "connectivity", "centre": "geometric"}, "dipoles": on,
                      "molecular_forces": on, "cluster_virial": on,
                      "esps": {"enabled": False}, "fields": {"enabled": False}},
    }
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--cores", "2", "--configfile", str(work / "cfg.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return work / "results" / "pm" / "train.h5", expected, frames


def pytest_report_header(config):
    from scfdata.reference import numba_cache

    return f"numba kernel cache: {numba_cache.CACHE_DIR} (key of the scfdata/reference sources: {numba_cache.KEY})"
