"""Process start-up: `scfdata CMD` imports only CMD's module and none of the heavy libraries CMD does not use.

A workflow runs thousands of short jobs, each a fresh `scfdata` process; importing torch (~0.8 s),
ase.io (~0.3 s: it pulls in scipy) or matplotlib in a job that does not use them costs more than many
jobs' work. Each check runs the CLI's ``main`` in a fresh process and reads ``sys.modules`` at its end
(``python -X importtime -m scfdata.cli CMD --help`` shows the same, with times).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys

import pytest
import yaml

from scfdata import commands
from scfdata.cli import COMMANDS, build_parser, main

HEAVY = ("torch", "matplotlib", "numba", "scipy", "ase.io", "pandas")
#: what a command's start-up (the module of the command and what it imports) must not import
FORBIDDEN = {name: set(HEAVY) for name in COMMANDS}
#: command modules a command may import besides its own (export shares statistics' --e0 option)
SHARED = {"export": {"scfdata.commands.statistics"}}


def _registered(module: str) -> dict[str, str]:
    """Command -> help of the sub-commands that one command module registers."""
    sub = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(f"{commands.__name__}.{module}").register(sub)
    return {a.dest: a.help for a in sub._choices_actions}


def test_the_table_lists_every_command_of_every_module_with_its_help():
    modules = [m.name for m in pkgutil.iter_modules(commands.__path__)]
    registered = {name: (m, text) for m in modules for name, text in _registered(m).items()}
    assert registered == COMMANDS  # a new command module needs its line in scfdata.cli.COMMANDS
    assert {m for m, _ in COMMANDS.values()} == set(modules)


def test_full_and_lazy_parsers_list_the_same_commands():
    def listing(parser):
        action = next(a for a in parser._actions if a.dest == "command")
        return [(a.dest, a.help) for a in action._choices_actions]

    full = listing(build_parser())
    assert full == [(name, text) for name, (_, text) in COMMANDS.items()]
    for name in COMMANDS:
        assert listing(build_parser(name, full=False)) == full, name
    assert listing(build_parser(None, full=False)) == full


def _run(argv: list[str]) -> tuple[int, list[str], set[str]]:
    """`scfdata ARGV` in a fresh process, as the console script runs it: (exit code, lines printed, the
    modules imported by the end)."""
    code = ("import json, sys; from scfdata.cli import main\n"
            "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "print(json.dumps(sorted(sys.modules)))\nsys.exit(code)")
    env = {**os.environ, "COLUMNS": "200"}  # one line per command in the listing
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    *lines, modules = proc.stdout.splitlines() or [proc.stderr]
    assert modules.startswith("["), proc.stderr[-2000:]
    return proc.returncode, lines, set(json.loads(modules))


@pytest.mark.parametrize("argv", [["--help"], [], ["-v"]])
def test_help_and_no_command_list_every_command_without_importing_any(argv):
    code, lines, imported = _run(argv)
    assert code == 0
    assert not {m for m in imported if m.startswith("scfdata.commands.")}
    assert [m.group(1) for m in map(re.compile(r"^ {4}(\S+)").match, lines) if m] == list(COMMANDS)


def test_an_unknown_command_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["injest", "x.xyz"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'injest'" in err
    for name in COMMANDS:
        assert f"'{name}'" in err, name


@pytest.mark.parametrize("name", list(COMMANDS))
def test_start_up_of_each_command_imports_no_heavy_library_it_does_not_use(name):
    code, _, imported = _run([name, "--help"])
    assert code == 0
    own = f"scfdata.commands.{COMMANDS[name][0]}"
    assert own in imported
    others = {m for m in imported if m.startswith("scfdata.commands.") and m != own} - SHARED.get(name, set())
    assert not others, f"scfdata {name} imports other commands' modules: {sorted(others)}"
    assert not FORBIDDEN[name] & imported, f"scfdata {name} imports {sorted(FORBIDDEN[name] & imported)}"


def test_user_errors_are_value_errors():
    """cli.main turns ValueError into the one-line message without importing the modules that define the
    package's error classes: each of them must stay a ValueError."""
    from scfdata.h5io import FormatError
    from scfdata.ingest import IngestError
    from scfdata.targets import ConfigError
    from scfdata.validate import FrameError

    for cls in (FormatError, IngestError, ConfigError, FrameError):
        assert issubclass(cls, ValueError), cls


@pytest.fixture
def base_file(tmp_path, water_fixture, mace_scf_keys):
    """An ingested shard of MACE_SCF's 40 water clusters (energy, forces, l<=1 multipoles, dipole)."""
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump(mace_scf_keys))
    base = tmp_path / "base.h5"
    assert main(["ingest", str(water_fixture), "--keys", str(tmp_path / "keys.yaml"), "-o", str(base)]) == 0
    return base


