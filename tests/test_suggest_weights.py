"""`scfdata check TRAIN.yaml DIR --suggest-weights`: w = 1/s² from statistics.json's target scales makes
every weighted term of WeightedLoss start at 1 on the data (prediction zero, energy Σ E0), checked on a
synthetic training file whose targets have non-zero means (so rms, not std, is the right scale); the
printed YAML parses and, pasted into a stage, passes `scfdata check`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from scfdata.cli import main
from scfdata.columns import Columns
from scfdata.data import H5Dataset
from scfdata.h5io import write_columns
from scfdata.losses import WeightedLoss, supported_losses
from scfdata.losses.suggest import suggest_weights, weights_yaml, yaml_number

E0_TRUE = {1: -13.6, 6: -1029.0, 8: -2041.8}
TRAIN = {"train_schedule": [{"name": "start", "start": 0, "end": 10, "lr": 0.01,
                             "loss": {"energy_per_atom": 1.0, "forces": 10.0}}]}


def _synthetic(path, n: int = 40, seed: int = 0):
    """H/C/O configs of 2..6 atoms; every target with a mean comparable to its spread; some masked."""
    rng = np.random.default_rng(seed)
    n_at = rng.integers(2, 7, n)
    n_tot = int(n_at.sum())
    numbers = rng.choice([1, 6, 8], n_tot)
    owner = np.repeat(np.arange(n), n_at)
    e0 = np.vectorize(E0_TRUE.get)(numbers)
    energy = np.bincount(owner, weights=e0, minlength=n) + n_at * rng.normal(-0.3, 0.05, n)
    dipole_mask = rng.random((n, 3)) > 0.2
    cols = Columns(
        n_atoms=n_at,
        configs={"energy": energy, "total_charge": rng.choice([-1.0, 0.0, 1.0, 2.0], n),
                 "dipole": rng.normal(0.5, 1.0, (n, 3)), "fermi_level": rng.normal(-4.0, 0.3, n),
                 "polarizability": rng.normal(1.0, 0.2, (n, 3, 3))},
        atoms={"numbers": numbers, "positions": rng.normal(0, 3, (n_tot, 3)),
               "forces": rng.normal(0.1, 0.7, (n_tot, 3)),
               "atomic_multipoles": np.column_stack([rng.normal(0.2, 0.3, n_tot), rng.normal(0, 0.05, (n_tot, 3))]),
               "esps": rng.normal(2.0, 0.5, n_tot)},
        masks={"energy": rng.random(n) > 0.1, "total_charge": np.ones(n, bool), "dipole": dipole_mask,
               "fermi_level": np.ones(n, bool), "polarizability": rng.random(n) > 0.3, "forces": np.ones(n, bool),
               "atomic_multipoles": np.ones(n, bool), "esps": rng.random(n) > 0.25},
    )
    write_columns(path, cols)
    return path


@pytest.fixture
def results(tmp_path):
    """A results directory: train.h5 and its statistics.json, written by the real commands."""
    train = _synthetic(tmp_path / "train.h5")
    assert main(["statistics-shard", str(train), "-o", str(tmp_path / "sums.json")]) == 0
    assert main(["statistics", str(tmp_path / "sums.json"), "-o", str(tmp_path / "statistics.json")]) == 0
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    return tmp_path


def _suggested_block(out: str) -> str:
    return out[out.index("# loss weights suggested"):]


def test_suggested_weights_equalise_the_initial_terms(results, capsys):
    assert main(["check", str(results / "train.yaml"), str(results), "--suggest-weights"]) == 0
    block = _suggested_block(capsys.readouterr().out)
    loss = yaml.safe_load(block)["loss"]
    assert set(loss) == {"energy_per_atom", "forces", "atomic_multipoles", "total_charge", "dipole",
                         "polarizability", "fermi_level", "esps"}
    assert all(isinstance(w, float) and w > 0 for w in loss.values())
    ds = H5Dataset(results)
    ref = ds.batch(np.arange(len(ds)))
    stats = json.loads((results / "statistics.json").read_text())
    e0 = torch.tensor([stats["atomic_energies"].get(s, 0.0) for s in ("X", "H", "He", "Li", "Be", "B", "C", "N",
                                                                       "O")], dtype=torch.float64)
    n_cfg, n_at = len(ds), len(ref["numbers"])
    pred = {  # the initial prediction: Σ E0 for the energy, zero for everything else
        "energy": torch.zeros(n_cfg, dtype=torch.float64).index_add_(0, ref["batch"], e0[ref["numbers"]]),
        "forces": torch.zeros(n_at, 3, dtype=torch.float64),
        "density_coefficients": torch.zeros(n_at, 4, dtype=torch.float64),
        "dipole": torch.zeros(n_cfg, 3, dtype=torch.float64),
        "polarizability": torch.zeros(n_cfg, 3, 3, dtype=torch.float64),
        "fermi_level": torch.zeros(n_cfg, dtype=torch.float64), "esps": torch.zeros(n_at, dtype=torch.float64),
    }
    fn = WeightedLoss(loss)
    total = fn(ref, pred)
    terms = fn.last_breakdown
    assert set(terms) == set(loss)
    # every weighted term is 1 up to the 3-digit rounding of the weights (rms, not std: the means are not 0)
    assert terms == pytest.approx(dict.fromkeys(loss, 1.0), rel=6e-3)
    assert float(total) == pytest.approx(len(loss), rel=6e-3)
    # the printed scales are the rms of the entries, recomputed here from the batch
    f_rms = float(ref["forces"].pow(2).mean().sqrt())
    assert f"forces: {yaml_number(1 / f_rms**2)}" in block and f"# s = {f_rms:.4g} eV/Å" in block
    assert "# rule: w = 1/s², s = rms of the term's entry error at a zero prediction" in block


def test_printed_block_pasted_into_a_stage_passes_check(results, capsys):
    assert main(["check", str(results / "train.yaml"), str(results / "train.h5"), "--suggest-weights"]) == 0
    block = _suggested_block(capsys.readouterr().out)
    stage = "train_schedule:\n  - name: suggested\n    start: 0\n    end: 100\n    lr: 0.01\n"
    pasted = results / "pasted.yaml"
    pasted.write_text(stage + "".join(f"    {ln}\n" for ln in block.splitlines()))
    assert main(["check", str(pasted), str(results)]) == 0
    assert "every train_schedule stage is supported" in capsys.readouterr().out
    # what is left out, and why: per-atom variants without a scale, model-internal terms; unsupported: absent
    assert "# not suggested: dipole_per_atom: statistics.json has no per-atom scale of dipole; use dipole" in block
    assert "# not suggested: field_features, fixedpoint_scf_stability, fermi_level_gradient, " in block
    assert "molecular_forces" not in block and "stress" not in block


def test_zero_or_missing_scales_are_not_suggested():
    support = {name: {"supported": True} for name in ("energy_per_atom", "forces", "total_charge", "esps")}
    stats = {"energy_per_atom": {"rms": 0.02}, "forces": {"rms": 0.5}, "targets": {"total_charge": {"rms": 0.0}}}
    suggested, skipped = suggest_weights(stats, support)
    assert {k: v["weight"] for k, v in suggested.items()} == pytest.approx({"energy_per_atom": 2500.0, "forces": 4.0})
    assert "the target is zero in every training config" in skipped["total_charge"]
    assert "statistics.json has no targets.esps.rms" in skipped["esps"]
    text = weights_yaml(suggested, skipped)
    assert yaml.safe_load(text) == {"loss": {"energy_per_atom": 2500.0, "forces": 4.0}}


@pytest.mark.parametrize("x, text", [(1e-5, "1.0e-05"), (2.5e-7, "2.5e-07"), (4.0, "4.0"), (2500.0, "2.5e+03"),
                                     (123456.0, "1.23e+05"), (0.123456, "0.123")])
def test_yaml_numbers_read_back_as_floats(x, text):
    assert yaml_number(x) == text
    assert yaml.safe_load(f"w: {text}")["w"] == pytest.approx(x, rel=5e-3)


def test_suggest_weights_needs_statistics_and_the_scfdata_arithmetic(results, tmp_path, capsys):
    import subprocess
    import sys

    alone = tmp_path / "elsewhere"
    alone.mkdir()
    (alone / "train.h5").write_bytes((results / "train.h5").read_bytes())
    cmd = [sys.executable, "-m", "scfdata.cli", "check", str(results / "train.yaml"), str(alone / "train.h5"),
           "--suggest-weights"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"{alone / 'statistics.json'}: no such file" in r.stderr and "--statistics PATH" in r.stderr
    assert main(["check", str(results / "train.yaml"), str(alone / "train.h5"), "--suggest-weights",
                 "--statistics", str(results / "statistics.json")]) == 0
    assert "loss:\n  energy_per_atom:" in capsys.readouterr().out
    r = subprocess.run(cmd + ["--convention", "mace_scf"], capture_output=True, text=True)
    assert r.returncode == 1 and "drop --convention mace_scf" in r.stderr
    assert supported_losses(alone / "train.h5")["esps"]["supported"]
