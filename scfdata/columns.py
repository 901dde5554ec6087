"""In-memory columnar block of configs: the unit that ingest, derive and the HDF5 layer exchange.

A :class:`Columns` holds one array per field and level, concatenated over its configs, exactly as in
the HDF5 file: ``configs`` (first axis n_configs), ``atoms`` (first axis n_atoms), ``molecules``
(first axis n_molecules), ``masks`` (per-config presence of each target field).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def ptr_from_counts(counts: np.ndarray) -> np.ndarray:
    """Offsets (n+1,) int64 from per-config counts."""
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def ranges_index(ptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated indices ``[ptr[r]:ptr[r+1] for r in rows]`` without a Python loop."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = ptr[rows]
    counts = ptr[rows + 1] - starts
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - ptr_from_counts(counts)[:-1], counts)
    return np.arange(total, dtype=np.int64) + offsets


@dataclass
class Columns:
    n_atoms: np.ndarray
    configs: dict[str, np.ndarray] = field(default_factory=dict)
    atoms: dict[str, np.ndarray] = field(default_factory=dict)
    molecules: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    n_molecules: np.ndarray | None = None

    def __post_init__(self):
        self.n_atoms = np.asarray(self.n_atoms, dtype=np.int64)
        if self.n_molecules is None:
            self.n_molecules = np.zeros(len(self.n_atoms), dtype=np.int64)
        self.n_molecules = np.asarray(self.n_molecules, dtype=np.int64)

    @property
    def n_configs(self) -> int:
        return len(self.n_atoms)

    @property
    def atom_ptr(self) -> np.ndarray:
        return ptr_from_counts(self.n_atoms)

    @property
    def molecule_ptr(self) -> np.ndarray:
        return ptr_from_counts(self.n_molecules)

    def level(self, level: str) -> dict[str, np.ndarray]:
        return {"config": self.configs, "atom": self.atoms, "molecule": self.molecules}[level]

    def select(self, rows: np.ndarray) -> Columns:
        """The configs ``rows`` (in that order) as a new block."""
        rows = np.asarray(rows, dtype=np.int64)
        a_idx = ranges_index(self.atom_ptr, rows)
        m_idx = ranges_index(self.molecule_ptr, rows)
        return Columns(
            n_atoms=self.n_atoms[rows],
            n_molecules=self.n_molecules[rows],
            configs={k: v[rows] for k, v in self.configs.items()},
            atoms={k: v[a_idx] for k, v in self.atoms.items()},
            molecules={k: v[m_idx] for k, v in self.molecules.items()},
            masks={k: v[rows] for k, v in self.masks.items()},
        )


def concat(blocks: list[Columns]) -> Columns:
    """Concatenate blocks that hold the same fields."""
    if not blocks:
        raise ValueError("concat needs at least one block")
    first = blocks[0]

    def cat(getter):
        keys = getter(first).keys()
        for b in blocks[1:]:
            if getter(b).keys() != keys:
                raise ValueError(
                    f"cannot concatenate blocks with different fields: {sorted(keys)} vs {sorted(getter(b))}"
                )
        return {k: np.concatenate([getter(b)[k] for b in blocks]) for k in keys}

    return Columns(
        n_atoms=np.concatenate([b.n_atoms for b in blocks]),
        n_molecules=np.concatenate([b.n_molecules for b in blocks]),
        configs=cat(lambda b: b.configs),
        atoms=cat(lambda b: b.atoms),
        molecules=cat(lambda b: b.molecules),
        masks=cat(lambda b: b.masks),
    )
