"""The public entry point for ESPs and fields at atoms: :func:`compute_esps`.

Configs are concatenated (``ptr``); each config's boundary is taken from its ``pbc`` row when
``boundary="auto"`` (FFF -> realspace, TTT -> pbc, TTF -> slab) and the configs of one boundary class are
dispatched together: all open-boundary configs in ONE batched direct sum
(:mod:`~scfdata.reference.esp_realspace`), periodic ones and slabs (:mod:`~scfdata.reference.slab`, whose
auxiliary 3D boxes go the same way) through :mod:`~scfdata.reference.periodic`: all cells below
``PME_MIN_ATOMS`` atoms in ONE compiled plain Ewald call (one cell per thread), larger ones one at a time
by smooth particle-mesh Ewald (N log N; same results to within ``tolerance``). ``molecule_in_box`` evaluates the
molecule as isolated (exact limit of the periodic evaluation minus its spurious image terms), i.e. with
the realspace engine.

Gauges (zero of potential): realspace -> 0 at infinity; pbc -> the cell average of the potential of the
charges plus a uniform neutralising background is 0 (tin-foil, k=0 term dropped); slab -> see
:mod:`~scfdata.reference.slab` (mean of the two far-vacuum levels is 0 for a neutral slab).

Inputs may be numpy arrays or torch tensors; outputs follow the positions (tensors of their dtype and
device). When every config is open-boundary, tensors on a GPU stay there (the torch engine of
:mod:`~scfdata.reference.realspace_torch`). CPU: numpy or numba (auto) per config by its own size, i.e.
the numpy direct sum (:mod:`~scfdata.reference.direct_sum_numpy`) for configs of at most 64 atoms, the
compiled loop (:mod:`~scfdata.reference.direct_sum_numba`) for larger ones; see
:func:`~scfdata.reference.esp_realspace.cpu_direct_sum`. Periodic and slab sums run on the CPU (tensors are
copied there and the results copied back).
Not supported: per-atom widths, l > 2, mixed pbc such as TFF or FTT (ValueError), slabs whose periodic
cell vectors are not the first two.
"""

from __future__ import annotations

import warnings

import numpy as np

from scfdata.reference.batch import atoms_of
from scfdata.reference.multipoles import check_multipole_columns, multipoles_to_cartesian

BOUNDARIES = ("auto", "realspace", "pbc", "slab", "molecule_in_box")
SOURCES = ("multipoles", "charges")


def to_numpy(x, dtype=float):
    if x is None:
        return None
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy().astype(dtype)
    return np.asarray(x, dtype=dtype)


def batch_arrays(positions, multipoles, ptr, cells, pbc):
    """Validated batch inputs: (positions (n, 3), multipoles (n, K), ptr, cells (c, 3, 3), pbc (c, 3)).

    positions and multipoles stay torch tensors when given as tensors (numpy float64 otherwise); ptr,
    cells (zeros when None) and pbc become numpy. A shape that does not fit is a ValueError saying which.
    """
    if not hasattr(positions, "detach"):
        positions = np.asarray(positions, dtype=float)
    if not hasattr(multipoles, "detach"):
        multipoles = np.asarray(multipoles, dtype=float)
    ptr_np = to_numpy(ptr, dtype=np.int64).reshape(-1)
    pbc_np = to_numpy(pbc, dtype=bool).reshape(-1, 3)
    n_cfg = ptr_np.shape[0] - 1
    cells_np = np.zeros((n_cfg, 3, 3)) if cells is None else to_numpy(cells).reshape(-1, 3, 3)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"`positions` must have shape [n_atoms, 3], got shape {list(positions.shape)}")
    n = positions.shape[0]
    mp = multipoles[:, None] if multipoles.ndim == 1 else multipoles
    if mp.shape[0] != n:
        raise ValueError(f"`multipoles` must have {n} rows (one per atom), got shape {list(mp.shape)}")
    if ptr_np[0] != 0 or ptr_np[-1] != n or np.any(np.diff(ptr_np) < 0):
        raise ValueError(f"`ptr` must rise from 0 to n_atoms={n}, got first {ptr_np[0]} and last {ptr_np[-1]}")
    if pbc_np.shape[0] != n_cfg or cells_np.shape[0] != n_cfg:
        raise ValueError(
            f"`cells` (n_configs, 3, 3) and `pbc` (n_configs, 3) must have n_configs={n_cfg} rows, got "
            f"{cells_np.shape[0]} and {pbc_np.shape[0]}"
        )
    return positions, mp, ptr_np, cells_np, pbc_np


