"""Molecule assignment from covalent connectivity (or a user key), made whole across periodic boundaries.

Bonds: atoms i, j are bonded when ``d_ij <= covalent_scale * (r_i + r_j)`` with ``r = ase.data.covalent_radii``
(Cordero et al. 2008), unless ``pair_overrides`` gives the element pair its own cutoff distance in Å
(a distance, not a scale): ``{("O", "H"): 1.3}`` or ``{"O-H": 1.3}`` (order within a pair does not matter).
Periodic configs (one at a time): atoms wrapped, the cell padded with the periodic images within the
cutoff of a face, one cKDTree (linear in N; image shifts in ase's neighbor_list convention, and the tests
use ase's neighbor_list as the reference; it is not used here because it needs ~13 kB per atom). Small
open-boundary configs (at most SMALL_CONFIG_ATOMS atoms, the bulk of cluster data sets) are searched over
all their atom pairs in numpy, the configs of one atom count stacked (at most MAX_PAIRS pairs at a time);
the larger open-boundary configs together in one cKDTree (each config moved far from the others, so no
pair crosses configs). Molecules are the connected components of the bond graph: label propagation
(:func:`components`, all small open configs at once) and one ``scipy.sparse.csgraph.connected_components``
over the bonds of the other configs (scipy is imported only when such configs exist), numbered within their
config in order of first atom appearance (deterministic and permutation equivariant).

Made whole: every atom gets an integer image shift ``n_i`` so that each bond ``(i, j, S)`` (ase's
convention ``D = r_j - r_i + S @ cell``) satisfies ``n_j - n_i = S``; the shifts are accumulated along a
breadth-first spanning tree (one csgraph call for all configs, then pointer jumping, log(depth) vectorised
steps). The first atom of each molecule keeps its input position. A bond that cannot be satisfied means
the component bonds to its own periodic image (crystal, metal, polymer through the cell): the config is
flagged ``extended`` and the component is kept whole (never split into fake molecules); its unwrapped
positions are then meaningless and molecular targets must be masked.

Not supported: elements without a tabulated covalent radius (X, Z = 0, and Bk onwards; ase stores a
placeholder there) raise ValueError; fractional bond orders, charges or hydrogen bonds are not used;
a covalent_scale so large that the neighbour list holds billions of pairs is not guarded against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols, covalent_radii, missing

# scipy (sparse graphs, cKDTree) is imported where needed: large and periodic configs only

DEFAULT_COVALENT_SCALE = 1.2
REASON_EXTENDED = "extended network (component bonds to its own periodic image)"
REASON_SINGLE = "single molecule"
REASON_EMPTY = "no atoms"
#: Open-boundary configs with at most this many atoms: bonds from all atom pairs (numpy, configs of one atom
#: count stacked), molecules by label propagation; larger or periodic configs: cKDTree and scipy's csgraph.
SMALL_CONFIG_ATOMS = 64
#: Atom pairs of small configs held at once (~100 bytes each: distances, cutoffs, indices).
MAX_PAIRS = 1 << 19

# Elements whose covalent radius ase does not know: the dummy X (Z = 0, placeholder 0.2 Å) and the
# entries set to ase.data.missing (Bk onwards; Pa's real radius happens to equal that value too).
_UNKNOWN_RADIUS = np.zeros(len(covalent_radii), dtype=bool)
_UNKNOWN_RADIUS[0] = True
_UNKNOWN_RADIUS[97:] = covalent_radii[97:] == missing


@dataclass
class MoleculeAssignment:
    """Molecules of many configs (atoms and molecules concatenated over configs, in config order).

    molecule : (n_atoms,) int64, molecule index within its config (0 .. n_molecules[c] - 1).
    n_molecules : (n_configs,) int64.
    unwrapped_positions : (n_atoms, 3) Å, every molecule whole (contiguous through its bonds).
    extended : (n_configs,) bool, a component bonds to its own periodic image.
    formula : (n_molecules_total,) str, Hill formula of each molecule ("" when element numbers are unknown).
    reason : list of n_configs str, "" when molecular targets make sense, else why not.
    """

    molecule: np.ndarray
    n_molecules: np.ndarray
    unwrapped_positions: np.ndarray
    extended: np.ndarray
    formula: np.ndarray
    reason: list

    @property
    def molecule_ptr(self) -> np.ndarray:
        """(n_configs + 1,) offsets of each config's molecules in the concatenated molecule arrays."""
        return np.r_[0, np.cumsum(self.n_molecules)].astype(np.int64)


# --------------------------------------------------------------------------------------- validation


