"""The numba cache cannot serve kernels compiled from other sources (scfdata.reference.numba_cache).

numba keys its cache by the file of the jitted function only; a kernel inlined from another module used to
survive edits of that module (a sign flip in the dipole potential passed every test on a stale cache).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import pytest

import scfdata
import scfdata.reference
from scfdata.reference import numba_cache

PACKAGE = Path(scfdata.__file__).resolve().parent

# the potential (units of k_e) at atom 0 of a dipole p = (0, 0, 1) e·Å at z = 2 Å: p·R/R³ = −0.25, R = r_0 − r_1
PROBE = """
import json, numpy as np
from scfdata.reference import direct_sum_numba as d, numba_cache as c
pos = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
p = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
v, _ = d.direct_sum(pos, np.zeros(2), p, None, np.array([0, 2]), 0.0, False)
print(json.dumps({"v0": v[0], "cache": str(d._small_configs._cache.cache_path), "key": c.KEY, "file": d.__file__}))
"""


def test_key_follows_content_of_every_reference_module_not_timestamps(tmp_path):
    src = tmp_path / "reference"
    shutil.copytree(PACKAGE / "reference", src, ignore=shutil.ignore_patterns("__pycache__"))
    key = numba_cache.source_key(src)
    assert key == numba_cache.KEY  # the copy has the same content as the imported package
    for f in src.glob("*.py"):
        os.utime(f, (1.0, 1.0))  # timestamps do not matter
    assert numba_cache.source_key(src) == key
    keys = {key}
    for name in ("multipole_kernels_numba.py", "multipole_kernels.py", "direct_sum_numba.py", "ewald_numba.py"):
        f = src / name
        text = f.read_text()
        f.write_text(text + "\n")  # one byte more, anywhere
        keys.add(numba_cache.source_key(src))
        f.write_text(text)
    assert len(keys) == 5 and numba_cache.source_key(src) == key
    (src / "new_kernels.py").write_text("")  # a new module is part of the key too
    assert numba_cache.source_key(src) != key


def test_every_kernel_of_the_package_is_cached_under_the_content_key():
    """Every numba dispatcher defined in scfdata caches into the keyed directory, and no module outside
    scfdata.reference jits anything (their sources would not be part of the key)."""
    assert numba_cache.CACHE_DIR is not None and numba_cache.CACHE_DIR.name == "scfdata-numba-" + numba_cache.KEY
    found = 0
    for info in pkgutil.iter_modules(scfdata.reference.__path__):
        if info.name == "mace_scf_preset":
            continue  # imports graph-longrange (optional), defines no kernel
        mod = importlib.import_module(f"scfdata.reference.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.py_func.__module__ == mod.__name__:
                found += 1
                assert obj._cache is not None, f"{mod.__name__}.{obj.__name__} is not cached"
                path = Path(obj._cache.cache_path).resolve()
                assert numba_cache.CACHE_DIR.resolve() in path.parents, (obj, path)
    assert found >= 11  # 4 pair kernels, 3 in the direct sum, 4 in the Ewald sum
    for f in PACKAGE.rglob("*.py"):
        if f.parent != PACKAGE / "reference":
            text = f.read_text()
            assert "numba.njit" not in text and "numba.jit" not in text and "@njit" not in text, f


def _probe(env: dict) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=600,
                         cwd=env["PYTHONPATH"])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_edit_of_an_inlined_kernel_is_never_served_from_a_stale_cache(tmp_path):
    """A copy of the package: compile and cache, flip the sign of the dipole potential in
    multipole_kernels_numba.py (the caller's file unchanged), run again: the new sign, from a new directory."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "scfdata", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(copy), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = _probe(env)
    assert Path(first["file"]).is_relative_to(copy)
    assert first["v0"] == pytest.approx(-0.25, rel=1e-14)  # p·R/R³, R = r_0 − r_1 = (0, 0, −2) Å
    assert any(Path(first["cache"]).glob("*.nbi"))  # cached on disk
    assert _probe(env) == first  # same sources: same directory, same result

    kernels = copy / "scfdata" / "reference" / "multipole_kernels_numba.py"
    text = kernels.read_text()
    assert text.count("        v -= pr * g1\n") == 1
    stamp = kernels.stat()
    kernels.write_text(text.replace("        v -= pr * g1\n", "        v += pr * g1\n"))
    os.utime(kernels, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # even with the old timestamp
    flipped = _probe(env)
    assert flipped["v0"] == pytest.approx(-first["v0"], rel=1e-14)
    # under the user's NUMBA_CACHE_DIR, one directory per content
    for run in (first, flipped):
        assert Path(run["cache"]).is_relative_to(tmp_path / "cache" / ("scfdata-numba-" + run["key"]))
    assert flipped["key"] != first["key"]
