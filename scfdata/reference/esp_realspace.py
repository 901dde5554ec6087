"""Open-boundary electrostatics: exact direct sum of potentials and fields at atoms, batched over configs.

Multipoles, kernels and the potential of one source: :mod:`scfdata.reference.multipole_kernels`
(q, Cartesian p, traceless Θ; point (σ = 0) or Gaussian (σ > 0); fields E = −∇V, V/Å).

Engines. Configs are concatenated with an atom pointer ``ptr``; interactions stay inside a config. Results
follow the positions: numpy in, numpy out; torch in, tensors of the positions' dtype and device (always
computed in float64). ``engine="auto"`` picks by where the data are:

* CPU (numpy arrays or CPU tensors): numba or numpy (auto), chosen per config by its own atom count, so a
  config's values never depend on the other configs of its batch or shard. Configs of at most
  ``AUTO_NUMPY_MAX_ATOMS`` atoms go to :mod:`scfdata.reference.direct_sum_numpy` (numpy, all pairs of the
  configs of one atom count at once, in chunks of bounded memory): a job of small molecules then imports
  neither numba nor scipy, ~0.4 s less than loading the compiled loop. Larger configs go to
  :mod:`scfdata.reference.direct_sum_numba`, one compiled loop over the unique pairs of every config
  (threads over configs; O(n) memory; measured 6x faster than the torch engine on the CPU for 10,000 small
  molecules, ``benchmarks/bench_esp_open.py``). ``engine="numba"`` or ``"numpy"`` forces one for every
  config (the two agree to round-off, ~1e-14 relative, not bit for bit).
* Any other device (a GPU): the torch engine, :mod:`scfdata.reference.realspace_torch`, on the tensors'
  device. ``engine="torch"`` forces it on the CPU too (the tests compare the two engines). torch is imported
  only for tensor inputs or that engine.

Self term: ``self_interaction="exclude"`` leaves out atom i's own density; ``"include"`` (σ > 0 only)
adds its value at the centre: potential ``k_e q √(2/π)/σ`` (dipole and quadrupole give 0 there) and
field ``−k_e p (4β³/(3√π))``, β = 1/(√2σ), for the atom's own smeared dipole.
Not supported: l > 2, distinct widths per atom or per l, gradients through the engines (use the result as
a target).
"""

from __future__ import annotations

import math

import numpy as np

from scfdata.reference.batch import raise_if_not_finite, raise_if_not_traceless
from scfdata.reference.multipole_kernels import MIN_SEPARATION, add_self_and_scale, is_torch

ENGINES = ("auto", "numba", "torch", "numpy")


def _raise_non_finite(pos, q, p, t, ptr, atom, config_index=None):
    """Explain a non-finite result at ``atom``: non-finite inputs, or two atoms closer than MIN_SEPARATION
    (numpy or torch arrays). Configs are named by ``config_index[c]`` (the caller's numbering; default c)
    and atoms are counted within their config."""
    from scipy.spatial import cKDTree  # only to explain an error: a job that succeeds does not import scipy

    arrays = [None if x is None else np.asarray(x.detach().cpu().numpy() if is_torch(x) else x) for x in (pos, q, p, t)]
    raise_if_not_finite(ptr, config_index, positions=arrays[0], charges=arrays[1], dipoles=arrays[2],
                        quadrupoles=arrays[3])
    c = int(np.searchsorted(ptr, atom, side="right")) - 1
    label = c if config_index is None else int(config_index[c])
    x = arrays[0][int(ptr[c]):int(ptr[c + 1])]
    d, nearest = cKDTree(x).query(x, k=2)  # O(n log n), memory-light also for configs of 10^4+ atoms
    i = int(np.argmin(d[:, 1]))
    j = int(nearest[i, 1] if nearest[i, 0] == i else nearest[i, 0])  # two at one point: either comes first
    i, j = min(i, j), max(i, j)
    raise ValueError(
        f"atoms {i} and {j} of config {label} sit at the same position (distance "
        f"{d[i, 1]:.3g} Å, below {MIN_SEPARATION:g} Å); the ESP is undefined: remove the duplicate atom or "
        "drop the config"
    )


def _check_lone_atoms(q, p, t, ptr, config_index) -> None:
    """Non-finite multipoles of atoms alone in their config (without the self term their ESP is 0 and would
    not show it; in larger configs every source reaches the other atoms' results, which are checked)."""
    lone_configs = np.flatnonzero(np.diff(ptr) == 1)
    if lone_configs.size:
        atoms = ptr[lone_configs]  # numpy indices select rows of tensors too
        labels = lone_configs if config_index is None else np.asarray(config_index)[lone_configs]
        raise_if_not_finite(np.arange(atoms.size + 1), labels,
                            **{name: None if x is None else _as_numpy(x[atoms])
                               for name, x in (("charges", q), ("dipoles", p), ("quadrupoles", t))})


def _all_finite(x) -> bool:
    """Every entry finite (numpy's check for CPU data: several times faster than torch's there)."""
    if not is_torch(x):
        return bool(np.isfinite(x).all())
    return bool(np.isfinite(x.numpy()).all()) if x.device.type == "cpu" else bool(x.isfinite().all())


