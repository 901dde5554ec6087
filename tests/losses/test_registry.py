"""The registry is plain Python: a spec's torch function is looked up when first used."""

from __future__ import annotations

import dataclasses

import pytest

from scfdata.losses import LOSSES, LossSpec
from scfdata.losses.registry import parse_loss_dict


def test_every_spec_finds_its_term_and_a_given_fn_is_kept():
    from scfdata.losses import terms

    assert all(spec.fn is getattr(terms, name) for name, spec in LOSSES.items())
    own = LossSpec("mine", ("energy",), ("energy",), ("local",), "d", "f", "n", fn=len)
    assert own.fn is len and "fn" not in repr(own)
    default = LossSpec("forces", ("forces",), ("forces",), ("local",), "d", "f", "n")
    assert default.fn is terms.forces
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.fn = len
    assert dataclasses.replace(default, name="x").fn is terms.forces  # (its fn, given)


def test_parse_loss_dict_is_the_one_validation():
    from scfdata.losses.weighted import parse_loss_dict as from_weighted

    assert from_weighted is parse_loss_dict
    parsed, problems = parse_loss_dict({"forces": 2, "esps": {"weight": 0.5, "convention": "mace_scf"},
                                        "energy_per_atm": 1, "atomic_multipoles": {"weight": 1, "max_l": -1}})
    assert parsed == {"forces": (2.0, {}), "esps": (0.5, {"convention": "mace_scf"})}
    assert problems[0].startswith("unknown loss 'energy_per_atm'; did you mean 'energy_per_atom'")
    assert problems[1] == "loss 'atomic_multipoles': option max_l must be an integer ≥ 0, got -1 (int)"


def test_comparing_specs_imports_no_torch():
    """`fn` takes no part in a spec's equality, so comparing specs (or `spec in list`) loads no torch."""
    import subprocess
    import sys

    code = ("import sys; from scfdata.losses.registry import LOSSES\n"
            "a, b = list(LOSSES.values())[:2]\n"
            "assert a == a and a != b and a in list(LOSSES.values())\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