def _as_ptr(ptr, n_atoms: int) -> np.ndarray:
    p = np.asarray(ptr)
    if p.ndim != 1 or len(p) < 1 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"ptr must be a 1-D integer array (n_configs + 1,), got shape {p.shape} dtype {p.dtype}")
    p = p.astype(np.int64)
    if p[0] != 0 or p[-1] != n_atoms or np.any(np.diff(p) < 0):
        raise ValueError(f"ptr must be non-decreasing from 0 to n_atoms={n_atoms}; got ptr[0]={p[0]}, "
                         f"ptr[-1]={p[-1]}, min step {np.diff(p).min() if len(p) > 1 else 0}")
    return p


def _as_cells_pbc(cells, pbc, n_cfg: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.zeros((n_cfg, 3, 3)) if cells is None else np.asarray(cells, dtype=float)
    if c.shape == (3, 3):
        c = np.broadcast_to(c, (n_cfg, 3, 3))
    if c.shape != (n_cfg, 3, 3):
        raise ValueError(f"cells must have shape (n_configs, 3, 3) = ({n_cfg}, 3, 3), got {c.shape}")
    p = np.zeros((n_cfg, 3), dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool)
    if p.shape in ((), (3,)):
        p = np.broadcast_to(p, (n_cfg, 3))
    if p.shape != (n_cfg, 3):
        raise ValueError(f"pbc must have shape (n_configs, 3) = ({n_cfg}, 3), got {p.shape}")
    return c, p


def _check_numbers(numbers: np.ndarray, atom_config: np.ndarray) -> None:
    bad_range = (numbers < 0) | (numbers >= len(covalent_radii))
    if bad_range.any():
        k = int(np.argmax(bad_range))
        raise ValueError(f"atomic number {numbers[k]} of atom {k} (config {atom_config[k]}) is not an element "
                         f"(expected 1..{len(covalent_radii) - 1})")
    unknown = _UNKNOWN_RADIUS[numbers]
    if unknown.any():
        k = int(np.argmax(unknown))
        z = int(numbers[k])
        raise ValueError(
            f"no covalent radius is known for element {chemical_symbols[z]} (Z={z}), atom {k} of config "
            f"{atom_config[k]}: connectivity cannot assign its molecule. Replace or remove those atoms, or give "
            f"the molecules explicitly (reference.molecules.source: key with a per-atom molecule id)")


def _cutoff_table(covalent_scale: float, pair_overrides) -> np.ndarray:
    """(n_elements, n_elements) bond cutoff in Å: scale * (r_i + r_j), overridden per element pair."""
    scale = float(covalent_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"covalent_scale must be a positive number, got {covalent_scale!r}")
    table = scale * (covalent_radii[:, None] + covalent_radii[None, :])
    for key, value in (pair_overrides or {}).items():
        if isinstance(key, str):
            parts = key.split("-")
        else:
            parts = list(key)
        if len(parts) != 2:
            raise ValueError(f"pair_overrides keys must be element pairs like ('O', 'H') or 'O-H', got {key!r}")
        zs = []
        for p in parts:
            if isinstance(p, (int, np.integer)) and 0 < p < len(chemical_symbols):
                zs.append(int(p))
            elif isinstance(p, str) and p.strip() in chemical_symbols[1:]:
                zs.append(chemical_symbols.index(p.strip()))
            else:
                raise ValueError(f"pair_overrides key {key!r}: {p!r} is not an element symbol or atomic number")
        cut = float(value)
        if not np.isfinite(cut) or cut < 0:
            raise ValueError(f"pair_overrides[{key!r}] must be a cutoff distance >= 0 in Å, got {value!r}")
        table[zs[0], zs[1]] = table[zs[1], zs[0]] = cut
    return table


# --------------------------------------------------------------------------------------- bonds


def _small_open_bonds(numbers, positions, ptr, configs, table):
    """Bonds of small open-boundary ``configs`` from all their atom pairs: (i, j) global, i < j.

    The configs of one atom count n are stacked (G, n, 3) and all n (n - 1) / 2 pairs of each are checked at
    once, in chunks of configs holding at most about MAX_PAIRS pairs. Same criterion and same distances
    (difference of the stored positions, then its norm) as :func:`_open_bonds`.
    """
    counts = np.diff(ptr)[configs]
    parts_i, parts_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for n in np.unique(counts):
        if n < 2:
            continue
        group = configs[counts == n]
        a, b = np.triu_indices(n, 1)
        step = max(1, MAX_PAIRS // len(a))
        for s in range(0, len(group), step):
            atoms = ptr[group[s:s + step], None] + np.arange(n)  # (G, n) global atom indices
            pos, z = positions[atoms], numbers[atoms]
            d = np.linalg.norm(pos[:, b] - pos[:, a], axis=-1)
            g, p = np.nonzero(d <= table[z[:, a], z[:, b]])
            parts_i.append(atoms[g, a[p]])
            parts_j.append(atoms[g, b[p]])
    return np.concatenate(parts_i), np.concatenate(parts_j)


def _open_bonds(numbers, positions, ptr, configs, table):
    """Bonds of all open-boundary ``configs`` in one cKDTree: (i, j) global, i < j."""
    counts = np.diff(ptr)[configs]
    idx = np.concatenate([np.arange(ptr[c], ptr[c + 1]) for c in configs]) if len(configs) else np.zeros(0, int)
    if len(idx) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    from scipy.spatial import cKDTree

    z = numbers[idx]
    species = np.unique(z)
    r_max = float(table[np.ix_(species, species)].max())
    pos = positions[idx]
    # move config k along x so that its atoms start at offset[k]: configs separated by > r_max
    local_cfg = np.repeat(np.arange(len(configs)), counts)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    nonempty = counts > 0
    xmin = np.zeros(len(configs))
    xmax = np.zeros(len(configs))
    xmin[nonempty] = np.minimum.reduceat(pos[:, 0], starts[nonempty])
    xmax[nonempty] = np.maximum.reduceat(pos[:, 0], starts[nonempty])
    width = xmax - xmin + 2.0 * r_max + 1.0
    offset = np.r_[0.0, np.cumsum(width)[:-1]] - xmin
    moved = pos.copy()
    moved[:, 0] += offset[local_cfg]
    pairs = cKDTree(moved).query_pairs(r_max, output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    d = np.linalg.norm(pos[b] - pos[a], axis=1)  # distances from the original coordinates
    keep = (d <= table[z[a], z[b]]) & (local_cfg[a] == local_cfg[b])
    i, j = idx[a[keep]], idx[b[keep]]
    return np.minimum(i, j), np.maximum(i, j)


def _periodic_frame(cell, pbc, c_index):
    """The periodic lattice vectors, completed by an orthonormal complement in the open directions."""
    cell = np.asarray(cell, dtype=float)
    per = np.asarray(pbc, dtype=bool)
    P = cell[per]
    sv = np.linalg.svd(P, compute_uv=False)
    if sv.min() <= 1e-8 * max(1.0, sv.max()):
        raise ValueError(f"config {c_index}: the lattice vectors of the periodic directions {per.tolist()} must "
                         f"be non-zero and independent, got cell {cell.tolist()}")
    full = cell.copy()
    if not per.all():
        _, _, vt = np.linalg.svd(P)
        full[~per] = vt[per.sum():]
    return full


#: Caps of the periodic pair search, so that no cell (however small or dense) can hang a job or take GBs:
#: the number of periodic image cells searched and the number of image atoms (ghosts) kept.
MAX_IMAGE_CELLS = 32768
MAX_GHOSTS = 4_000_000


def periodic_heights(cell, pbc) -> np.ndarray:
    """(3,) distance between neighbouring lattice planes along each periodic direction (inf for open ones).

    For a partly periodic cell the open directions are replaced by unit vectors normal to the periodic ones
    (a slab's heights are those of its 2D lattice). Zero for a singular periodic lattice.
    """
    per = np.asarray(pbc, dtype=bool)
    if not per.any():
        return np.full(3, np.inf)
    try:
        full = _periodic_frame(cell, per, 0)
    except ValueError:
        return np.where(per, 0.0, np.inf)
    volume = abs(np.linalg.det(full))
    areas = np.array([np.linalg.norm(np.cross(full[(k + 1) % 3], full[(k + 2) % 3])) for k in range(3)])
    return np.where(per, volume / areas, np.inf)


def periodic_pairs(positions, cell, pbc, r_max: float, c_index=0):
    """Every pair within ``r_max`` of one (partly) periodic config: (i, j, S, d), each pair once.

    Convention of ``ase.neighborlist.neighbor_list``: ``D = r_j - r_i + S @ cell`` with the positions as
    given; an atom and its own periodic images count (i == j, S != 0). Atoms are wrapped into the cell, the
    cell is padded with the periodic images (ghosts) that lie within ``r_max`` of a face, and one cKDTree
    over atoms + ghosts is queried from the atoms only (no ghost-ghost pairs): linear in N. A cell so small
    or a cutoff so large that more than MAX_IMAGE_CELLS image cells or MAX_GHOSTS ghosts would be searched
    raises ValueError naming the config and its heights.
    """
    from scipy.spatial import cKDTree

    positions = np.asarray(positions, dtype=float)
    n = len(positions)
    per = np.asarray(pbc, dtype=bool)
    full = _periodic_frame(cell, per, c_index)
    frac = positions @ np.linalg.inv(full)
    shift0 = np.where(per, np.floor(frac), 0.0)
    frac = frac - shift0
    # thickness of the padding, in fractional units, for each periodic direction
    heights = periodic_heights(full, per)
    pad = np.where(per, r_max / np.where(per, heights, 1.0), 0.0)
    reach = np.ceil(pad).astype(np.int64)
    n_cells = int(np.prod(2 * reach + 1))
    n_ghosts = n * float(np.prod(np.where(per, 1.0 + 2.0 * pad, 1.0)))
    if n_cells > MAX_IMAGE_CELLS or n_ghosts > MAX_GHOSTS:
        raise ValueError(
            f"config {c_index}: periodic cell too small for a pair search within {r_max:.3g} Å: lattice-plane "
            f"heights {np.round(heights[per], 4).tolist()} Å need {n_cells} image cells and ~{n_ghosts:.3g} image "
            f"atoms (limits {MAX_IMAGE_CELLS} and {MAX_GHOSTS}); reject such cells at ingest (min_cell_height) "
            "or check the cell's units")
    ranges = [np.arange(-reach[k], reach[k] + 1) for k in range(3)]
    images = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3)
    images = images[np.any(images != 0, axis=1)]
    atom_idx, img = [np.arange(n)], [np.zeros((n, 3), dtype=np.int64)]
    step = max(1, (1 << 20) // max(n, 1))  # images per chunk: ~1M atom-image candidates at a time
    for k in range(0, len(images), step):
        s = images[k:k + step]
        g = frac[None, :, :] + s[:, None, :]
        im, at = np.nonzero(np.all((g >= -pad) & (g < 1.0 + pad) | ~per, axis=2))
        atom_idx.append(at)
        img.append(s[im])
    atom_idx = np.concatenate(atom_idx)
    img = np.concatenate(img).astype(np.int64)
    pts = (frac[atom_idx] + img) @ full
    found = cKDTree(pts[:n]).sparse_distance_matrix(cKDTree(pts), r_max, output_type="ndarray")
    a, b = found["i"].astype(np.int64), found["j"].astype(np.int64)
    keep = a < b
    a, b = a[keep], b[keep]
    i, j = atom_idx[a], atom_idx[b]
    # image of j relative to i, in the frame of the wrapped positions, then of the positions as given
    S = img[b] - img[a] + (shift0[i] - shift0[j]).astype(np.int64)
    d = np.linalg.norm(pts[b] - pts[a], axis=1)
    return i, j, S, d


def _periodic_bonds(numbers, positions, cell, pbc, table, c_index=0):
    """Bonds of one (partly) periodic config: i, j local, S (E, 3) int image shifts, each bond once
    (pairs from :func:`periodic_pairs` within the largest cutoff of the species present)."""
    z = numbers
    species = np.unique(z)
    r_max = float(table[np.ix_(species, species)].max())
    i, j, S, d = periodic_pairs(positions, cell, pbc, r_max, c_index)
    ok = d <= table[z[i], z[j]]
    i, j, S = i[ok], j[ok], S[ok]
    # one row per bond: i < j (flip i > j), self-image bonds i == j with S and -S both kept
    flip = i > j
    i, j = np.where(flip, j, i), np.where(flip, i, j)
    S = np.where(flip[:, None], -S, S)
    rows = np.unique(np.column_stack([i, j, S]), axis=0)
    if len(rows) and (rows[:, 0] == rows[:, 1]).any():
        self_rows = rows[rows[:, 0] == rows[:, 1]]
        mirrored = np.column_stack([self_rows[:, :2], -self_rows[:, 2:]])
        rows = np.unique(np.concatenate([rows, mirrored]), axis=0)
    return rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2:].astype(np.int64)


# --------------------------------------------------------------------------------------- graph helpers


def components(n_atoms: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the graph with edges (i, j) on atoms 0 .. n_atoms - 1, by label propagation.

    Returns (n_atoms,) int64: the smallest atom index of each atom's component (an atom without edges is its
    own). Every round takes for each atom the smallest label among itself and its neighbours, then the
    label of that label (pointer jumping: also an atom of the component), until nothing changes; all
    graphs (configs) at once, O(edges) per round, about log2 of the longest path rounds.
    """
    label = np.arange(n_atoms, dtype=np.int64)
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    if len(i) == 0:
        return label
    while True:
        new = label.copy()
        np.minimum.at(new, i, label[j])
        np.minimum.at(new, j, label[i])
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def _component_labels(n_atoms: int, i: np.ndarray, j: np.ndarray, small_atom: np.ndarray) -> np.ndarray:
    """Component label per atom (arbitrary values, distinct per component) from the bonds (i, j) (self-image
    bonds ignored): :func:`components` for the atoms of small open configs (``small_atom``), scipy's
    connected_components over the bonds of the others (imported only when they have bonds)."""
    nonself = i != j
    i, j = i[nonself], j[nonself]
    fast = small_atom[i]  # a bond never joins two configs
    label = components(n_atoms, i[fast], j[fast])
    if not fast.all():
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        slow = ~fast
        g = coo_matrix((np.ones(int(slow.sum()), dtype=np.int8), (i[slow], j[slow])), shape=(n_atoms, n_atoms))
        _, other = connected_components(g, directed=False)
        label = np.where(small_atom, label, n_atoms + other.astype(np.int64))
    return label


def _first_appearance_labels(labels: np.ndarray, atom_config: np.ndarray, n_cfg: int):
    """Relabel arbitrary global group labels to within-config indices in order of first atom appearance.

    Returns (molecule (n_atoms,), n_molecules (n_cfg,), global molecule index (n_atoms,), first atom of each
    global molecule). Groups must not span configs.
    """
    n = len(labels)
    _, inv = np.unique(labels, return_inverse=True)
    first = np.full(inv.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, inv, np.arange(n))
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    glob = rank[inv]
    first_sorted = first[order]
    n_mol = np.bincount(atom_config[first_sorted], minlength=n_cfg).astype(np.int64)
    mol_ptr = np.r_[0, np.cumsum(n_mol)]
    molecule = glob - mol_ptr[atom_config]
    return molecule.astype(np.int64), n_mol, glob.astype(np.int64), first_sorted


def _image_shifts(n_atoms: int, i: np.ndarray, j: np.ndarray, S: np.ndarray, roots: np.ndarray) -> np.ndarray:
    """Integer image shift per atom so that n_j - n_i = S along a BFS spanning tree rooted at ``roots``.

    One breadth-first search from a virtual super-root joined to every root (one csgraph call for all
    components), then the shifts are summed along the tree by pointer jumping (log2(depth) steps).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order

    shifts = np.zeros((n_atoms, 3), dtype=np.int64)
    nonself = i != j
    i, j, S = i[nonself], j[nonself], S[nonself]
    if len(i) == 0:
        return shifts
    # directed edges both ways, one per (src, dst) pair
    src = np.r_[i, j]
    dst = np.r_[j, i]
    sh = np.r_[S, -S]
    key = src * n_atoms + dst
    key, first = np.unique(key, return_index=True)
    sh = sh[first]
    sup = n_atoms
    rows = np.r_[src, np.full(len(roots), sup)]
    cols = np.r_[dst, roots]
    g = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_atoms + 1, n_atoms + 1)).tocsr()
    _, pred = breadth_first_order(g, sup, directed=False, return_predecessors=True)
    pred = pred[:n_atoms].astype(np.int64)
    is_root = (pred == sup) | (pred < 0)
    parent = np.where(is_root, np.arange(n_atoms), pred)
    tree = ~is_root
    k = np.searchsorted(key, parent[tree] * n_atoms + np.arange(n_atoms)[tree])
    shifts[tree] = sh[k]
    # pointer jumping: shifts[a] becomes the sum of edge shifts from its root down to a
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            break
        shifts += shifts[parent] * (parent != np.arange(n_atoms))[:, None]
        parent = grand
    return shifts


