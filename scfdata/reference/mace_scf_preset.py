"""``reference.esps.preset: mace_scf``: the ESP a MACE_SCF model computes internally, with graph-longrange.

MACE_SCF trains its ``esps`` loss on ``GTOElectrostaticFeatures.compute_esps`` of graph-longrange (its
electrostatics backend), called with the DFT density coefficients and the model's own settings. The loss
compares a target with the model's prediction, so both must share one convention, or the loss penalises
a convention difference. This module calls that same graph-longrange code (PyPI ``graph-longrange==0.4.4``,
the optional extra ``pip install 'scfdata[mace_scf]'``) on the stored multipoles.

Convention (what MACE_SCF does, with its defaults)
--------------------------------------------------
* Density: Gaussian-type multipoles of width σ = 1.5 Å up to ``max_l`` = 1, columns ``[Q, d_y, d_z, d_x]``
  passed unchanged (MACE_SCF's stored order is graph-longrange's e3nn order; quadrupole columns are
  dropped, as MACE_SCF does with ``atomic_multipoles_max_l: 1``).
* Everything is a reciprocal-space sum in the config's cell: ``V(r) = Σ_{k≠0} 4π k_e ρ(k)/k² e^{ik·r}/V``.
  The atom's own smeared density is included (self term ``k_e q √(2/π)/σ`` for its charge).
* Coulomb constant: graph-longrange's ``FIELD_CONSTANT = 1/ε0`` = 4π × 14.3996453535 eV·Å/e², 8.0e-9
  relative below scfdata's ``K_E`` (14.3996454687, scipy.constants); kept, since the model uses it.
* Boundaries and gauges, per config (MACE_SCF's default ``mixed_periodic`` handling of the ESP):

  - TTT: tin-foil, k = 0 dropped: the cell average of the potential is zero (a charged cell gets a
    neutralising background). Same convention as scfdata's ``boundary: pbc`` with σ = 1.5 Å,
    ``self_interaction: include`` (they agree to ~1e-14 V at a converged cut-off once both use one
    Coulomb constant).
  - TTF (slab, z open): the same periodic sum in the cell as given (its vacuum included) plus the
    Yeh–Berkowitz term ``4π k_e M_z z_i / V``. The constant ``−(2π k_e/V) Σ_j (q_j z_j² + 2 p_j,z z_j)``
    of the exact slab potential is missing, so the zero of potential moves when the slab is translated
    along z (by ``(4π k_e/V) M_z Δz`` per Å for a neutral slab) and depends on the vacuum; charged slabs
    also miss the ``Q z²`` terms. scfdata's own ``boundary: slab`` (gauge: far-vacuum levels average to
    zero) differs from the preset by exactly that constant for a neutral slab in enough vacuum.
  - FFF (clusters): MACE_SCF evaluates clusters periodically in their cell (its docs ask for a 30–40 Å box)
    and applies no molecule correction to the ESP: the preset is the tin-foil periodic ESP in the config's
    cell, gauge as for TTT. It differs from the isolated-molecule (``realspace``) ESP by the image terms,
    to leading order ``+(2π k_e/3V) Σ_j [q_j |r_j − r_i|² + 2 p_j·(r_j − r_i)]`` for a neutral molecule in a
    cubic box (~1e-2 V for a water cluster in a 40 Å box); a charged cluster is moreover shifted by the
    Madelung term of its neutralising background, ≈ −2.837 k_e Q/L (−1.02 V for Q = +1 in a 40 Å cubic
    box). A config without a cell cannot be evaluated.
* An external field E (``external_field``, V/Å, per config) enters as MACE_SCF adds it: ``+E·r_i`` on the
  ESP (and ``−E`` on the field).

Reciprocal cut-off: converged, not the model's. MACE_SCF's cut-off is ``kspace_cutoff_factor ×
0.75·3/min(σ, feature widths)·(l+1)^0.3`` (graph-longrange's ``gto_basis_kspace_cutoff``), which depends
on hyper-parameters of the model that the data cannot know. With MACE_SCF's parser defaults (factor 1.25,
feature widths [1.0, 2.0], l = 1) that is 3.46 Å⁻¹ = 5.19/σ, within a few µV of the converged value
(1.5e-6 V at most on MACE_SCF's own water clusters), so one converged target serves every model;
graph-longrange's bare heuristic 2.25/σ would be 0.2–1 V off. The default is chosen from ``tolerance``
and never below 6/σ (see :func:`converged_kspace_cutoff`); pass ``kspace_cutoff`` (e.g.
:func:`model_kspace_cutoff`) to reproduce a given model's truncation exactly.

Fields (``with_fields``): E = −∇V of the same potential at each atom with the sources held fixed, from
graph-longrange's potential Fourier coefficients (plus ``−4π k_e M_z/V`` ẑ for slabs); the own smeared
dipole's field at its centre is included, as the own density is in the ESP. MACE_SCF itself computes no
fields; this is the gradient of its potential.

Cost: configs are batched into one graph-longrange call while ``n_k × n_atoms`` of the batch stays below
``batch_elements`` (graph-longrange builds dense (k-vectors × atoms) matrices over the whole batch, so larger
batches cost quadratically); the k-vectors of a config above ``max_elements`` are split into pieces, so
memory stays bounded. Measured (2 CPU cores): ~15 ms per water cluster in a 40 Å box, ~1 ms per
30-atom 10 Å bulk cell.
Not supported: ``max_l`` > 1 (graph-longrange 0.4.4's radial integrals stop at l = 1), per-atom widths,
pbc patterns other than FFF, TTT and TTF, cells with zero volume (ValueError for each); MACE_SCF's
``realspace``/``slab``/``molecule_in_box`` modes (only its default ``mixed_periodic`` is reproduced; its
``realspace`` mode, with 0.1 Å two-charge dipoles, has no ESP at all).
The cell of a cluster is taken as given (as MACE_SCF's docs require); a left-handed cell is evaluated
with its absolute volume (MACE_SCF would flip the sign; scfdata's ingest rejects such cells).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np

from scfdata.reference.esp import batch_arrays, pbc_labels, to_numpy

#: graph-longrange release this preset is pinned to (the `mace_scf` extra installs exactly this one).
GRAPH_LONGRANGE_VERSION = "0.4.4"
#: MACE_SCF's defaults for the density (``--atomic_multipoles_smearing_width``, ``--atomic_multipoles_max_l``).
MACE_SCF_SMEARING_WIDTH = 1.5
MACE_SCF_MAX_L = 1
INSTALL_HINT = "pip install 'scfdata[mace_scf]'"
_PBC_CLASSES = ("FFF", "TTT", "TTF")


class GraphLongrangeMissing(ImportError, ValueError):
    """graph-longrange (or mace-torch, which it imports) is not installed; a ValueError too, for the CLI."""


def _graph_longrange():
    """Import graph-longrange lazily (it pulls e3nn, which under torch >= 2.6 needs `slice` allow-listed)."""
    import torch

    if hasattr(torch.serialization, "add_safe_globals"):
        # e3nn 0.4.4 torch.load()s its constants with a `slice` inside; torch >= 2.6 loads weights_only
        torch.serialization.add_safe_globals([slice])
    try:
        from graph_longrange import features, gto_utils, kspace, utils
    except ImportError as e:
        raise GraphLongrangeMissing(
            f"reference.esps.preset: mace_scf computes the ESP with graph-longrange (MACE_SCF's electrostatics "
            f"backend), which could not be imported ({e}); install it with: {INSTALL_HINT}"
        ) from e
    return features, gto_utils, kspace, utils


def graph_longrange_version() -> str:
    """Installed graph-longrange version ("not installed" when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("graph-longrange")
    except PackageNotFoundError:
        return "not installed"


def coulomb_constant() -> float:
    """graph-longrange's Coulomb constant ``FIELD_CONSTANT/(4π)`` in eV·Å/e² (8.0e-9 relative below K_E)."""
    _, _, _, utils = _graph_longrange()
    return float(utils.FIELD_CONSTANT) / (4.0 * math.pi)


@contextmanager
def _float64_default():
    """float64 default dtype (graph-longrange builds its basis constants in it); its numpy-2 deprecation
    warnings (scipy.special on torch tensors) silenced."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*__array_wrap__.*")
            yield
    finally:
        torch.set_default_dtype(old)


def model_kspace_cutoff(
    smearing_width: float = MACE_SCF_SMEARING_WIDTH,
    max_l: int = MACE_SCF_MAX_L,
    field_feature_widths=(1.0, 2.0),
    field_feature_max_l: int = 1,
    kspace_cutoff_factor: float = 1.25,
) -> float:
    """The reciprocal cut-off (1/Å) a MACE_SCF model uses, from its hyper-parameters (MACE_SCF defaults)."""
    _, gto_utils, _, _ = _graph_longrange()
    sigmas = [float(smearing_width), *map(float, field_feature_widths)]
    return float(kspace_cutoff_factor) * gto_utils.gto_basis_kspace_cutoff(sigmas, max(max_l, field_feature_max_l))


def converged_kspace_cutoff(smearing_width: float, tolerance: float, strength: float = 100.0) -> float:
    """Reciprocal cut-off (1/Å) at which the truncated tail of Gaussian multipoles is below ``tolerance`` V.

    The tail of a Gaussian charge's potential beyond k_c is at most its share of the self term,
    ``k_e √(2/π)/σ · erfc(k_c σ/√2)`` per unit charge; ``strength`` (e) is the total Σ|q| + Σ|p|/σ whose
    tails are assumed to add up at one atom (a deliberately pessimistic bound; the default, 100 e, covers
    configs of a few hundred atoms). Never below 6/σ (~1e-8 V measured there for water-like charges).
    The default is a function of the settings only, not of the data, so that the same config gets the same
    target whichever shard it lands in.
    """
    from scipy.special import erfc

    from scfdata.constants import K_E

    sigma = float(smearing_width)
    scale = K_E * math.sqrt(2.0 / math.pi) / sigma * max(float(strength), 1e-12)
    x = 6.0 / math.sqrt(2.0)
    while scale * erfc(x) > tolerance and x < 20.0:
        x += 0.05
    return x * math.sqrt(2.0) / sigma


def _estimate_n_k(volume: np.ndarray, kc: float) -> np.ndarray:
    """Number of half-space k-vectors within k_c (the sphere's volume over the reciprocal cell's, halved)."""
    return volume * kc**3 / (12.0 * math.pi**2) + 1.0


def _groups(n_atoms: np.ndarray, n_k: np.ndarray, max_elements: int) -> list[np.ndarray]:
    """Consecutive configs batched while (Σ n_k)(Σ n_atoms) stays below max_elements (at least one each)."""
    groups, start, sk, sa = [], 0, 0.0, 0.0
    for c in range(len(n_atoms)):
        if c > start and (sk + n_k[c]) * (sa + n_atoms[c]) > max_elements:
            groups.append(np.arange(start, c))
            start, sk, sa = c, 0.0, 0.0
        sk, sa = sk + n_k[c], sa + n_atoms[c]
    if len(n_atoms):
        groups.append(np.arange(start, len(n_atoms)))
    return groups


def mace_scf_esps(
    positions,
    multipoles,
    ptr,
    cells,
    pbc,
    *,
    smearing_width: float = MACE_SCF_SMEARING_WIDTH,
    max_l: int = MACE_SCF_MAX_L,
    kspace_cutoff: float | None = None,
    tolerance: float = 1e-6,
    external_field=None,
    with_fields: bool = False,
    batch_elements: int = 2**18,
    max_elements: int = 2**21,
):
    """ESP (V) at every atom as a MACE_SCF model computes it (graph-longrange), and optionally E = −∇V.

    Parameters
    ----------
    positions : (n_atoms, 3) Å.
    multipoles : (n_atoms, K) MACE_SCF order ``[Q, d_y, d_z, d_x, ...]``, K in (1, 4, 9); the first
        ``(max_l+1)²`` columns are used (fewer columns lower the order: charges only give l = 0).
    ptr : (n_configs + 1,) atom pointer.
    cells : (n_configs, 3, 3) Å, rows are cell vectors; every config needs a non-singular cell (clusters
        too: MACE_SCF evaluates them periodically in their box).
    pbc : (n_configs, 3) bool; FFF, TTT or TTF (see the module docstring for each one's convention).
    smearing_width : σ (Å) of the Gaussian multipoles (MACE_SCF's ``atomic_multipoles_smearing_width``).
    max_l : 0 or 1 (``atomic_multipoles_max_l``).
    kspace_cutoff : reciprocal cut-off (1/Å); None = :func:`converged_kspace_cutoff` of σ and ``tolerance``
        (never below 6/σ; 4.05 Å⁻¹ for σ = 1.5 Å and 1e-6 V).
    tolerance : target truncation error in V when ``kspace_cutoff`` is None.
    external_field : (n_configs, 3) V/Å or None; adds ``+E·r_i`` to the ESP as MACE_SCF does.
    with_fields : also return the field at the atoms (V/Å).
    batch_elements : configs are batched into one graph-longrange call while (k-vectors × atoms) of the
        batch stays below this (measured best 2^16–2^18: the dense matrices grow quadratically with the batch).
    max_elements : bound on (k-vectors × atoms) per graph-longrange call; a larger config's k-vectors are
        split into pieces (measured peak ~100 bytes per element: 2^21 -> ~200 MB above torch's own).

    Returns
    -------
    esps (n_atoms,), fields (n_atoms, 3) or None. numpy arrays, or torch tensors of the input's dtype and
    device when ``positions`` is a tensor (the computation runs in float64 on the CPU).
    """
    features, _, kspace, gl_utils = _graph_longrange()
    import torch

    torch_like = positions if hasattr(positions, "detach") else None
    pos, mp, ptr_np, cells_np, pbc_np = batch_arrays(positions, multipoles, ptr, cells, pbc)
    pos, mp = to_numpy(pos), to_numpy(mp)
    n, n_cfg = pos.shape[0], ptr_np.shape[0] - 1
    if mp.shape[1] not in (1, 4, 9):
        raise ValueError(f"`multipoles` must have shape [{n}, K] with K in (1, 4, 9), got {list(mp.shape)}")
    if max_l not in (0, 1):
        raise ValueError(
            f"preset mace_scf supports max_l 0 or 1 (graph-longrange {GRAPH_LONGRANGE_VERSION} has no l = 2 "
            f"GTO density), got max_l={max_l!r}"
        )
    if not smearing_width > 0:
        raise ValueError(f"preset mace_scf needs a Gaussian width smearing_width > 0 (Å), got {smearing_width}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0 (volts), got {tolerance}")
    max_l = min(max_l, {1: 0, 4: 1, 9: 2}[mp.shape[1]])
    mp = mp[:, : (max_l + 1) ** 2]
    cls = pbc_labels(pbc_np)
    bad = ~np.isin(cls, _PBC_CLASSES)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"config {i} has pbc {cls[i]}: preset mace_scf handles FFF (cluster in its box), TTT and TTF "
            "(slab, z open) only; fix the pbc flags or use explicit esps settings"
        )
    volume = np.abs(np.linalg.det(cells_np)) if n_cfg else np.zeros(0)
    counts = np.diff(ptr_np)
    flat = (volume <= 1e-9 * np.maximum(1.0, np.abs(cells_np).max(axis=(1, 2)) ** 3)) & (counts > 0)
    if flat.any():
        i = int(np.flatnonzero(flat)[0])
        raise ValueError(
            f"config {i} (pbc {cls[i]}) has a cell with zero volume {cells_np[i].tolist()}: MACE_SCF evaluates "
            "every config periodically in its cell (clusters in a 30-40 Å box); give the config a cell"
        )
    field = None
    if external_field is not None:
        field = to_numpy(external_field).reshape(-1, 3)
        if field.shape[0] != n_cfg:
            raise ValueError(f"`external_field` must have shape [{n_cfg}, 3], got {list(field.shape)}")
    if kspace_cutoff is None:
        kspace_cutoff = converged_kspace_cutoff(smearing_width, tolerance)
    kc = float(kspace_cutoff)
    if not kc > 0:
        raise ValueError(f"kspace_cutoff must be > 0 (1/Å), got {kspace_cutoff}")

    esps = np.zeros(n)
    fields = np.zeros((n, 3)) if with_fields else None
    live = np.flatnonzero(counts > 0)  # graph-longrange infers the graph count from the atoms: no empty ones
    with _float64_default():
        module = features.GTOElectrostaticFeatures(
            density_max_l=max_l,
            density_smearing_width=float(smearing_width),
            feature_max_l=0,  # the features are not used by compute_esps
            feature_smearing_widths=[float(smearing_width)],
            include_self_interaction=False,
            kspace_cutoff=kc,
            pbc_handling="mixed_periodic",
        )
        n_k = _estimate_n_k(volume[live], kc)
        for g in _groups(counts[live], n_k, batch_elements):
            cfg = live[g]
            atoms = slice(ptr_np[cfg[0]], ptr_np[cfg[-1] + 1])  # consecutive configs (empty ones hold no atoms)
            v, e = _evaluate_group(
                features, kspace, gl_utils, module, kc, pos[atoms], mp[atoms], counts[cfg], cells_np[cfg],
                pbc_np[cfg], with_fields, max_elements,
            )
            esps[atoms] = v
            if with_fields:
                fields[atoms] = e
    if field is not None:
        atom_field = np.repeat(field, counts, axis=0)
        esps += np.einsum("ij,ij->i", atom_field, pos)
        if with_fields:
            fields -= atom_field

    if torch_like is not None:
        kw = dict(dtype=torch_like.dtype, device=torch_like.device)
        return torch.as_tensor(esps, **kw), (None if fields is None else torch.as_tensor(fields, **kw))
    return esps, fields


def _evaluate_group(features, kspace, gl_utils, module, kc, pos, mp, counts, cells, pbc, with_fields, max_elements):
    """One batch of configs: graph-longrange's compute_esps, over pieces of the k-vector list."""
    import torch

    cell = torch.tensor(cells, dtype=torch.float64)  # copies: inputs may be read-only memory maps
    rcell = 2.0 * math.pi * torch.linalg.inv(cell.mT)
    k_vectors, k_norm2, k_batch, k0_mask = kspace.compute_k_vectors_flat(kc, cell, rcell)
    positions = torch.tensor(pos, dtype=torch.float64)
    source = torch.tensor(mp, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.as_tensor(counts))
    volume = torch.linalg.det(cell).abs()
    pbc_t = torch.tensor(pbc, dtype=torch.bool)
    periodic = torch.ones_like(pbc_t)  # later k pieces: TTT, so the slab term is added once, with piece 0
    step = max(1, int(max_elements // max(len(pos), 1)))
    esps = torch.zeros(len(pos), dtype=torch.float64)
    efield = torch.zeros((len(pos), 3), dtype=torch.float64) if with_fields else None
    for start in range(0, len(k_vectors), step):
        piece = slice(start, start + step)
        flags = pbc_t if start == 0 else periodic
        cache = module.precompute_geometry(
            k_vectors=k_vectors[piece], k_norm2=k_norm2[piece], k_vector_batch=k_batch[piece],
            k0_mask=k0_mask[piece], node_positions=positions, batch=batch, volume=volume, pbc=flags,
        )
        esps += module.compute_esps(cache=cache, source_feats=source, pbc=flags)
        if with_fields:
            # V(r) = Σ_k [2 Re φ_k cos(k·r) − 2 Im φ_k sin(k·r)] / (2π)³, so
            # E = −∇V = Σ_k 2 k [Re φ_k sin(k·r) + Im φ_k cos(k·r)] / (2π)³ (k = 0 carries no gradient)
            density = features.assemble_fourier_series_batch(
                source_feats=source, cosines=cache["cosines"], sines=cache["sines"],
                density_basis_fs=cache["density_basis_fs"], volume_per_k=cache["volume_per_k"],
            )
            phi = features.apply_coulomb_kernel_batch(density=density, k_factor_coulomb=cache["k_factor_coulomb"])
            weight = 2.0 * (phi[:, :1] * cache["sines"] + phi[:, 1:] * cache["cosines"])  # [n_k, n_atoms]
            efield += weight.T @ k_vectors[piece] / (2.0 * math.pi) ** 3
        del cache
    if with_fields:
        # −∇ of graph-longrange's slab term (FIELD_CONSTANT M_z / V) z, for slab configs
        slab = pbc[:, 0] & pbc[:, 1] & ~pbc[:, 2]
        if slab.any():
            ptr = np.concatenate([[0], np.cumsum(counts)])
            m_z = np.add.reduceat(mp[:, 0] * pos[:, 2] + (mp[:, 2] if mp.shape[1] > 1 else 0.0), ptr[:-1])
            e_z = gl_utils.FIELD_CONSTANT * m_z / volume.numpy() * slab
            efield[:, 2] -= torch.as_tensor(np.repeat(e_z, counts))
    return esps.numpy(), (None if efield is None else efield.numpy())
