"""`scfdata check` knows every loss name MACE_SCF accepts, says what each is computed from, and checks
options and the convention the way WeightedLoss does."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from scfdata.cli import main
from scfdata.losses import LOSSES
from scfdata.losses.support import DataSummary, check_schedule_report

FIELDS = {"energy", "forces", "stress", "atomic_multipoles", "total_charge", "dipole", "polarizability",
          "fermi_level", "esps", "molecule", "molecular_forces", "molecule_centre", "cluster_virial"}
INTERNAL = {  # MACE_SCF's model-internal terms and the model outputs each reads
    "fixedpoint_scf_stability": "perturbing_vector, perturbed_density",
    "fermi_level_gradient": "dq_dmu",
    "final_terms_fixedpoint_scf_stability": "charges_history",
    "field_features": "feats_no_mu_model, feats_no_mu_dft",
    "rho_fftn": "rho_fftn, rho_fftn_dft, k_vectors_normed_squared",
    "fourier_density": "rho_fftn, rho_fftn_dft, k_vectors_normed_squared, k_vectors_mask",
}


def _stage(loss: dict) -> dict:
    return {"train_schedule": {0: {"name": "s", "start": 0, "end": 9, "lr": 0.01, "loss": loss}}}


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_mace_scf_name_is_accepted_with_its_message(name):
    data = DataSummary(40, {f: 40 for f in FIELDS}, {2: 30})
    problems, notes = check_schedule_report(_stage({name: 2.0}), data, convention="mace_scf")
    assert problems == []
    if name in INTERNAL:
        assert notes == [f"stage 's': {name} (weight 2, mace_scf arithmetic): model-internal: needs no reference "
                         f"data; computed from the model outputs {INTERNAL[name]}"]
    else:
        spec = LOSSES[name]
        n = 30 if spec.min_molecules else 40
        assert notes == [f"stage 's': {name} (weight 2, mace_scf arithmetic): {n} configs with data "
                         f"{', '.join(spec.fields)}; model outputs {', '.join(spec.outputs)}"]


def test_model_internal_terms_need_no_data():
    problems, notes = check_schedule_report(_stage(dict.fromkeys(INTERNAL, 1.0)), DataSummary(3, {"forces": 3}))
    assert problems == [] and len(notes) == len(INTERNAL)


def test_data_terms_are_checked_like_before():
    problems, _ = check_schedule_report(_stage({"esps": 1.0, "fermi_level_gradient": 1.0}),
                                        DataSummary(3, {"forces": 3}))
    assert problems == ["stage 's': loss 'esps' is not supported by the data: field 'esps' absent from the data"]


def test_per_term_convention_in_the_note_and_bad_convention():
    data = DataSummary(4, {"forces": 4})
    _, notes = check_schedule_report(_stage({"forces": {"weight": 1.0, "convention": "mace_scf"}}), data)
    assert notes == ["stage 's': forces (weight 1, mace_scf arithmetic): 4 configs with data forces; "
                     "model outputs forces"]
    problems, _ = check_schedule_report(_stage({"forces": {"weight": 1.0, "convention": "MACE"}}), data)
    assert problems == ["stage 's': loss 'forces': option convention must be one of 'scfdata', 'mace_scf', "
                        "got 'MACE' (str)"]
    with pytest.raises(ValueError, match="unknown loss convention"):
        check_schedule_report(_stage({"forces": 1.0}), data, convention="other")


def _h5(tmp_path):
    h5io = pytest.importorskip("scfdata.h5io")
    from scfdata.columns import Columns

    n_atoms = np.array([3, 2])
    N = int(n_atoms.sum())
    rng = np.random.default_rng(0)
    cols = Columns(
        n_atoms=n_atoms, n_molecules=np.array([1, 1]),
        configs={"energy": rng.normal(size=2), "weight": np.ones(2), "pbc": np.zeros((2, 3), bool),
                 "cell": np.zeros((2, 3, 3)), "config_type": np.array(["a", "a"]),
                 "source": np.zeros((2, 2), np.int64)},
        atoms={"numbers": np.ones(N, np.int64), "positions": rng.normal(size=(N, 3)),
               "forces": rng.normal(size=(N, 3))},
        masks={"energy": np.ones(2, bool), "forces": np.ones(2, bool)},
    )
    return h5io.write_columns(tmp_path / "train.h5", cols)


def test_cli_mace_scf_schedule(tmp_path, capsys):
    """A MACE_SCF fixed-point schedule, unchanged: every line says what the term reads; `max_l: abc`
    fails here as it would in training."""
    path = _h5(tmp_path)
    cfg = {"train_schedule": {
        0: {"name": "direct", "start": 0, "end": 99, "lr": 0.01, "fixed_point_training_options": {"mode": "direct"},
            "loss": {"energy_per_atom": 10.0, "forces": 100.0, "fixedpoint_scf_stability": {"weight": 1.0,
                                                                                           "beta": 5.0}}},
        1: {"name": "unroll", "start": 100, "end": 110, "lr": 0.001,
            "loss": {"forces": 100.0, "final_terms_fixedpoint_scf_stability": 1.0}}}}
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump(cfg))
    assert main(["check", str(train), str(path), "--convention", "mace_scf"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"{train}: stage 'direct': forces (weight 100, mace_scf arithmetic): 2 configs with data forces; " \
           "model outputs forces" in out
    assert any("stage 'unroll': final_terms_fixedpoint_scf_stability (weight 1, mace_scf arithmetic): "
               "model-internal: needs no reference data; computed from the model outputs charges_history" in line
               for line in out)
    assert out[-1] == f"{train}: every train_schedule stage is supported by {path}"
    cfg["train_schedule"][1]["loss"]["atomic_multipoles"] = {"weight": 1.0, "max_l": "abc"}
    train.write_text(yaml.safe_dump(cfg))
    assert main(["check", str(train), str(path)]) == 1
    out = capsys.readouterr().out
    assert (f"{train}: stage 'unroll': loss 'atomic_multipoles': option max_l must be an integer ≥ 0, "
            "got 'abc' (str)") in out


def test_the_readme_schedule_example_checks_clean():
    """The README's train_schedule example is what `scfdata check` reads, without a problem."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("**The `train_schedule` format**"):]
    block = section[section.index("```yaml\n") + 8:]
    cfg = yaml.safe_load(block[: block.index("```")])
    data = DataSummary(10, {f: 10 for f in FIELDS}, {2: 10})
    problems, notes = check_schedule_report(cfg, data)
    assert problems == [] and len(notes) == 7
    assert "stage 'unroll': polarizability (weight 1, mace_scf arithmetic)" in notes[-1]