def _hill_formulas(numbers: np.ndarray, glob: np.ndarray, n_mol_total: int) -> np.ndarray:
    """Hill formula of each molecule (C, H first when C is present, else alphabetical), one per composition."""
    if n_mol_total == 0:
        return np.zeros(0, dtype=str)
    species, zi = np.unique(numbers, return_inverse=True)
    counts = np.bincount(glob * len(species) + zi, minlength=n_mol_total * len(species))
    counts = counts.reshape(n_mol_total, len(species)).astype(np.int64)
    radix = int(counts.max()) + 1
    if radix ** len(species) < 2**62:  # one integer per composition: a 1-d unique (fast) instead of rows
        code = counts @ (radix ** np.arange(len(species), dtype=np.int64))
        _, first, inv = np.unique(code, return_index=True, return_inverse=True)
        comps = counts[first]
    else:
        comps, inv = np.unique(counts, axis=0, return_inverse=True)
    syms = [chemical_symbols[z] for z in species]
    texts = []
    for row in comps:
        present = {syms[k]: int(row[k]) for k in np.nonzero(row)[0]}
        if "C" in present:
            order = ["C"] + (["H"] if "H" in present else []) + sorted(s for s in present if s not in ("C", "H"))
        else:
            order = sorted(present)
        texts.append("".join(s + (str(present[s]) if present[s] > 1 else "") for s in order))
    return np.asarray(texts, dtype=str)[np.ravel(inv)]


