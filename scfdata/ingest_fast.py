"""Validation and columns of many C-parsed frames at once (the fast path of :mod:`scfdata.ingest`).

:class:`FastBlock` collects frames in ASE's conventions (:func:`scfdata.extxyz_reader.to_ase_conventions`),
checks them with whole-block numpy operations, and builds the same columns as the per-frame path
(:func:`scfdata.ingest.extract_frame` + ``_BlockBuilder``) does, value for value. Its checks only decide
pass or fail: a frame that fails any of them is handed back, and the per-frame path (ASE parse +
``extract_frame``) gives it the exact reason it gets today. Periodic frames and clusters above 256 atoms
get the per-frame geometry check (periodic pair searches), everything else is vectorised.
"""

from __future__ import annotations

import re

import numpy as np
from ase.data import chemical_symbols

from . import fields
from .columns import Columns, ptr_from_counts
from .extxyz_reader import has_big_int
from .validate import FrameError, check_geometry, check_total_charge

_Z = {s: z for z, s in enumerate(chemical_symbols)}
#: A config_type that ASE's reader keeps as this very text (not a number, a boolean or JSON).
_PLAIN_TEXT = re.compile(r"[A-Za-z_][A-Za-z0-9_.+\-]*")  # e.g. MACE_SCF's charged clusters: carved_H11O5+
_NOT_TEXT = {"inf", "infinity", "nan", "true", "false"}
#: Names a mapping may not point at for the fast path (ASE builds them from the columns).
_BUILT = {"positions", "numbers", "symbols"}