def _checked(x, shape_tail, name, n=None):
    """``x`` (numpy or torch) checked to be (n, *shape_tail), an (n, 1) charge column flattened; a
    shape_tail ``(-k,)`` accepts any (n, K) with K >= k."""
    if x is None:
        return None
    if shape_tail == () and x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    tail = tuple(x.shape[1:])
    if shape_tail and shape_tail[0] < 0 and len(tail) == 1 and tail[0] >= -shape_tail[0]:
        tail = shape_tail  # (n, K >= k)
    if x.ndim != 1 + len(shape_tail) or tail != shape_tail or (n is not None and x.shape[0] != n):
        tails = [f">={-d}" if d < 0 else str(d) for d in shape_tail]
        want = ", ".join(["n_atoms" if n is None else str(n), *tails])
        raise ValueError(f"`{name}` must have shape [{want}], got shape {list(x.shape)}")
    return x


def _as_numpy(x):
    """float64 numpy array (a float64 view, e.g. a column of a wider array, stays a view; tensors copied to
    the CPU only when they are elsewhere)."""
    if x is None:
        return None
    if is_torch(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_tensor(x, device):
    """float64 tensor on ``device`` (numpy float64 with positive strides: no copy)."""
    import torch

    if x is None:
        return None
    if is_torch(x):
        return x.detach().to(device=device, dtype=torch.float64)
    x = np.asarray(x, dtype=np.float64)
    return torch.from_numpy(x if all(st > 0 for st in x.strides) else np.ascontiguousarray(x)).to(device)


def _ptr_array(ptr, n: int) -> np.ndarray:
    """The atom pointer as an int64 numpy array (default: one config), checked."""
    if ptr is None:
        return np.array([0, n], dtype=np.int64)
    if is_torch(ptr):
        ptr = ptr.detach().cpu().numpy()
    out = np.asarray(ptr, dtype=np.int64).reshape(-1)
    if out.size == 0 or out[0] != 0 or out[-1] != n or np.any(np.diff(out) < 0):
        raise ValueError(
            f"`ptr` must rise from 0 to n_atoms={n} (one entry more than configs), got {out[:4].tolist()}"
            f"{'…' if out.size > 4 else ''} (length {out.size}); build it as concatenate([[0], cumsum(sizes)])"
        )
    return out


#: engine="auto" on CPU data: configs of at most this many atoms run the numpy engine, larger ones numba
#: (n² pairs per config: numpy's ~6 ns per pair stays below numba's fixed ~0.4 s of loading for small
#: molecules and clusters; a config of hundreds of atoms is faster compiled).
AUTO_NUMPY_MAX_ATOMS = 64


def _direct_sum(engine: str):
    if engine == "numba":
        from scfdata.reference.direct_sum_numba import direct_sum  # numba: imported (and compiled) when used
    else:
        from scfdata.reference.direct_sum_numpy import direct_sum
    return direct_sum


def cpu_direct_sum(pos, q, p, t, ptr: np.ndarray, beta, with_fields: bool, p_cols: tuple, engine: str = "auto"):
    """(esps, fields or None) of CPU data by ``engine``; "auto": each config by its own atom count (numpy up
    to ``AUTO_NUMPY_MAX_ATOMS``, numba above), the results put back in atom order."""
    if engine != "auto":
        return _direct_sum(engine)(pos, q, p, t, ptr, beta, with_fields, dipole_columns=p_cols)
    counts = np.diff(ptr)
    small = counts <= AUTO_NUMPY_MAX_ATOMS
    parts = [(name, sel) for name, sel in (("numpy", small), ("numba", ~small)) if sel.any()]
    if len(parts) <= 1:
        name = parts[0][0] if parts else "numpy"
        return _direct_sum(name)(pos, q, p, t, ptr, beta, with_fields, dipole_columns=p_cols)
    esps = np.zeros(len(pos))
    fields = np.zeros((len(pos), 3)) if with_fields else None
    for name, sel in parts:
        atoms = np.repeat(sel, counts)
        sub_ptr = np.concatenate([[0], np.cumsum(counts[sel])])
        e, f = _direct_sum(name)(pos[atoms], q[atoms], None if p is None else p[atoms],
                                 None if t is None else t[atoms], sub_ptr, beta, with_fields, dipole_columns=p_cols)
        esps[atoms] = e
        if fields is not None:
            fields[atoms] = f
    return esps, fields


def realspace_potential_field(
    positions,
    charges,
    dipoles=None,
    quadrupoles=None,
    ptr=None,
    *,
    smearing_width: float = 0.0,
    self_interaction: str = "exclude",
    with_fields: bool = False,
    max_pairs: int = 2_000_000,
    engine: str = "auto",
    dipole_columns: tuple[int, int, int] = (0, 1, 2),
    config_index=None,
):
    """Exact open-boundary potential (V) and field (V/Å) at every atom, batched over configs.

    Parameters
    ----------
    positions : (n_atoms, 3) Å; charges (n_atoms,) e; dipoles (n_atoms, 3) e·Å Cartesian or None;
    quadrupoles (n_atoms, 3, 3) traceless Θ in e·Å² or None; ptr (n_configs+1,) (default: one config).
        numpy arrays or torch tensors (any mix; tensors are moved to the positions' device).
    smearing_width : σ in Å (0 = point multipoles).
    self_interaction : "exclude" or "include" (σ > 0 only).
    max_pairs : torch engine: pairs per chunk of the flat pair path for configs above ``_DENSE_MAX_ATOMS``
        atoms (memory ~ 300 bytes per pair with quadrupoles and fields).
    engine : "auto" (CPU: numpy or numba per config, see :func:`cpu_direct_sum`; torch on other devices),
        "numba" or "numpy" (CPU data only, every config) or "torch".
    dipole_columns : the columns of ``dipoles`` holding p_x, p_y, p_z; e.g. ``(3, 1, 2)`` reads MACE_SCF's
        multipole array ``[Q, d_y, d_z, d_x]`` as it is (the numba engine then copies nothing, unless the
        self term with fields needs the Cartesian dipoles).
    config_index : how error messages number the configs (the caller's indices; default 0, 1, ...).

    Returns
    -------
    esps (n_atoms,), fields (n_atoms, 3) or None: numpy float64 for numpy positions; for torch positions,
    tensors of their (floating) dtype on their device (always computed in float64).

    Raises ValueError for non-finite inputs, two atoms of one config closer than ``MIN_SEPARATION``
    (1e-6 Å), a quadrupole that is not symmetric and traceless, or a ``ptr`` that does not rise from 0 to
    n_atoms.
    """
    if self_interaction not in ("exclude", "include"):
        raise ValueError(f"Unknown self_interaction {self_interaction!r}. Must be 'exclude' or 'include'.")
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}. Must be one of {', '.join(map(repr, ENGINES))}.")
    if self_interaction == "include" and not smearing_width > 0:
        raise ValueError(
            "self_interaction='include' needs smearing_width > 0 (a point charge's own potential is "
            f"infinite); got smearing_width={smearing_width}. Use 'exclude' or set a width."
        )
    p_cols = tuple(int(c) for c in dipole_columns)
    if len(p_cols) != 3 or min(p_cols) < 0 or len(set(p_cols)) != 3:
        raise ValueError(
            f"`dipole_columns` must be 3 distinct non-negative column indices (x, y, z), got {dipole_columns!r}"
        )
    torch_out = is_torch(positions)
    device = positions.device if torch_out else None
    on_cpu = device is None or device.type == "cpu"
    if engine == "auto" and not on_cpu:
        engine = "torch"
    if engine in ("numba", "numpy") and not on_cpu:
        raise ValueError(f"engine={engine!r} runs on the CPU; the inputs are on {device}. Use engine='auto'.")
    convert = (lambda x: _as_tensor(x, device or "cpu")) if engine == "torch" else _as_numpy
    pos = _checked(convert(positions), (3,), "positions")
    n = pos.shape[0]
    q = _checked(convert(charges), (), "charges", n)
    p = _checked(convert(dipoles), (3,) if p_cols == (0, 1, 2) else (-(max(p_cols) + 1),), "dipoles", n)
    t = _checked(convert(quadrupoles), (3, 3), "quadrupoles", n)
    ptr_np = _ptr_array(ptr, n)
    if not _all_finite(pos):  # an infinite position would give finite nonsense
        _raise_non_finite(pos, q, None, None, ptr_np, 0, config_index)
    raise_if_not_traceless(t, ptr_np, config_index)
    _check_lone_atoms(q, p, t, ptr_np, config_index)
    sigma = float(smearing_width)
    beta = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else None
    include_self = self_interaction == "include"
    if engine != "torch":  # CPU data
        esps, fields = cpu_direct_sum(pos, q, p, t, ptr_np, beta, with_fields, p_cols, engine)
    if p is not None and p_cols != (0, 1, 2) and (engine == "torch" or (include_self and with_fields)):
        p = p[:, list(p_cols)]  # Cartesian (n, 3): the torch engine and the self field read it so
    if engine == "torch":
        from scfdata.reference.realspace_torch import torch_engine

        esps, fields = torch_engine(pos, q, p, t, ptr_np, beta, with_fields, max_pairs)
    add_self_and_scale(esps, fields, q, p, sigma, include_self)
    if not (_all_finite(esps) and (fields is None or _all_finite(fields))):
        total = _as_numpy(esps) if fields is None else _as_numpy(esps) + _as_numpy(fields).sum(1)
        _raise_non_finite(pos, q, p, t, ptr_np, int(np.flatnonzero(~np.isfinite(total))[0]), config_index)
    if torch_out:  # tensors of the positions' (floating) dtype on their device
        import torch

        out_dtype = positions.dtype if positions.is_floating_point() else torch.float64
        return tuple(None if x is None else torch.as_tensor(x).to(device=device, dtype=out_dtype)
                     for x in (esps, fields))
    if engine == "torch":
        return esps.numpy(), (None if fields is None else fields.numpy())
    return esps, fields