_PBC_LABELS = np.array(["FFF", "FFT", "FTF", "FTT", "TFF", "TFT", "TTF", "TTT"])


def pbc_labels(pbc) -> np.ndarray:
    """Per-config pbc pattern as a string, e.g. "TTF", from pbc (n, 3) bool (vectorised lookup)."""
    p = np.asarray(pbc, dtype=bool).reshape(-1, 3)
    return _PBC_LABELS[p[:, 0] * 4 + p[:, 1] * 2 + p[:, 2]]


#: Boundary class of a config, as a small integer code (index into this array).
_CLASS_NAMES = np.array(["realspace", "pbc", "slab", "molecule_in_box"])
_REALSPACE, _PBC, _SLAB, _MOLECULE_IN_BOX = range(4)


def _class_codes(pbc, boundary: str) -> np.ndarray:
    """Per-config boundary class codes (int8, see ``_CLASS_NAMES``), vectorised over configs."""
    if boundary not in BOUNDARIES:
        raise ValueError(
            f"Unknown boundary {boundary!r}. Must be one of 'auto', 'realspace', 'pbc', 'slab', or "
            "'molecule_in_box'."
        )
    pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
    if boundary != "auto":
        return np.full(pbc.shape[0], list(_CLASS_NAMES).index(boundary), dtype=np.int8)
    fff = ~pbc.any(axis=1)
    ttt = pbc.all(axis=1)
    ttf = pbc[:, 0] & pbc[:, 1] & ~pbc[:, 2]
    bad = ~(fff | ttt | ttf)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"config {i} has pbc={pbc[i].tolist()}: boundary='auto' handles only FFF (realspace), TTT (pbc) "
            "and TTF (slab, z open); set `boundary` explicitly or fix the pbc flags"
        )
    return np.where(ttt, _PBC, np.where(ttf, _SLAB, _REALSPACE)).astype(np.int8)


def boundary_classes(pbc, boundary: str = "auto") -> np.ndarray:
    """Per-config boundary name (array of str) from pbc (n, 3) and the requested boundary."""
    return _CLASS_NAMES[_class_codes(pbc, boundary)]


