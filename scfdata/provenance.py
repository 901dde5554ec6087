"""Versions of the packages that produced a file (recorded in its provenance)."""

from importlib.metadata import PackageNotFoundError, version


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("scfdata", "ase", "extxyz", "numpy", "scipy", "h5py", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