def _segment_any(bad: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per segment (lengths ``counts``): whether any entry of ``bad`` (first axis) is True."""
    bad = bad.reshape(len(bad), -1).any(axis=1)
    if len(bad) == 0:
        return np.zeros(len(counts), dtype=bool)
    return np.add.reduceat(bad, ptr_from_counts(counts)[:-1].clip(max=len(bad) - 1)) * (counts > 0) > 0


def _atomic_numbers(symbols: np.ndarray) -> np.ndarray:
    """Atomic numbers of symbols as ASE reads them (capitalised), -1 for a symbol that is no element. Symbols
    of up to 3 characters are told apart by their code points packed into one integer (a fast unique)."""
    if symbols.dtype.kind != "U" or not len(symbols):
        return np.full(len(symbols), -1, dtype=np.int64)
    codes = np.ascontiguousarray(symbols).view(np.uint32).reshape(len(symbols), -1).astype(np.int64)
    if codes.shape[1] <= 3 or not codes[:, 3:].any():
        key = codes[:, 0] | (codes[:, 1] << 21 if codes.shape[1] > 1 else 0) | (
            codes[:, 2] << 42 if codes.shape[1] > 2 else 0)
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        uniq = symbols[first]
    else:
        uniq, inv = np.unique(symbols, return_inverse=True)
    z = np.array([_Z.get(str(s).capitalize(), -1) for s in uniq], dtype=np.int64)
    return z[inv.reshape(-1)]


def _pair_min(positions: np.ndarray, n: int) -> np.ndarray:
    """Closest-pair distance of each config of ``n`` atoms (positions (m, n, 3)), bit for bit as validate's
    norm of the differences: squares summed x, y, z in that order, the square root of the smallest."""
    i, j = np.triu_indices(n, 1)
    s = np.zeros((len(positions), len(i)))
    for c in range(3):
        x = np.ascontiguousarray(positions[:, :, c])
        d = x[:, i] - x[:, j]
        s += d * d
    return np.sqrt(s.min(axis=1))


class FastBlock:
    """Frames of one block from the C parser, checked and turned into columns together."""

    def __init__(self, mapping, names: list[str], opts):
        self.opts = opts
        self.names = names
        self.keys = []
        for name, key, _ in mapping.items():
            f = fields.FIELDS.get(name)
            shape = (3,) if f is None else f.shape
            size = 1 if shape == () or shape == (None,) else int(np.prod(shape))
            self.keys.append((name, key, "atom" if f is None else f.level, shape, size))
        self.weight_keys = {name: f"config_{name}_weight" for name, _, _, _, _ in self.keys}
        self.weight_keys["atomic_multipoles"] = "config_atomic_multipoles_weight"
        self.usable = not any(key in _BUILT for _, key, _, _, _ in self.keys)
        self._keys_cache: dict = {}
        self._plain_types: set = set()  # config_type texts ASE keeps as they are
        self.clear()

    def clear(self) -> None:
        self.n, self.symbols, self.positions, self.cells, self.pbcs = [], [], [], [], []
        self.values = {name: ([], []) for name, _, _, _, _ in self.keys}  # (rows, values) per present name
        self.weights, self.config_types = [], []
        self.any_weights = False

    def __len__(self):
        return len(self.n)

    def keys_of(self, info: dict, arrays: dict) -> tuple[frozenset, bool]:
        """The keys ASE would show for a frame with these info and array keys, and whether weights are given."""
        sig = (tuple(info), tuple(arrays))
        got = self._keys_cache.get(sig)
        if got is None:
            keys = frozenset(info) | frozenset(arrays) | {"numbers", "positions"}
            weights = any(k.startswith("config_") and k.endswith("_weight") for k in info)
            got = self._keys_cache[sig] = (keys, weights)
        return got

    def add(self, frame, weights: bool = True) -> bool:
        """Take one frame (to_ase_conventions' tuple); False when it must go through the per-frame path.
        ``weights``: whether the frame's info may hold config weights (keys_of says)."""
        nat, symbols, positions, cell, pbc, info, arrays = frame[:7]
        got = []
        for name, key, level, shape, size in self.keys:
            v = info.get(key)
            if v is None:
                v = arrays.get(key)
                if v is None:
                    continue
            t = type(v)
            if level == "atom":
                if t is not np.ndarray or v.dtype.kind != "f":
                    return False
                if shape == ():
                    if v.shape == (nat, 1):
                        v = v[:, 0]
                    if v.shape != (nat,):
                        return False
                elif shape == (None,):
                    if v.ndim == 1:
                        v = v[:, None]
                    k = v.shape[1] if v.ndim == 2 else 0
                    if v.shape[0] != nat or k == 0 or int(round(k ** 0.5)) ** 2 != k:
                        return False
                elif v.shape != (nat, *shape):
                    return False
            else:
                if t is float:
                    if size != 1:
                        return False
                elif t is int:
                    if size != 1 or has_big_int(frame[7].comment):
                        return False
                elif t is not np.ndarray or v.dtype.kind not in "if" or v.ndim != 1:
                    return False
                elif v.size != size and not (shape == (3, 3) and v.size == 6):
                    return False
                elif v.dtype.kind == "i" and has_big_int(frame[7].comment):
                    return False
            got.append((name, v))
        w = {}
        if weights:
            names = [name for name, _ in got if name != "atomic_dipoles"]
            if len(names) < len(got):
                names.append("atomic_multipoles")
            for key in ["config_weight"] + [self.weight_keys[name] for name in names]:
                v = info.get(key)
                if v is None:
                    continue
                t = type(v)
                if not (t is float or t is int or (t is np.ndarray and v.dtype.kind in "if" and v.ndim == 1)):
                    return False
                if (t is int or t is np.ndarray and v.dtype.kind == "i") and has_big_int(frame[7].comment):
                    return False
                v = np.asarray(v, dtype=np.float64).reshape(-1)
                if v.size != (3 if key == "config_dipole_weight" else 1):
                    return False
                w[key] = v
        ct = info.get("config_type", "Default")
        if ct not in self._plain_types:
            if type(ct) is not str or not _PLAIN_TEXT.fullmatch(ct) or ct.lower() in _NOT_TEXT or ct in ("T", "F"):
                return False
            self._plain_types.add(ct)
        row = len(self.n)
        for name, v in got:
            rows, vals = self.values[name]
            rows.append(row)
            vals.append(v)
        self.n.append(nat)
        self.symbols.append(symbols)
        self.positions.append(positions)
        self.cells.append(cell)
        self.pbcs.append(pbc)
        self.weights.append(w)
        self.any_weights = self.any_weights or bool(w)
        self.config_types.append(ct)
        return True

    def check(self):
        """Validate the block. Returns (ok (n,) bool, notes per row, renormalisation (n,) float or None)."""
        n = self._n = np.array(self.n, dtype=np.int64)
        m = len(n)
        ok = np.ones(m, dtype=bool)
        notes: list[list[str]] = [[] for _ in range(m)]
        self.numbers = _atomic_numbers(np.concatenate(self.symbols) if m else np.zeros(0, "U1"))
        ok &= ~_segment_any(self.numbers < 0, n)
        self.pos = np.concatenate(self.positions).reshape(-1, 3) if m else np.zeros((0, 3))
        self.cell = np.array(self.cells, dtype=np.float64).reshape(-1, 3, 3)
        self.pbc = np.array(self.pbcs, dtype=bool).reshape(-1, 3)
        ok &= ~_segment_any(~np.isfinite(self.pos), n)
        ok &= np.isfinite(self.cell).all(axis=(1, 2))
        ptr = ptr_from_counts(n)
        periodic = self.pbc.any(axis=1)
        for r in np.flatnonzero(ok & (periodic | (n > 256))).tolist():
            try:
                notes[r] = check_geometry(self.pos[ptr[r]:ptr[r + 1]], self.cell[r], self.pbc[r], self.opts)
            except FrameError:
                ok[r] = False
        small = ok & ~periodic & (n >= 2) & (n <= 256)
        for size in np.unique(n[small]).tolist():
            rows = np.flatnonzero(small & (n == size))
            idx = ptr[rows][:, None] + np.arange(size)
            ok[rows[_pair_min(self.pos[idx], size) < self.opts.min_distance]] = False
        self.cols = {}
        for name, _, level, _, _ in self.keys:
            self.cols[name] = self._column(self.values[name], ok, level == "atom")
        self._convert_dipoles(ok)
        self.widths = np.full(m, -1, dtype=np.int64)
        if "atomic_multipoles" in self.cols:
            _, rows, vals, _ = self.cols["atomic_multipoles"]
            self.widths[rows] = [v.shape[1] for v in vals]
        renorm = self._check_charges(ok)
        if self.any_weights:
            for r, w in enumerate(self.weights):
                for v in w.values():
                    if not (np.isfinite(v).all() and (v >= 0).all()):
                        ok[r] = False
        return ok, notes, renorm

    def _column(self, items: tuple, ok: np.ndarray, atom_level: bool):
        """(present (m,), rows, values per row, all values concatenated or None) of one name; rows with a
        NaN or infinite value are marked not ok."""
        m = len(ok)
        rows = np.array(items[0], dtype=np.int64)
        present = np.zeros(m, dtype=bool)
        present[rows] = True
        vals = items[1]
        if not vals:
            return present, rows, vals, None
        if all(type(v) is not np.ndarray for v in vals):
            cat = np.array(vals, dtype=np.float64).reshape(-1, 1)
            ok[rows[~np.isfinite(cat[:, 0])]] = False
            return present, rows, list(cat), cat
        vals = [v if type(v) is np.ndarray else np.array([v], dtype=np.float64) for v in vals]
        try:
            cat = np.concatenate(vals).astype(np.float64, copy=False)
            lengths = (self._n[rows] if atom_level
                       else np.fromiter((len(v) for v in vals), dtype=np.int64, count=len(vals)))
        except ValueError:  # differing column counts (rejected later): check each value flat
            cat = None
            flat = np.concatenate([v.reshape(-1) for v in vals])
            lengths = np.fromiter((v.size for v in vals), dtype=np.int64, count=len(vals))
        ok[rows[_segment_any(~np.isfinite(cat if cat is not None else flat), lengths)]] = False
        return present, rows, vals, cat

    def view(self, row: int, frame) -> FrameView | None:
        """The frame of ``row`` (after check) as ASE would hold it; None when a symbol is not an element."""
        ptr = ptr_from_counts(np.array(self.n, dtype=np.int64))
        numbers = self.numbers[ptr[row]:ptr[row + 1]]
        if (numbers < 0).any():
            return None
        return FrameView(numbers.copy(), np.asarray(frame[2], dtype=np.float64), frame[3], frame[4], frame[5],
                         frame[6])

    def coverage(self, rows: np.ndarray) -> dict[str, int]:
        """How many of ``rows`` carry each stored field."""
        return {name: int(col[0][rows].sum()) for name, col in self.cols.items() if name in self.names}

    def has_charges(self, rows: np.ndarray) -> np.ndarray:
        """Rows with total_charge and charges (or multipoles): where charge_renormalisation is defined."""
        none = np.zeros(len(self.n), dtype=bool)
        q = self.cols.get("atomic_multipoles", (none,))[0] | self.cols.get("charges", (none,))[0]
        return (self.cols.get("total_charge", (none,))[0] & q)[rows]

    def _convert_dipoles(self, ok: np.ndarray) -> None:
        """charges + Cartesian atomic_dipoles -> atomic_multipoles, for rows without atomic_multipoles."""
        if "atomic_dipoles" not in self.cols:
            return
        present, rows, vals, _ = self.cols.pop("atomic_dipoles")
        from .reference.multipoles import charges_dipoles_to_multipoles

        m = len(ok)
        _, mp_rows, mp_vals, _ = self.cols.get("atomic_multipoles", (None, [], [], None))
        mp = dict(zip(np.asarray(mp_rows).tolist(), mp_vals))
        _, q_rows, q_vals, _ = self.cols.get("charges", (None, [], [], None))
        qv = dict(zip(np.asarray(q_rows).tolist(), q_vals))
        for r, v in zip(rows.tolist(), vals):
            if r in mp:
                continue
            if r not in qv:
                ok[r] = False
                continue
            mp[r] = charges_dipoles_to_multipoles(qv[r], v)
        order = sorted(mp)
        new_present = np.zeros(m, dtype=bool)
        new_present[order] = True
        self.cols["atomic_multipoles"] = (new_present, np.array(order, dtype=np.int64), [mp[r] for r in order], None)

    def _check_charges(self, ok: np.ndarray):
        """Charges against total_charge, as check_total_charge (renormalised or failed); returns the shift
        total_charge - sum q per row (0 where not shifted) when renormalise_charges is on, else None.
        Block-wise sums decide the clear cases; a row off by more than half the tolerance is checked alone
        (check_total_charge's own sum), so the outcome and the shifted values are exactly the per-frame ones."""
        if "total_charge" not in self.cols:
            return None
        tc_present, tc_rows, _, tc_cat = self.cols["total_charge"]
        total = np.zeros(len(ok))
        total[tc_rows] = (tc_cat.reshape(-1) if tc_cat is not None
                          else [float(v.reshape(-1)[0]) for v in self.cols["total_charge"][2]])
        renorm = np.zeros(len(ok)) if self.opts.renormalise_charges else None
        for name in ("atomic_multipoles", "charges"):
            if name not in self.cols:
                continue
            present, rows, vals, cat = self.cols[name]
            if not len(rows):
                continue
            if cat is not None:
                q_all = cat[:, 0] if name == "atomic_multipoles" else cat
                starts = ptr_from_counts(np.fromiter((len(v) for v in vals), dtype=np.int64, count=len(vals)))[:-1]
                sums = np.add.reduceat(q_all, starts)
            else:
                sums = np.array([(v[:, 0] if name == "atomic_multipoles" else v).sum() for v in vals])
            clear = np.abs(sums - total[rows]) <= 0.5 * self.opts.charge_tolerance
            changed = False
            for k in np.flatnonzero(tc_present[rows] & ok[rows] & ~clear).tolist():
                r = int(rows[k])
                q = vals[k][:, 0] if name == "atomic_multipoles" else vals[k]
                try:
                    q_new = check_total_charge(q, total[r], self.opts)
                except FrameError:
                    ok[r] = False
                    continue
                if q_new is not q:
                    changed = True
                    if renorm is not None and renorm[r] == 0:
                        renorm[r] = total[r] - float(q.sum())
                    if name == "atomic_multipoles":
                        vals[k] = vals[k].copy()
                        vals[k][:, 0] = q_new
                    else:
                        vals[k] = q_new
            if changed:
                self.cols[name] = (present, rows, vals, None)
        return renorm

    def build(self, rows: np.ndarray, width: int | None, sources: np.ndarray) -> Columns:
        """Columns of the accepted ``rows`` (block order), as _BlockBuilder.build makes them."""
        n = np.array(self.n, dtype=np.int64)
        keep = np.zeros(len(n), dtype=bool)
        keep[rows] = True
        ptr = ptr_from_counts(n)
        atom_keep = np.repeat(keep, n)
        cfg = {
            "pbc": self.pbc[rows],
            "cell": self.cell[rows],
            "weight": (np.array([float(self.weights[r].get("config_weight", [1.0])[0]) for r in rows.tolist()],
                                dtype=np.float64) if self.any_weights else np.ones(len(rows))),
            "config_type": np.array([self.config_types[r] for r in rows.tolist()], dtype=str),
            "source": np.asarray(sources, dtype=np.int64).reshape(-1, 2),
        }
        atoms = {"numbers": self.numbers[atom_keep], "positions": self.pos[atom_keep]}
        masks = {}
        everything = bool(keep.all())
        for name in self.names:
            fd = fields.FIELDS[name]
            shape = (width or 1,) if fd.shape == (None,) else fd.shape
            present, prow, vals, cat = self.cols.get(name, (np.zeros(len(n), bool), np.zeros(0, np.int64), [], None))
            weight = np.ones((len(n),) + fd.mask_shape)
            if name == "dipole":
                weight[prow] = (~self.pbc[prow]).astype(float)
            if self.any_weights:
                wkey = f"config_{name}_weight"
                for r in prow.tolist():
                    w = self.weights[r].get(wkey)
                    if w is not None:
                        weight[r] = w.reshape(fd.mask_shape)
            whole = cat is not None and everything and len(prow) == len(n)
            if fd.level == "atom":
                if whole and cat.size == int(ptr[-1]) * int(np.prod(shape)):
                    atoms[name] = cat.reshape((-1,) + shape)
                else:
                    out = np.zeros((int(ptr[-1]),) + shape)
                    for r, v in zip(prow.tolist(), vals):
                        if keep[r]:
                            out[ptr[r]:ptr[r + 1]] = v.reshape((-1,) + shape)
                    atoms[name] = out[atom_keep]
            elif whole and cat.size == len(n) * int(np.prod(shape)):
                cfg[name] = cat.reshape((-1,) + shape)
            else:
                out = np.zeros((len(n),) + shape)
                for r, v in zip(prow.tolist(), vals):
                    if keep[r]:
                        out[r] = _config_value(v, shape)
                cfg[name] = out[rows]
            weight = weight[rows]
            cfg[fields.weight_name(name)] = weight
            tail = (1,) * len(fd.mask_shape)
            live = (weight != 0) & (cfg["weight"] != 0).reshape((-1,) + tail)
            masks[name] = present[rows].reshape((-1,) + tail) & live
        return Columns(n_atoms=n[rows], configs=cfg, atoms=atoms, masks=masks)


class FrameView:
    """A C-parsed frame seen as the ase.Atoms that ASE's reader would build (what extract_frame reads), so
    that a frame failing a block check gets its reason without parsing it again."""

    calc = None

    def __init__(self, numbers, positions, cell, pbc, info, arrays):
        self.numbers, self.positions, self.pbc, self.info = numbers, positions, pbc, info
        self.cell = _Cell(cell)
        self.arrays = {"numbers": numbers, "positions": positions, **arrays}

    def __len__(self):
        return len(self.numbers)


class _Cell:
    def __init__(self, array):
        self.array = array


def _config_value(v: np.ndarray, shape: tuple) -> np.ndarray:
    v = v.astype(np.float64)
    if shape == (3, 3) and v.size == 6:  # Voigt, as ase.stress.voigt_6_to_full_3x3_stress
        return v[[[0, 5, 4], [5, 1, 3], [4, 3, 2]]]
    return v.reshape(shape)