def compute_esps(
    positions,
    multipoles,
    ptr,
    cells,
    pbc,
    *,
    max_l: int = 1,
    source: str = "multipoles",
    smearing_width: float = 0.0,
    self_interaction: str = "exclude",
    boundary: str = "auto",
    tolerance: float = 1e-6,
    with_fields: bool = False,
):
    """Electrostatic potential (V) and optionally the field (V/Å) at every atom of every config.

    Parameters
    ----------
    positions : (n_atoms, 3) Å.
    multipoles : (n_atoms, K) MACE_SCF order ``[Q, d_y, d_z, d_x, q_2,-2..2]``, K in (1, 4, 9); columns
        beyond ``(max_l+1)²`` are ignored.
    ptr : (n_configs + 1,) int atom pointer.
    cells : (n_configs, 3, 3) Å, rows are cell vectors (ignored for realspace configs).
    pbc : (n_configs, 3) bool.
    max_l : 0, 1 or 2; source : "multipoles" or "charges" (column 0 only).
    smearing_width : σ (Å) of the Gaussian-type multipoles; 0 = point multipoles.
    self_interaction : "exclude" (default) or "include" (σ > 0 only: adds the atom's own smeared
        density at its centre, k_e q √(2/π)/σ, as MACE_SCF does).
    boundary : "auto" | "realspace" | "pbc" | "slab" | "molecule_in_box".
    tolerance : target absolute error in V for the periodic sums (parameters chosen from it).
    with_fields : also return E = −∇V at the atoms.

    Returns
    -------
    esps (n_atoms,), fields (n_atoms, 3) or None.
    """
    from scfdata.reference.esp_realspace import realspace_potential_field  # torch: imported when used

    torch_like = positions if hasattr(positions, "detach") else None
    positions, mp, ptr_np, cells_np, pbc_np = batch_arrays(positions, multipoles, ptr, cells, pbc)
    n, n_cfg = positions.shape[0], ptr_np.shape[0] - 1
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}. Must be one of 'multipoles' or 'charges'.")
    if source == "charges":
        max_l = 0
    if max_l not in (0, 1, 2):
        raise ValueError(f"max_l must be 0, 1 or 2, got {max_l!r}")
    if self_interaction not in ("exclude", "include"):
        raise ValueError(f"Unknown self_interaction {self_interaction!r}. Must be 'exclude' or 'include'.")
    if self_interaction == "include" and not smearing_width > 0:
        raise ValueError(
            "self_interaction='include' is only defined for smeared multipoles (smearing_width > 0); "
            f"got smearing_width={smearing_width}. Use self_interaction='exclude' for point multipoles."
        )
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0 (volts), got {tolerance}")
    check_multipole_columns(tuple(mp.shape), max_l)
    mp = mp[:, : (max_l + 1) ** 2] if mp.shape[1] > 1 else mp
    codes = _class_codes(pbc_np, boundary)
    opts = dict(smearing_width=float(smearing_width), self_interaction=self_interaction, with_fields=with_fields)
    open_cfg = np.flatnonzero((codes == _REALSPACE) | (codes == _MOLECULE_IN_BOX))
    if torch_like is not None and open_cfg.size == n_cfg:
        # open boundaries only: tensors stay on their device (a GPU: the torch engine; the CPU: numba or numpy)
        return realspace_potential_field(positions, *multipoles_to_cartesian(mp, max_l), ptr_np, **opts)

    pos, mp = to_numpy(positions), to_numpy(mp)
    if open_cfg.size == n_cfg and max_l <= 1:  # all open, l <= 1: the multipoles read in place, no copies
        return realspace_potential_field(pos, mp[:, 0], mp if max_l else None, None, ptr_np,
                                         dipole_columns=(3, 1, 2), **opts)
    q, p, t = multipoles_to_cartesian(mp, max_l)
    if open_cfg.size == n_cfg:
        return realspace_potential_field(pos, q, p, t, ptr_np, **opts)
    esps = np.zeros(n)
    fields = np.zeros((n, 3)) if with_fields else None
    if open_cfg.size:
        idx, sub_ptr = atoms_of(ptr_np, open_cfg)
        v, e = realspace_potential_field(
            pos[idx], q[idx], None if p is None else p[idx], None if t is None else t[idx], sub_ptr,
            config_index=open_cfg, **opts
        )
        esps[idx] = v
        if with_fields:
            fields[idx] = e

    cells_3d = np.flatnonzero((codes == _PBC) & (np.diff(ptr_np) > 0))
    idx, sub_ptr = atoms_of(ptr_np, cells_3d)
    totals = np.add.reduceat(q[idx], sub_ptr[:-1]) if cells_3d.size else np.zeros(0)
    for c, total in zip(cells_3d[np.abs(totals) > 1e-8], totals[np.abs(totals) > 1e-8]):
        warnings.warn(
            f"config {int(c)} (pbc) carries a net charge {total:.6g} e: a uniform neutralising "
            "background is added (gauge: zero cell-average potential, see scfdata.reference.ewald)",
            stacklevel=2,
        )
    slabs = np.flatnonzero((codes == _SLAB) & (np.diff(ptr_np) > 0))
    if cells_3d.size or slabs.size:
        from scfdata.reference.periodic import periodic_potential_field
        from scfdata.reference.slab import slabs_potential_field

        for chosen, fn in ((cells_3d, periodic_potential_field), (slabs, slabs_potential_field)):
            if chosen.size == 0:
                continue
            idx, sub_ptr = atoms_of(ptr_np, chosen)
            v, e = fn(pos[idx], q[idx], None if p is None else p[idx], None if t is None else t[idx], sub_ptr,
                      cells_np[chosen], tolerance=tolerance, config_index=chosen, **opts)
            esps[idx] = v
            if with_fields:
                fields[idx] = e

    if torch_like is not None:
        import torch

        kw = dict(dtype=torch_like.dtype, device=torch_like.device)
        return torch.as_tensor(esps, **kw), (None if fields is None else torch.as_tensor(fields, **kw))
    return esps, fields
