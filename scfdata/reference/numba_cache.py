"""Where the compiled numba kernels are cached: a directory keyed by the content of the kernel sources.

numba's own cache is keyed by the file that defines a jitted function only. A kernel inlined from another
module (:mod:`~scfdata.reference.multipole_kernels_numba`), or a module constant compiled in
(``MIN_SEPARATION`` of :mod:`~scfdata.reference.multipole_kernels`), can change while that file does not,
and numba then loads the old machine code: tests pass on code that no longer exists. Here every kernel is
cached under ``<base>/scfdata-numba-<KEY>``, with ``KEY`` a hash of the content of every ``*.py`` file of
``scfdata/reference`` (every module a kernel can see); any edit there, or a different checkout, selects
another directory, so a cached kernel always belongs to the sources being imported. Timestamps play no part
(touching files is neither needed nor useful).

``<base>``: ``NUMBA_CACHE_DIR`` (``numba.config.CACHE_DIR``) when set, e.g. by a workflow profile or a
cluster job whose package directory is read-only; else ``scfdata/reference/__pycache__`` (numba's own
default); else ``$XDG_CACHE_HOME/scfdata`` (``~/.cache/scfdata``). When none is writable, the kernels compile
in memory in every process (correct, ~seconds slower). Keyed directories of other contents that were not used
for ``PRUNE_AFTER_S`` are removed, so edits do not pile up caches (~7 MB each).

Use :func:`cached_njit` instead of ``numba.njit(cache=True)`` for every kernel of the package
(``tests/reference/test_numba_cache.py`` checks that no dispatcher escapes it). The same key is computed in
every process that imports the package (a pytest session, a snakemake job, a warm-up job), so they share one
cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numba

log = logging.getLogger(__name__)

#: The sources whose content keys the cache: every module of scfdata.reference.
SOURCE_DIR = Path(__file__).resolve().parent
#: Prefix of the keyed cache directories (only directories with this prefix are ever pruned).
PREFIX = "scfdata-numba-"
#: Keyed directories of other contents unused for this long are removed (s).
PRUNE_AFTER_S = 24 * 3600.0


def source_key(directory: str | os.PathLike = SOURCE_DIR) -> str:
    """16 hex digits of sha256 over the names and bytes of every ``*.py`` file of ``directory``."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _prune(base: Path, keep: Path) -> None:
    """Remove keyed siblings of ``keep`` unused for PRUNE_AFTER_S (numba recreates a directory it saves to)."""
    import shutil

    now = time.time()
    for d in base.glob(PREFIX + "*"):
        with contextlib.suppress(OSError):
            if d != keep and d.is_dir() and now - d.stat().st_mtime > PRUNE_AFTER_S:
                shutil.rmtree(d, ignore_errors=True)


def cache_dir(key: str | None = None) -> Path | None:
    """The keyed cache directory for this process (created, marked as used), or None if nothing is writable."""
    key = key or source_key()
    bases = [Path(numba.config.CACHE_DIR)] if numba.config.CACHE_DIR else []
    bases += [SOURCE_DIR / "__pycache__",
              Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scfdata"]
    for base in bases:
        path = base / (PREFIX + key)
        if _writable(path):
            with contextlib.suppress(OSError):
                os.utime(path)  # "last used", for the pruning of other processes
            _prune(base, path)
            return path
    log.warning("no writable numba cache directory among %s: the kernels compile in every process",
                ", ".join(map(str, bases)))
    return None


#: The content key of this import and its cache directory (None: caching off).
KEY = source_key()
CACHE_DIR = cache_dir(KEY)


@contextlib.contextmanager
def _numba_cache_dir(path: Path):
    """numba's CACHE_DIR set to ``path`` while a dispatcher is created (its cache locator reads it then)."""
    before = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(path)
    try:
        yield
    finally:
        numba.config.CACHE_DIR = before


def cached_njit(**options):
    """``numba.njit(cache=True, **options)`` cached in :data:`CACHE_DIR` (compiled uncached if that is None)."""

    def decorate(func):
        if CACHE_DIR is None:
            return numba.njit(cache=False, **options)(func)
        with _numba_cache_dir(CACHE_DIR):
            return numba.njit(cache=True, **options)(func)

    return decorate
