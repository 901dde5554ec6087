"""The key mapping: canonical field names -> the keys an input file uses (MACE_SCF's `heads:` entry).

Accepted forms (one dataset's ``keys:`` block, or ``keys_from:`` a MACE_SCF training config whose
first head supplies ``info_keys`` / ``arrays_keys``)::

    info_keys:   {energy: DFT_energy, dipole: DFT_dipole, total_charge: total_charge}
    arrays_keys: {forces: DFT_forces, atomic_multipoles: DFT_multipoles}

MACE_SCF spells some canonical names differently in its heads; those aliases are folded onto
scfdata's names (``density_coefficients`` -> ``atomic_multipoles``, ``electrostatic_potentials`` ->
``esps``, ``molID`` -> ``molecule``). The extra name ``atomic_dipoles`` (Cartesian per-atom dipoles,
with ``charges``) is accepted and converted to ``atomic_multipoles`` at ingest.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import fields

log = logging.getLogger("scfdata.keys")

#: MACE_SCF head names that differ from scfdata's canonical names.
ALIASES = {
    "density_coefficients": "atomic_multipoles",
    "multipoles": "atomic_multipoles",
    "electrostatic_potentials": "esps",
    "molID": "molecule",
    "molecule_ids": "molecule",
    "virial": "virials",
    "head": None,  # MACE's head selection key: not a field
}

#: Names that may be mapped besides the registry's input fields.
EXTRA_NAMES = {"atomic_dipoles", "molecule", "esps"}


def yaml_error_message(path: str | Path, err: yaml.YAMLError, what: str = "file") -> str:
    """One line: the file, the line/column of a YAML syntax error (1-based), the problem, what to fix."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(position unknown)"
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} started at line {context_mark.line + 1}, column {context_mark.column + 1})"
    elif context:
        problem += f" ({context})"
    return (f"{path}: not valid YAML at {where}: {problem}; fix the {what} there (check the indentation, "
            "the ': ' after each key, and unclosed brackets or quotes)")


#: Limits of :func:`load_yaml`: file size (bytes) and nodes after expanding aliases (an alias bomb, a few
#: lines that expand to billions of nodes, is refused before it is built).
MAX_YAML_BYTES = 10 * 1024 * 1024
MAX_YAML_NODES = 1_000_000