# --------------------------------------------------------------------------------------- core


def _small_open_configs(ptr, pbc) -> np.ndarray:
    """(n_configs,) bool: open boundary and at most SMALL_CONFIG_ATOMS atoms."""
    return ~pbc.any(axis=1) & (np.diff(ptr) <= SMALL_CONFIG_ATOMS)


def _bond_list(numbers, positions, ptr, cells, pbc, table):
    """All bonds of all configs: (i, j, S) global atom indices, image shifts (zero for open configs)."""
    periodic = pbc.any(axis=1)
    small = _small_open_configs(ptr, pbc)
    i_small, j_small = _small_open_bonds(numbers, positions, ptr, np.nonzero(small)[0], table)
    i_open, j_open = _open_bonds(numbers, positions, ptr, np.nonzero(~periodic & ~small)[0], table)
    i_open, j_open = np.r_[i_small, i_open], np.r_[j_small, j_open]
    parts_i, parts_j, parts_s = [i_open], [j_open], [np.zeros((len(i_open), 3), np.int64)]
    for c in np.nonzero(periodic)[0]:
        a, b = ptr[c], ptr[c + 1]
        if b - a == 0:
            continue
        i, j, S = _periodic_bonds(numbers[a:b], positions[a:b], cells[c], pbc[c], table, c)
        parts_i.append(i + a)
        parts_j.append(j + a)
        parts_s.append(S)
    return np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_s)


