"""supported_losses and check_schedule, on in-memory summaries and on a real scfdata file."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from scfdata.losses import LOSSES, check_schedule, supported_losses
from scfdata.losses.support import DataSummary

ALL_FIELDS = {"energy", "forces", "stress", "atomic_multipoles", "total_charge", "dipole", "polarizability",
              "fermi_level", "esps", "molecule", "molecular_forces", "molecule_centre", "cluster_virial"}


def full(n=50, **over) -> DataSummary:
    counts = {f: n for f in ALL_FIELDS}
    counts.update(over)
    return DataSummary(n, {k: v for k, v in counts.items() if v is not None}, {2: n})


def test_everything_present_is_supported():
    s = supported_losses(full())
    assert list(s) == list(LOSSES)
    for name, e in s.items():
        if LOSSES[name].kind == "model":  # MACE_SCF's model-internal terms: no reference data
            assert e["supported"] and e["n_configs"] == 50 and e["reason"] == "", name
            assert e["note"].startswith("model-internal: needs no reference data; computed from the model "
                                        "outputs "), name
        else:
            assert e == {"supported": True, "n_configs": 50, "reason": "", "note": ""}, name


def test_absent_field_unsupported_with_reason():
    s = supported_losses(full(esps=None, fermi_level=None, molecule_centre=None))
    assert s["esps"] == {"supported": False, "n_configs": 0, "reason": "field 'esps' absent from the data",
                         "note": ""}
    assert not s["fermi_level"]["supported"] and not s["fermi_level_per_atom"]["supported"]
    assert "'molecule_centre' absent" in s["cluster_virial"]["reason"]
    assert s["molecular_forces"]["supported"]  # does not need the centres


def test_masked_everywhere_and_partial_coverage():
    s = supported_losses(full(dipole=0, polarizability=7))
    assert s["dipole"]["supported"] is False and "masked" in s["dipole"]["reason"]
    assert s["polarizability"] == {"supported": True, "n_configs": 7, "reason": "", "note": ""}


def test_one_molecule_per_config():
    data = full()
    data.min_molecules = {2: 0}
    s = supported_losses(data)
    for name in ("molecular_forces", "cluster_virial", "cluster_virial_per_atom"):
        assert not s[name]["supported"] and "one molecule" in s[name]["reason"]
    data.min_molecules = {2: 12}
    assert supported_losses(data)["cluster_virial"]["n_configs"] == 12


SCHEDULE = {
    "train_schedule": [
        {"name": "warmup", "start": 0, "end": 10, "lr": 1e-3, "loss": {"energy_per_atom": 1, "forces": 10}},
        {"name": "electro", "start": 10, "end": 50, "lr": 5e-4,
         "loss": {"forces": 10, "esps": {"weight": 0.1}, "fermi_level": 0, "forcse": 1, "dipole": -2}},
    ]
}


def test_check_schedule_ok_and_problems():
    clean = {"train_schedule": [SCHEDULE["train_schedule"][0]]}
    assert check_schedule(clean, full()) == []
    problems = check_schedule(SCHEDULE, full(esps=None, fermi_level=None))
    assert any(p.startswith("stage 'electro'") and "'esps'" in p and "field 'esps' absent" in p for p in problems)
    assert any("stage 'electro'" in p and "did you mean 'forces'" in p for p in problems)
    assert any("stage 'electro'" in p and "'dipole': weight must be" in p for p in problems)
    assert not any("fermi_level" in p for p in problems)  # weight 0: never computed
    assert not any("warmup" in p for p in problems)
    assert len(problems) == 3


def test_check_schedule_dict_form_and_yaml_path(tmp_path):
    cfg = {"train_schedule": {"stage_one": {"start": 0, "end": 5, "lr": 1e-3,
                                            "loss": {"cluster_virial": 1.0}}}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    problems = check_schedule(path, full(cluster_virial=None))
    assert problems == ["stage 'stage_one': loss 'cluster_virial' is not supported by the data: "
                        "field 'cluster_virial' absent from the data"]


def test_check_schedule_structure_problems():
    assert "no 'train_schedule'" in check_schedule({"train_schedul": []}, full())[0]
    assert "did you mean 'train_schedule'" in check_schedule({"train_schedul": []}, full())[0]
    p = check_schedule({"train_schedule": [{"name": "s", "los": {"forces": 1}}]}, full())
    assert p == ["stage 's': no 'loss' entry; found 'los': did you mean 'loss'?"]


def test_real_file(tmp_path):
    h5io = pytest.importorskip("scfdata.h5io")
    from scfdata.columns import Columns

    n_atoms = np.array([3, 2, 4])
    N = int(n_atoms.sum())
    rng = np.random.default_rng(0)
    cols = Columns(
        n_atoms=n_atoms,
        n_molecules=np.array([1, 1, 2]),
        configs={"energy": rng.normal(size=3), "weight": np.ones(3), "pbc": np.zeros((3, 3), bool),
                 "cell": np.zeros((3, 3, 3)), "config_type": np.array(["a", "a", "b"]),
                 "source": np.zeros((3, 2), np.int64), "dipole": rng.normal(size=(3, 3))},
        atoms={"numbers": np.ones(N, np.int64), "positions": rng.normal(size=(N, 3)),
               "forces": rng.normal(size=(N, 3)), "molecule": np.array([0, 0, 0, 0, 0, 0, 0, 1, 1])},
        molecules={"molecular_forces": rng.normal(size=(4, 3))},
        masks={"energy": np.array([True, True, False]), "forces": np.ones(3, bool),
               "dipole": np.zeros((3, 3), bool), "molecular_forces": np.array([False, False, True]),
               "molecule": np.ones(3, bool)},
    )
    path = h5io.write_columns(tmp_path / "train.h5", cols)
    s = supported_losses(path)
    assert s["energy_per_atom"] == {"supported": True, "n_configs": 2, "reason": "", "note": ""}
    assert s["forces"]["n_configs"] == 3
    assert s["dipole"]["supported"] is False and "masked" in s["dipole"]["reason"]
    assert s["esps"]["reason"] == "field 'esps' absent from the data"
    assert s["molecular_forces"] == {"supported": True, "n_configs": 1, "reason": "", "note": ""}
    cfg = {"train_schedule": [{"name": "s1", "loss": {"forces": 1, "esps": 1, "dipole": 1}}]}
    problems = check_schedule(cfg, str(path))
    assert len(problems) == 2
    assert all(p.startswith("stage 's1'") for p in problems)
    assert "field 'esps' absent" in problems[0] and "field 'dipole' masked" in problems[1]


def test_check_schedule_malformed_yaml_names_file_line_and_column(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("train_schedule:\n  - name: a\n    loss: {energy: 1.0\n  - name: b\n")
    with pytest.raises(ValueError) as info:
        check_schedule(str(path), full())
    msg = str(info.value)
    assert msg.startswith(f"{path}: not valid YAML at line 4, column 9:") and "\n" not in msg
    assert "line 3, column 11" in msg and "fix the training config there" in msg
