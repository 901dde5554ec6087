"""Start-up of the ESP/field derive jobs: on open-boundary shards of small configs, `scfdata derive esps|fields`
runs the numpy direct sum and imports neither numba nor scipy (together ~0.5 s of a ~0.7 s job), with the
same results as the compiled numba loop.

Each job runs the CLI's ``main`` in a fresh process (as the workflow's shell command does) and reads
``sys.modules`` at its end; see tests/test_startup.py for the other commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from scfdata.cli import main
from scfdata.h5io import ScfdataFile

HEAVY = ("numba", "scipy", "torch", "matplotlib", "ase.io", "pandas")


def _run_fresh(argv: list[str]) -> tuple[int, str, set[str]]:
    """`scfdata ARGV` in a fresh process: (exit code, stderr, the modules imported by the end)."""
    code = ("import json, sys; from scfdata.cli import main\n"
            "code = main(sys.argv[1:])\nprint(json.dumps(sorted(sys.modules)))\nsys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=dict(os.environ))
    lines = proc.stdout.splitlines()
    assert lines and lines[-1].startswith("["), proc.stderr[-2000:]
    return proc.returncode, proc.stderr, set(json.loads(lines[-1]))


@pytest.fixture
def open_shard(tmp_path, water_fixture, mace_scf_keys):
    """An ingested shard of MACE_SCF's 40 water clusters (pbc F F F, 2-37 atoms, l <= 1 multipoles used)."""
    d = tmp_path
    (d / "keys.yaml").write_text(yaml.safe_dump(mace_scf_keys))
    base = d / "base.h5"
    assert main(["ingest", str(water_fixture), "--keys", str(d / "keys.yaml"), "-o", str(base)]) == 0
    return base


@pytest.mark.parametrize("target", ["esps", "fields"])
def test_open_boundary_derive_imports_neither_numba_nor_scipy(open_shard, target):
    out = open_shard.with_name(f"{target}.h5")
    code, err, imported = _run_fresh(["derive", target, str(open_shard), "-o", str(out)])
    assert code == 0, err[-2000:]
    assert "scfdata.reference.direct_sum_numpy" in imported  # the numpy engine ran
    assert not set(HEAVY) & imported, f"scfdata derive {target} imports {sorted(set(HEAVY) & imported)}"
    assert not {m for m in imported if m.startswith(("numba.", "scipy."))}

    # the same values as the compiled loop, on the same inputs (max_l = 1: charges and dipoles)
    pytest.importorskip("numba")
    from scfdata.reference.esp_realspace import realspace_potential_field

    with ScfdataFile(open_shard) as b, ScfdataFile(out) as f:
        got, mask = f.read(target), f.mask(target)
        assert f.field_attrs(target)["derived_by"]["max_l"] == 1
        pos, mp, ptr = b.read("positions"), b.read("atomic_multipoles"), b.atom_ptr
    assert mask.all() and np.diff(ptr).min() >= 2
    v, e = realspace_potential_field(pos, mp[:, 0], mp, None, ptr, dipole_columns=(3, 1, 2), engine="numba",
                                     with_fields=target == "fields")
    want = e if target == "fields" else v
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