def _unwrap(positions, cells, atom_config, n_atoms, i, j, S, roots, periodic_atoms):
    """Image shifts along the bond tree; returns (unwrapped positions, bond consistent (E,) bool)."""
    if not periodic_atoms.any():
        return positions.copy(), np.ones(len(i), dtype=bool)
    shifts = _image_shifts(n_atoms, i, j, S, roots)
    consistent = np.all(shifts[j] - shifts[i] == S, axis=1)
    unwrapped = positions + np.einsum("ak,akl->al", shifts.astype(float), cells[atom_config])
    return unwrapped, consistent


def assign_molecules_batch(numbers, positions, ptr, cells, pbc, *, covalent_scale: float = DEFAULT_COVALENT_SCALE,
                           pair_overrides=None) -> MoleculeAssignment:
    """Molecules of many configs from covalent connectivity, made whole across periodic boundaries.

    Parameters
    ----------
    numbers : (n_atoms,) int atomic numbers, all configs concatenated.
    positions : (n_atoms, 3) Å (wrapped or not).
    ptr : (n_configs + 1,) atom pointer.
    cells : (n_configs, 3, 3) Å, rows are lattice vectors (ignored for open configs; None = all open).
    pbc : (n_configs, 3) bool (or (3,), broadcast).
    covalent_scale : bond when d <= covalent_scale * (r_i + r_j).
    pair_overrides : {(sym_a, sym_b): cutoff_Å} or {"A-B": cutoff_Å}, replacing the scaled sum for that pair.

    A config whose molecules all merge into one is reported in ``reason`` (not an error); when
    covalent_scale is above the default the reason also says how many molecules the default scale gives.
    """
    z = np.asarray(numbers)
    if z.ndim != 1 or not np.issubdtype(z.dtype, np.integer):
        raise ValueError(f"numbers must be a 1-D integer array (n_atoms,), got shape {z.shape} dtype {z.dtype}")
    z = z.astype(np.int64)
    n = len(z)
    pos = np.asarray(positions, dtype=float)
    if pos.shape != (n, 3) or not np.isfinite(pos).all():
        raise ValueError(f"positions must be finite with shape (n_atoms, 3) = ({n}, 3), got {pos.shape}"
                         + ("" if pos.shape != (n, 3) else " with non-finite values"))
    p = _as_ptr(ptr, n)
    n_cfg = len(p) - 1
    cell, pb = _as_cells_pbc(cells, pbc, n_cfg)
    counts = np.diff(p)
    atom_config = np.repeat(np.arange(n_cfg), counts)
    _check_numbers(z, atom_config)
    table = _cutoff_table(covalent_scale, pair_overrides)

    i, j, S = _bond_list(z, pos, p, cell, pb, table)
    small_atom = _small_open_configs(p, pb)[atom_config]
    labels = _component_labels(n, i, j, small_atom)
    molecule, n_mol, glob, first = _first_appearance_labels(labels, atom_config, n_cfg)

    periodic_atoms = pb.any(axis=1)[atom_config]
    unwrapped, consistent = _unwrap(pos, cell, atom_config, n, i, j, S, first, periodic_atoms)
    extended = np.zeros(n_cfg, dtype=bool)
    extended[atom_config[i[~consistent]]] = True

    formula = _hill_formulas(z, glob, int(n_mol.sum()))
    reason = _reasons(n_mol, extended, counts, covalent_scale, pair_overrides, z, i, j, pos, S, cell,
                      atom_config, small_atom)
    return MoleculeAssignment(molecule, n_mol, unwrapped, extended, formula, reason)