def test_workflow_steps_import_no_heavy_library_they_do_not_use(base_file):
    """Real runs, not only --help: the light workflow steps import no torch, matplotlib, numba, scipy or
    ase.io (the ESP/field targets use numba/scipy for periodic configs and for open ones too large for the
    numpy engine, molecules scipy for large or periodic configs, `report` matplotlib, `export --format mace`
    scipy's neighbour list for avg_num_neighbors)."""
    d = base_file.parent
    runs = [["derive", "dipoles", str(base_file), "-o", str(d / "dipoles.h5")],
            ["statistics-shard", str(base_file), str(d / "dipoles.h5"), "-o", str(d / "sums.json")],
            ["statistics", str(d / "sums.json"), "-o", str(d / "statistics.json")],
            ["export", str(base_file), "--format", "extxyz", "-o", str(d / "out.extxyz")],
            ["verify", str(base_file)]]
    for argv in runs:
        code, lines, imported = _run(argv)
        assert code == 0, (argv, lines)
        assert not set(HEAVY) & imported, f"scfdata {argv[0]} imports {sorted(set(HEAVY) & imported)}"
    assert (d / "statistics.json").stat().st_size and (d / "out.extxyz").stat().st_size


def test_extxyz_ingest_and_index_import_no_ase_io_scipy_or_torch(tmp_path, water_fixture, mace_scf_keys):
    """The whole extxyz path (index, then ingest through the C parser) stays light: ase.io only for other
    formats and for frames the C parser refuses, scipy only for clusters above 256 atoms."""
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump(mace_scf_keys))
    for argv in (["index", str(water_fixture), "-o", str(tmp_path / "i.json")],
                 ["ingest", str(water_fixture), "--keys", str(tmp_path / "keys.yaml"), "-o", str(tmp_path / "b.h5")]):
        code, lines, imported = _run(argv)
        assert code == 0, lines
        assert not {"ase.io", "scipy", "torch", "matplotlib", "numba"} & imported, argv


def test_dataset_level_steps_import_no_torch_and_report_no_pyplot(base_file):
    """The jobs at the end of a workflow run: `report` (matplotlib's Agg canvas, not pyplot, and the loss
    table without torch), `inspect` and `check` (the loss registry, support check and option validation
    are plain Python) import no torch; `report` does write its plots."""
    d = base_file.parent
    manifest = {"dataset": "water", "configs_in": 40, "written": 40, "rejected": 0,
                "splits": {"train": {"path": str(base_file), "n_configs": 40}}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "train.yaml").write_text(yaml.safe_dump({"train_schedule": [
        {"name": "s", "start": 0, "end": 9, "lr": 0.01,
         "loss": {"energy_per_atom": 1.0, "forces": {"weight": 10, "convention": "mace_scf"},
                  "atomic_multipoles": {"weight": 1, "max_l": 1}, "fixedpoint_scf_stability": 0.1}}]}))
    runs = [["report", "--manifest", str(d / "manifest.json"), "-o", str(d / "report.md")],
            ["inspect", str(base_file)], ["inspect", str(base_file), "--json"],
            ["check", str(d / "train.yaml"), str(base_file)]]
    for argv in runs:
        code, lines, imported = _run(argv)
        assert code == 0, (argv, lines)
        assert not {m for m in imported if m == "torch" or m.startswith("torch.")}, f"scfdata {argv[0]} imports torch"
        assert "scfdata.losses.weighted" not in imported and "scfdata.losses.terms" not in imported, argv
        if argv[0] == "report":
            assert "matplotlib.pyplot" not in imported and "matplotlib.figure" in imported
        if argv[0] == "check":
            assert lines[-1].endswith(f"every train_schedule stage is supported by {base_file}")
        if argv[-1] == "--json":
            s = json.loads("\n".join(lines))
            assert s["losses"]["atomic_multipoles"] == {"supported": True, "n_configs": 40, "reason": "", "note": ""}
            assert s["problems"] == []
    text = (d / "report.md").read_text()
    assert "| `atomic_multipoles` | yes | 40 |" in text and (d / "plots" / "hist_forces.png").stat().st_size


def test_the_losses_package_imports_torch_only_for_weighted_loss():
    """`scfdata.losses` gives every public name as before; WeightedLoss (and a spec's fn) bring in torch
    when first asked for, not before."""
    code = ("import sys, json\n"
            "from scfdata.losses import LOSSES, LossSpec, supported_losses, check_schedule\n"
            "from scfdata.losses.registry import parse_loss_dict\n"
            "import scfdata.losses.suggest, scfdata.losses.options\n"
            "before = 'torch' in sys.modules\n"
            "from scfdata.losses import WeightedLoss\n"
            "from scfdata.losses import terms\n"
            "same = all(LOSSES[n].fn is getattr(terms, n) for n in LOSSES)\n"
            "print(json.dumps([before, 'torch' in sys.modules, same, WeightedLoss.__module__]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [False, True, True, "scfdata.losses.weighted"]