def _expanded_nodes(root: yaml.Node, path: Path, limit: int) -> int:
    """Node count of the document with every alias expanded (shared subtrees counted once per use)."""
    size: dict[int, int] = {}
    stack = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > limit:
                raise ValueError(f"{path}: YAML expands to more than {limit} nodes (aliases `*name` repeating "
                                 "anchors `&name`); write the file out without such nesting")
            continue
        if key in size:
            continue
        if key in on_path:
            raise ValueError(f"{path}: YAML alias refers to its own anchor (a recursive structure); remove it")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size[id(root)]


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def load_yaml(path: str | Path, what: str = "file"):
    """The content of a YAML file; a syntax error is a one-line ValueError naming the file, the line and
    the column. Files above MAX_YAML_BYTES, documents that expand (through aliases) to more than
    MAX_YAML_NODES nodes and recursive aliases are refused. A missing file raises FileNotFoundError
    (the CLI prints it as one line too)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_YAML_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, larger than a YAML {what} can be "
                         f"({MAX_YAML_BYTES} bytes); give the right file")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (not UTF-8); expected a YAML {what}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_nodes(node, path, MAX_YAML_NODES)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ValueError(yaml_error_message(path, e, what)) from None
    finally:
        loader.dispose()


def _canonical(name: str, where: str, strict: bool = True) -> str | None:
    name = ALIASES.get(name, name)
    if name is None:
        return None
    if name not in fields.FIELDS and name not in EXTRA_NAMES:
        if not strict:  # a MACE_SCF head may map properties scfdata does not store (enegs, hardness, ...)
            log.warning("%s: %r is not a field scfdata stores; ignored", where, name)
            return None
        known = sorted(set(fields.INPUT_FIELDS) | EXTRA_NAMES)
        hint = difflib.get_close_matches(name, known, n=1)
        raise ValueError(
            f"{where}: unknown field {name!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; mappable fields are: {', '.join(known)}"
        )
    return name


@dataclass
class KeyMapping:
    """Canonical name -> file key, for values found in ``atoms.info`` and in ``atoms.arrays``."""

    info_keys: dict[str, str] = field(default_factory=dict)
    arrays_keys: dict[str, str] = field(default_factory=dict)
    source: str = "keys"

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "keys", strict: bool = True) -> KeyMapping:
        """``strict``: an unknown name is an error with a did-you-mean (else: ignored with a warning)."""
        d = d or {}
        unknown = set(d) - {"info_keys", "arrays_keys"}
        if unknown:
            raise ValueError(f"{where}: unknown entries {sorted(unknown)}; expected info_keys and arrays_keys")
        out = cls(source=where)
        for section, target in (("info_keys", out.info_keys), ("arrays_keys", out.arrays_keys)):
            block = d.get(section) or {}
            if not isinstance(block, dict):
                raise ValueError(f"{where}.{section}: expected a mapping name -> key, found {type(block).__name__}")
            for name, key in block.items():
                canon = _canonical(str(name), f"{where}.{section}", strict)
                if canon is None:
                    continue
                if not isinstance(key, str):
                    raise ValueError(f"{where}.{section}.{name}: expected a key name (string), found {key!r}")
                target[canon] = key
        return out

    @classmethod
    def from_mace_scf_config(cls, path: str | Path) -> KeyMapping:
        """The first head's ``info_keys``/``arrays_keys`` of a MACE_SCF training config."""
        path = Path(path)
        try:
            cfg = load_yaml(path, what="MACE_SCF config")
        except OSError as e:
            raise ValueError(f"keys_from: cannot read MACE_SCF config {path}: {e.strerror or e}") from None
        if cfg is not None and not isinstance(cfg, dict):
            raise ValueError(f"{path}: expected a MACE_SCF training config (a YAML mapping with `heads:`), "
                             f"found a {type(cfg).__name__}")
        heads = (cfg or {}).get("heads")
        if isinstance(heads, dict) and heads:
            name, head = next(iter(heads.items()))
        elif isinstance(heads, list) and heads:
            name, head = 0, heads[0]
        elif isinstance(cfg, dict) and ("info_keys" in cfg or "arrays_keys" in cfg):
            name, head = "(top level)", cfg
        elif isinstance(cfg, dict) and any(str(k).endswith("_key") for k in cfg):
            return cls._from_key_options(cfg, where=str(path))
        else:
            raise ValueError(
                f"keys_from: {path} has no `heads:` block with info_keys/arrays_keys "
                "(expected a MACE_SCF training config)"
            )
        head = head or {}
        return cls.from_dict(
            {k: head.get(k) for k in ("info_keys", "arrays_keys") if k in head},
            where=f"{path}:heads.{name}",
            strict=False,
        )

    @classmethod
    def _from_key_options(cls, cfg: dict, where: str) -> KeyMapping:
        """MACE's ``<name>_key: file_key`` options (e.g. ``energy_key``, ``atomic_multipoles_key``)."""
        out = cls(source=where)
        for opt, key in cfg.items():
            if not str(opt).endswith("_key") or not isinstance(key, str):
                continue
            canon = _canonical(str(opt)[: -len("_key")], f"{where}:{opt}", strict=False)
            if canon is None:
                continue
            level = fields.FIELDS[canon].level if canon in fields.FIELDS else "atom"
            (out.arrays_keys if level == "atom" else out.info_keys)[canon] = key
        return out

    def items(self):
        """(canonical name, file key, preferred section) for every mapped name."""
        for name, key in self.info_keys.items():
            yield name, key, "info"
        for name, key in self.arrays_keys.items():
            yield name, key, "arrays"

    def as_dict(self) -> dict:
        return {"info_keys": dict(self.info_keys), "arrays_keys": dict(self.arrays_keys)}


def mapping_for_dataset(ds: dict, where: str) -> KeyMapping:
    """The mapping of one dataset block of the workflow config (``keys`` or ``keys_from``)."""
    if ds.get("keys_from") and ds.get("keys"):
        raise ValueError(f"{where}: give either keys or keys_from, not both")
    if ds.get("keys_from"):
        return KeyMapping.from_mace_scf_config(ds["keys_from"])
    return KeyMapping.from_dict(ds.get("keys"), where=f"{where}.keys")