def _reasons(n_mol, extended, counts, covalent_scale, pair_overrides, z, i, j, pos, S, cell, atom_config,
             small_atom):
    """Per-config reason, with the molecule count at the default scale when the scale was raised."""
    reason = [""] * len(n_mol)
    joined = (n_mol <= 1) | extended
    n_default = None
    if joined.any() and (float(covalent_scale) > DEFAULT_COVALENT_SCALE or pair_overrides):
        D = pos[j] - pos[i] + np.einsum("ek,ekl->el", S.astype(float), cell[atom_config[i]])
        d = np.linalg.norm(D, axis=1)
        default = (d <= _cutoff_table(DEFAULT_COVALENT_SCALE, None)[z[i], z[j]]) & (i != j)
        lab = _component_labels(len(z), i[default], j[default], small_atom)
        _, _, _, first = _first_appearance_labels(lab, atom_config, len(n_mol))
        n_default = np.bincount(atom_config[first], minlength=len(n_mol))
    for c in np.nonzero(joined)[0]:
        if counts[c] == 0:
            reason[c] = REASON_EMPTY
            continue
        merged = n_default is not None and n_default[c] > n_mol[c]
        how = (f" by covalent_scale={covalent_scale:g}" + (" and pair_overrides" if pair_overrides else "")
               + f" ({n_default[c]} molecules at the default {DEFAULT_COVALENT_SCALE:g})") if merged else ""
        if extended[c]:
            reason[c] = REASON_EXTENDED + (f", joined{how}" if merged else "")
        elif merged:
            reason[c] = f"whole system joined into one molecule{how}"
        else:
            reason[c] = REASON_SINGLE
    return reason


