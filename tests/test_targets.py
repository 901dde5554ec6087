"""The target registry (scfdata/targets.py): which targets a dataset gets, the config errors, the settings
schema, and that the CLI, the rule file and the docs read the same registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scfdata import targets
from scfdata.targets import TARGETS, ConfigError, merged_reference, plan

REPO = Path(__file__).resolve().parent.parent
EF = {"energy", "forces"}                          # the most common dataset: energies and forces only
MP = {"energy", "forces", "atomic_multipoles"}     # a multipole dataset


def test_energy_forces_dataset_gets_only_what_it_can_supply():
    derived, skipped = plan(merged_reference({}), EF, "datasets.ef")
    assert derived == ["molecules", "molecular_forces", "cluster_virial"]
    for t in ("esps", "fields", "dipoles"):
        assert skipped[t] == "needs atomic_multipoles or charges in the dataset's keys (not mapped)"


def test_multipole_dataset_gets_every_target_in_dependency_order():
    derived, skipped = plan(merged_reference({}), MP, "datasets.mp")
    assert derived == list(TARGETS) and skipped == {}
    assert plan(merged_reference({}), {"charges"}, "d")[0] == ["molecules", "esps", "fields", "dipoles"]
    # MACE_SCF's Cartesian per-atom dipoles (converted at ingest) supply the multipoles too
    assert "esps" in plan(merged_reference({}), {"atomic_dipoles"}, "d")[0]


def test_a_skipped_dependency_skips_its_dependants_with_the_reason():
    derived, skipped = plan(merged_reference({"molecules": {"enabled": False}}), MP, "datasets.mp")
    assert "molecular_forces" not in derived and "cluster_virial" not in derived
    assert skipped["molecular_forces"] == ("needs the molecules target, which is skipped "
                                           "(switched off (enabled: false))")


@pytest.mark.parametrize("reference, mapped, expected", [
    ({"esps": {"enabled": True}}, EF,
     "datasets.ef: reference.esps is enabled: true, but it needs atomic_multipoles or charges in the dataset's "
     "keys (not mapped): map atomic_multipoles or charges in datasets.ef.keys"),
    ({"molecular_forces": {"enabled": True}}, {"energy"},
     "datasets.ef: reference.molecular_forces is enabled: true, but it needs forces"),
    ({"molecules": {"enabled": False}, "cluster_virial": {"enabled": True}}, MP,
     "reference.cluster_virial is enabled: true, but it needs the molecules target, which is skipped"),
    ({"esps": {"enabled": True}}, MP | {"esps"},
     "datasets.ef: `esps` is mapped from the input files and is also derived by reference.esps"),
    ({}, EF | {"molecule"},  # a mapped molecule id under source: connectivity is never ignored
     "`molecule` is mapped from the input files and is also derived by reference.molecules: set "
     "reference.molecules.source: key"),
    ({"molecules": {"source": "key", "enabled": True}}, EF,
     "reference.molecules is enabled: true, but it needs molecule in the dataset's keys"),
])
def test_impossible_or_conflicting_targets_are_one_line_config_errors(reference, mapped, expected):
    with pytest.raises(ConfigError) as e:
        plan(merged_reference(reference), mapped, "datasets.ef")
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_mapped_target_under_auto_keeps_the_dft_values():
    derived, skipped = plan(merged_reference({}), MP | {"esps"}, "d")
    assert "esps" not in derived and "fields" in derived
    assert skipped["esps"] == "esps is mapped from the input files (the DFT values are kept)"
    derived, _ = plan(merged_reference({"molecules": {"source": "key"}}), EF | {"molecule"}, "d")
    assert derived == ["molecules", "molecular_forces", "cluster_virial"]


def test_dataset_block_merges_over_the_global_one_key_by_key():
    ref = merged_reference({"esps": {"smearing_width": 0.5, "max_l": 2}}, {"esps": {"max_l": 0}})
    assert ref["esps"] == {**TARGETS["esps"].defaults(), "enabled": "auto", "smearing_width": 0.5, "max_l": 0}
    assert ref["dipoles"] == {"enabled": "auto", "origin": "zero"}
    # fields are computed with the esps settings
    assert targets.settings_of("fields", ref)["max_l"] == 0 and "enabled" not in targets.settings_of("fields", ref)


def test_schema_has_every_target_with_defaults_only_in_the_global_block():
    import jsonschema

    glob, per_ds = targets.reference_schema(True), targets.reference_schema(False)
    assert list(glob["properties"]) == list(TARGETS)
    assert glob["properties"]["esps"]["properties"]["tolerance"]["default"] == 1e-6

    def keys(d):
        if not isinstance(d, dict):
            return set()
        return set(d) | {k for v in d.values() for k in keys(v)}

    assert "default" in keys(glob) and "default" not in keys(per_ds)
    v = jsonschema.Draft202012Validator(glob)
    assert v.is_valid({"esps": {"enabled": "auto", "smearing_width": 1.0}, "fields": {"enabled": False}})
    for bad in ({"esps": {"smearing_width": 1e300}}, {"esps": {"enabled": "yes"}}, {"esps": {"tolerance": 0}},
                {"molecules": {"pair_overrides": {"Na-Cl": 1e9}}}, {"dipols": {}}):
        assert not v.is_valid(bad), bad


@pytest.mark.parametrize("name, settings, expected", [
    ("molecules", {"pair_overrides": {"Na-Xx": 1.0}}, "'Xx' is not an element symbol"),
    ("molecules", {"pair_overrides": {"NaCl": 1.0}}, "element pairs like"),
    ("esps", {"kspace_cutoff": 2.0}, "kspace_cutoff is a setting of preset: mace_scf only"),
    ("esps", {"preset": "maces"}, "Unknown reference.esps.preset 'maces'. Must be 'mace_scf'"),
])
def test_settings_checks_are_the_engines_own(name, settings, expected):
    with pytest.raises(ValueError, match=None) as e:
        targets.check_settings(name, settings)
    assert expected in str(e.value)


def test_every_entry_resolves_and_the_modules_import_without_a_circle():
    for t in TARGETS.values():
        for ref in [t.function, t.check, t.warm_up, *(f for v in t.presets.values() for f in (v.function, v.check))]:
            if ref:
                assert callable(targets._call(ref)), ref
    # each module imports alone, and scfdata.derive imports none of the modules that import it
    code = ("import sys, scfdata.derive; bad = {'scfdata.derive_molecular', 'scfdata.derive_esp_preset'} "
            "& set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    for mod in ("scfdata.derive_molecular", "scfdata.derive_esp_preset", "scfdata.targets"):
        subprocess.run([sys.executable, "-c", f"import {mod}"], check=True)


def test_cli_rules_and_docs_read_the_registry():
    from scfdata.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["derive"]
    assert list(next(a for a in sub._actions if a.dest == "target").choices) == list(TARGETS)
    smk = (REPO / "workflows" / "rules" / "derive.smk").read_text()
    assert "for _t in targets.TARGETS.values()" in smk and 'f"derive_{_t.name}"' in smk
    docs = (REPO / "docs" / "workflow.md").read_text()
    for name in TARGETS:
        assert f"`derive_{name}`" in docs, name
    slurm = (REPO / "workflows" / "profiles" / "slurm" / "config.yaml").read_text()
    for name in TARGETS:  # the SLURM profile sends each derive rule as one array
        assert f"derive_{name}" in slurm, name
