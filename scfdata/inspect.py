"""What is in an scfdata file: counts, elements, boundary classes, fields, provenance, rejects, losses,
and the problems `scfdata verify` finds in it (as warnings).

One pass over each field's values (min/mean/max, in blocks); coverage, the supported losses and the shapes
come from the masks and the file's metadata, read once. The loss table needs no torch. The problems are
`scfdata verify`'s own check of the file (a second read of every array, checksums included)."""

from __future__ import annotations

from collections import Counter

import numpy as np
from ase.data import chemical_symbols

from . import fields
from .h5io import LEVEL_GROUP, ScfdataFile
from .losses.support import DataSummary, supported_losses
from .reference.esp import pbc_labels


def _entry_mask(f: ScfdataFile, name: str) -> np.ndarray:
    """Presence of every entry (first axis of the field's level) from the per-config mask, keeping a
    component mask: for the dipole ((n, 3) mask) a masked component is absent even when others are not."""
    level = fields.FIELDS[name].level
    m = np.asarray(f.mask(name), dtype=bool)
    if level == "config":
        return m
    ptr = f.atom_ptr if level == "atom" else f.molecule_ptr
    return np.repeat(m, np.diff(ptr), axis=0)


def _stats(values: np.ndarray, present: np.ndarray, block: int = 1 << 20) -> dict:
    """min/mean/max over present entries (per component when ``present`` has the component axes), read
    in blocks (memory stays bounded)."""
    lo, hi, total, count = np.inf, -np.inf, 0.0, 0
    for s in range(0, len(values), block):
        v = np.asarray(values[s : s + block], dtype=np.float64)
        p = np.asarray(present[s : s + block], dtype=bool)
        p = np.broadcast_to(p.reshape(p.shape + (1,) * (v.ndim - p.ndim)), v.shape)
        v = v[p & np.isfinite(v)]  # a non-finite present value is a problem `verify` reports
        if v.size:
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
            total += float(v.sum())
            count += v.size
    if count == 0:
        return {"min": None, "mean": None, "max": None}
    return {"min": lo, "mean": total / count, "max": hi}


def summarize(path, *, problems: bool = True) -> dict:
    """The whole summary as one JSON-ready dict (what `scfdata inspect --json` prints). ``problems=False``
    leaves out the ``problems`` entry and so the verification of the file (report.md does not show it)."""
    with ScfdataFile(path) as f:
        # a derived fragment holds only its own fields: bookkeeping arrays may be absent
        numbers = np.asarray(f.raw("atoms", "numbers")) if f.exists("atoms", "numbers") else np.zeros(0, int)
        counts = np.bincount(numbers) if numbers.size else np.zeros(0, int)
        elements = {chemical_symbols[z]: int(c) for z, c in enumerate(counts) if c}
        pbc = np.asarray(f.raw("configs", "pbc")).reshape(-1, 3) if f.exists("configs", "pbc") else []
        classes = Counter(pbc_labels(pbc).tolist())
        types = f.raw("configs", "config_type") if f.exists("configs", "config_type") else np.zeros(0, str)
        out_fields = {}
        for name in f.field_names():
            fd = fields.FIELDS[name]
            attrs = f.field_attrs(name)
            _, shape = f.array_info(f"{LEVEL_GROUP[fd.level]}/{name}")  # (strings: not decoded to be counted)
            entry = {
                "level": fd.level,
                "unit": attrs.get("unit", fd.unit),
                "shape": list(shape[1:]),
                "coverage": f.coverage(name),
                "derived": fd.derived,
            }
            if fd.dtype != "str":
                entry.update(_stats(f.read(name), _entry_mask(f, name)))
            if "derived_by" in attrs:
                entry["derived_by"] = attrs["derived_by"]
            out_fields[name] = entry
        rejects = f.rejects()
        summary = {
            "path": str(f.path),
            "format_version": f.attrs.get("format_version"),
            "creator": f.attrs.get("creator"),
            "n_configs": f.n_configs,
            "n_atoms": f.n_atoms,
            "n_molecules": f.n_molecules,
            "elements": elements,
            "boundary_classes": dict(sorted(classes.items())),
            "config_types": dict(Counter(np.asarray(types).tolist()).most_common()),
            "fields": out_fields,
            "rejects": {"n": len(rejects), "reasons": dict(Counter(r[2].split(":")[0] for r in rejects))},
            "provenance": f.provenance,
        }
        data = DataSummary(f.n_configs, {n: e["coverage"] for n, e in out_fields.items()},
                           {2: f.n_configs_with_min_molecules(2)})  # (what supported_losses(f) would read)
    summary.update(quality_summary(summary["provenance"]))
    summary["losses"] = supported_losses(data)
    if problems:
        from .verify import verify_file

        summary["problems"] = verify_file(path).problems
    return summary