def assign_molecules(numbers, positions, cell=None, pbc=None, *, covalent_scale: float = DEFAULT_COVALENT_SCALE,
                     pair_overrides=None) -> MoleculeAssignment:
    """Molecules of ONE config (see :func:`assign_molecules_batch`); cell (3, 3) or None, pbc (3,) or bool."""
    z = np.asarray(numbers)
    cells = None if cell is None else np.asarray(cell, dtype=float).reshape(1, 3, 3)
    pb = None if pbc is None else np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))[None, :]
    return assign_molecules_batch(z, positions, np.array([0, len(z)]), cells, pb, covalent_scale=covalent_scale,
                                  pair_overrides=pair_overrides)


# --------------------------------------------------------------------------------------- source: key


def _validate_key(mol_ids, ptr) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(mol_ids)
    if ids.ndim == 2 and ids.shape[1] == 1:
        ids = ids[:, 0]
    p = np.asarray(ptr).astype(np.int64)
    n_expected = int(p[-1]) if len(p) else 0
    if ids.ndim != 1 or len(ids) != n_expected:
        counts = np.diff(p)
        found = len(ids) if ids.ndim >= 1 else 0
        # name the first config whose slice runs past the ids given
        short = np.nonzero(p[1:] > found)[0]
        where = f" (config {int(short[0])} expects atoms {p[short[0]]}..{p[short[0] + 1] - 1})" if len(short) else ""
        raise ValueError(f"molecule key: expected one id per atom, {n_expected} in all over {len(counts)} configs, "
                         f"found an array of shape {ids.shape}{where}. Check the arrays_keys mapping of 'molecule'")
    p = _as_ptr(p, len(ids))
    atom_config = np.repeat(np.arange(len(p) - 1), np.diff(p))
    if ids.dtype == bool or not (np.issubdtype(ids.dtype, np.integer) or np.issubdtype(ids.dtype, np.floating)):
        raise ValueError(f"molecule key: expected integer molecule ids, found dtype {ids.dtype}")
    if np.issubdtype(ids.dtype, np.floating):
        bad = ~np.isfinite(ids) | (ids != np.round(ids))
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(f"molecule key: expected integer molecule ids, found {ids[k].item()!r} at atom "
                             f"{k - p[atom_config[k]]} of config {atom_config[k]}")
    neg = ids < 0
    if neg.any():
        k = int(np.argmax(neg))
        raise ValueError(f"molecule key: expected non-negative molecule ids, found {ids[k].item()!r} at atom "
                         f"{k - p[atom_config[k]]} of config {atom_config[k]}")
    return ids.astype(np.int64), p


def molecules_from_key(mol_ids, ptr, positions=None, cells=None, pbc=None, *, numbers=None,
                       covalent_scale: float = DEFAULT_COVALENT_SCALE, pair_overrides=None) -> MoleculeAssignment:
    """Molecules given per atom by the user (MACE_SCF's ``molID``), validated and relabelled.

    ``mol_ids`` (n_atoms,) integers (integral floats accepted), non-negative, ids local to each config;
    relabelled to 0 .. n-1 per config in order of first appearance. ValueError names config, expected, found.

    With ``positions`` (and ``cells``/``pbc`` for periodic configs) each molecule is made whole: with
    ``numbers`` along its covalent bonds (bonds between different key molecules are ignored; pieces of one
    key molecule that are not bonded are placed at the minimum image of the molecule's first atom), without
    ``numbers`` every atom is placed at the minimum image of its molecule's first atom (right for molecules
    smaller than half the cell). ``extended`` can only be detected with ``numbers``; ``formula`` is "" without.
    """
    ids, p = _validate_key(mol_ids, ptr)
    n = len(ids)
    n_cfg = len(p) - 1
    atom_config = np.repeat(np.arange(n_cfg), np.diff(p))
    # group = (config, id); relabel by first appearance
    key = atom_config * (int(ids.max()) + 1 if n else 1) + ids
    molecule, n_mol, glob, first = _first_appearance_labels(key, atom_config, n_cfg)
    extended = np.zeros(n_cfg, dtype=bool)
    z = None if numbers is None else np.asarray(numbers).astype(np.int64)
    if positions is None:
        unwrapped = np.full((n, 3), np.nan)
    else:
        pos = np.asarray(positions, dtype=float)
        if pos.shape != (n, 3):
            raise ValueError(f"positions must have shape (n_atoms, 3) = ({n}, 3), got {pos.shape}")
        cell, pb = _as_cells_pbc(cells, pbc, n_cfg)
        periodic_atoms = pb.any(axis=1)[atom_config]
        unwrapped = pos.copy()
        if periodic_atoms.any():
            if z is not None:
                _check_numbers(z, atom_config)
                i, j, S = _bond_list(z, pos, p, cell, pb, _cutoff_table(covalent_scale, pair_overrides))
                same = glob[i] == glob[j]
                i, j, S = i[same], j[same], S[same]
                lab = _component_labels(n, i, j, _small_open_configs(p, pb)[atom_config])
                _, _, piece, piece_first = _first_appearance_labels(lab, atom_config, n_cfg)
                unwrapped, consistent = _unwrap(pos, cell, atom_config, n, i, j, S, piece_first, periodic_atoms)
                extended[atom_config[i[~consistent]]] = True
            else:
                piece_first = np.arange(n)
                piece = np.arange(n)
            # place every piece (its first atom) at the minimum image of its molecule's first atom
            anchor = first[glob[piece_first]]
            frac_cell = cell[atom_config[piece_first]]
            delta = unwrapped[piece_first] - unwrapped[anchor]
            inv = np.linalg.pinv(frac_cell)
            frac = np.einsum("pk,pkl->pl", delta, inv)
            frac = np.where(pb[atom_config[piece_first]], np.round(frac), 0.0)
            move = -np.einsum("pk,pkl->pl", frac, frac_cell)
            unwrapped = unwrapped + move[piece]
    formula = (np.full(int(n_mol.sum()), "", dtype=str) if z is None
               else _hill_formulas(z, glob, int(n_mol.sum())))
    counts = np.diff(p)
    reason = [REASON_EMPTY if counts[c] == 0 else REASON_EXTENDED if extended[c]
              else REASON_SINGLE if n_mol[c] == 1 else "" for c in range(n_cfg)]
    return MoleculeAssignment(molecule, n_mol, unwrapped, extended, formula, reason)