def quality_summary(provenance: dict | None) -> dict:
    """``flags`` (flag -> configs of this file carrying it) and, when quality flags were computed,
    ``quality`` (flagged, dropped) from the file's provenance ``quality`` entry; ``flags`` is {} and
    ``quality`` None for a file written without quality flags."""
    q = (provenance or {}).get("quality")
    if not isinstance(q, dict):
        return {"flags": {}, "quality": None}
    flags = {str(k): int(v) for k, v in (q.get("flags") or {}).items()}
    flagged = q.get("flagged")
    return {"flags": flags, "quality": {"flagged": int(flagged) if flagged is not None else None,
                                        "dropped": {str(k): int(v) for k, v in (q.get("dropped") or {}).items()},
                                        "settings": q.get("settings") or {}}}


def quality_lines(flags: dict, quality: dict | None) -> list[str]:
    """Text lines of the quality flags (nothing when they were not computed)."""
    if quality is None:
        return []
    counts = ", ".join(f"{k} {v}" for k, v in flags.items() if v) or "none"
    flagged = quality.get("flagged")
    lines = [f"quality flags: {counts}" + (f"   ({flagged} config(s) flagged)" if flagged is not None else "")]
    dropped = {k: v for k, v in quality.get("dropped", {}).items() if v}
    if dropped:
        lines.append("dropped by quality.drop (rejects of the dataset): "
                     + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    return lines + _provenance_lines("quality settings", quality.get("settings") or {}, "")


def format_value(v, missing: str = "-") -> str:
    """A table cell: 4 significant digits for floats, ``missing`` for None."""
    if v is None:
        return missing
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_text(s: dict) -> str:
    """The summary as aligned terminal tables."""
    parts = [
        f"{s['path']}  (scfdata format_version {s['format_version']}, {s['creator']})",
        f"configs {s['n_configs']}   atoms {s['n_atoms']}   molecules {s['n_molecules']}   "
        f"rejected {s['rejects']['n']}",
        "elements: " + ", ".join(f"{k} {v}" for k, v in s["elements"].items()),
        "boundary classes: " + ", ".join(f"{k} {v}" for k, v in s["boundary_classes"].items()),
        "config types: " + ", ".join(f"{k} {v}" for k, v in list(s["config_types"].items())[:12])
        + (" ..." if len(s["config_types"]) > 12 else ""),
        "",
        "fields:",
    ]
    n = s["n_configs"]
    rows = [
        [name, e["level"], "x".join(map(str, e["shape"])) or "-", e["unit"] or "-", f"{e['coverage']}/{n}",
         *(format_value(e.get(k)) for k in ("min", "mean", "max")), "derived" if e["derived"] else "input"]
        for name, e in s["fields"].items()
    ]
    parts.append(_table(rows, ["field", "level", "shape", "unit", "coverage", "min", "mean", "max", "kind"]))
    if s["rejects"]["n"]:
        parts += ["", "rejects by reason:"]
        parts += [f"  {v:6d}  {k}" for k, v in s["rejects"]["reasons"].items()]
    quality = quality_lines(s.get("flags", {}), s.get("quality"))
    if quality:
        parts += ["", *quality]
    if s["losses"]:
        parts += ["", "losses:"]
        rows = [[name, "yes" if e["supported"] else "no", f"{e['n_configs']}/{n}", e.get("reason") or e.get("note", "")]
                for name, e in s["losses"].items()]
        parts.append(_table(rows, ["loss", "supported", "configs", "reason"]))
    if s.get("problems"):
        parts += ["", f"warnings ({len(s['problems'])} problem(s) found by `scfdata verify`):"]
        parts += [f"  {p}" for p in s["problems"]]
    prov = s["provenance"]
    if prov:
        parts += ["", "provenance:"]
        for inp in prov.get("inputs", []):
            parts.append(f"  input {inp.get('path')}  sha256 {str(inp.get('sha256', ''))[:16]}…")
        for k, v in prov.items():
            if k not in ("inputs", "quality"):  # quality: shown above
                parts += _provenance_lines(k, v, "  ")
    return "\n".join(parts)


def plain_value(v) -> str:
    """A provenance value as text: numbers as in the tables, strings as they are (no quotes, no escapes)."""
    if isinstance(v, (list, tuple)):
        return ", ".join(plain_value(x) for x in v) if v else "none"
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "none"}[v]
    return format_value(v)


def _provenance_lines(key: str, value, indent: str) -> list[str]:
    """``key: value`` lines: a dict's plain entries on one line as ``k = v, ...``, its nested dicts below
    it, indented; empty dicts left out."""
    if not isinstance(value, dict):
        return [f"{indent}{key}: {plain_value(value)}"]
    if not value:
        return []
    flat = {k: v for k, v in value.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in value.items() if isinstance(v, dict) and v}
    head = f"{indent}{key}:" + (" " + ", ".join(f"{k} = {plain_value(v)}" for k, v in flat.items()) if flat else "")
    lines = [head] if flat or nested else []
    for k, v in nested.items():
        lines += _provenance_lines(k, v, indent + "  ")
    return lines
