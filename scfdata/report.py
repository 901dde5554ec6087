"""results/<ds>/report.md: counts, per-split coverage, supported losses, statistics (E0 with its
diagnostics), the split report (per element and config_type; elements train lacks), quality flags
(counts from the manifest, examples from flags.tsv), rejects, PNG plots.

Plots (matplotlib's Agg canvas, without pyplot: no backend is selected, no GUI is touched) go to
``plots/`` next to the report: a histogram per numeric target field, ESP distributions per element (when
ESPs exist), and the parity of the dipole from multipoles against the DFT dipole (when both exist). Plots
use at most ``max_points`` entries per field (an even stride over all split files), so the report's memory
stays bounded on large datasets: each split file is opened once for all plots and read through its memory
map (pages of the file, which the system can drop), and only the strided entries are copied.

The report reads the data and writes what it finds; it does not verify the files and says nothing of
their checksums or structure (that is ``scfdata verify results/<ds>``'s job). It imports no torch.
Not supported: interactive plots, per-config drill-down.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from . import fields
from .h5io import ScfdataFile, remove_stale_temporaries
from .inspect import format_value, plain_value, summarize
from .split import SPLIT_NAMES, missing_elements_text


def _fmt(v) -> str:
    return format_value(v, missing="–")


def _cell(text: str) -> str:
    """Text from the data (a file name, a reject reason) as one Markdown table cell: `|` escaped."""
    return text.replace("|", "\\|")


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out + [""]


def _coverage(path) -> dict:
    """What the coverage table reads of a split other than the first: its configs, each field's coverage."""
    with ScfdataFile(path) as f:
        return {"n_configs": f.n_configs, "fields": {n: {"coverage": f.coverage(n)} for n in f.field_names()}}


def _entry_rows(f: ScfdataFile, name: str, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of present entries of a field (strided to at most max_points) and their config ids."""
    level = fields.FIELDS[name].level
    m = np.asarray(f.mask(name))
    per_config = m.reshape(len(m), -1).any(axis=1) if m.size else np.zeros(f.n_configs, bool)
    if level == "config":
        idx = np.flatnonzero(per_config)
        owner = idx
    else:
        ptr = f.atom_ptr if level == "atom" else f.molecule_ptr
        owner_all = np.repeat(np.arange(f.n_configs), np.diff(ptr))
        idx = np.flatnonzero(per_config[owner_all])
        owner = owner_all[idx]
    if len(idx) > max_points:
        take = np.linspace(0, len(idx) - 1, max_points).astype(np.int64)
        idx, owner = idx[take], owner[take]
    return idx, owner


def _collect(files: list[ScfdataFile], name: str, max_points: int, with_numbers: bool = False):
    values, numbers = [], []
    per_file = max(1, max_points // max(1, len(files)))
    for f in files:
        if not f.has(name):
            continue
        idx, _ = _entry_rows(f, name, per_file)
        values.append(np.asarray(f.read(name))[idx])
        if with_numbers:
            numbers.append(np.asarray(f.raw("atoms", "numbers"))[idx])
    if not values:
        return None, None
    return np.concatenate(values), (np.concatenate(numbers) if with_numbers else None)


def _figure(figsize: tuple[float, float]):
    """(figure, axes) on an Agg canvas: what ``pyplot.subplots`` makes, without pyplot's backend machinery."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig, out: Path) -> None:
    """Lay the figure out once (tight) and write it as PNG at 80 dpi."""
    import matplotlib

    fig.tight_layout()
    # tight_layout leaves a placeholder layout engine, for which savefig would draw the figure once more
    # before the real draw; the layout is done, so no engine (whatever a matplotlibrc says of autolayout)
    with matplotlib.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
        fig.set_layout_engine(None)
    fig.savefig(out, dpi=80)


def _plots(paths: list[Path], plot_dir: Path, max_points: int) -> list[tuple[str, str]]:
    with ExitStack() as stack:  # each split file opened once for all plots
        files = [stack.enter_context(ScfdataFile(p)) for p in paths]
        return _plot_files(files, plot_dir, max_points)


def _plot_files(files: list[ScfdataFile], plot_dir: Path, max_points: int) -> list[tuple[str, str]]:
    plot_dir.mkdir(parents=True, exist_ok=True)
    made = []
    names = []
    for f in files:
        names += [n for n in f.field_names() if n not in names]
    for name in names:
        fd = fields.FIELDS[name]
        if fd.dtype != "float64" or not fd.target:
            continue
        v, _ = _collect(files, name, max_points)
        if v is None or v.size == 0:
            continue
        fig, ax = _figure((5, 3.5))
        ax.hist(v.reshape(-1), bins=60, color="C0")
        ax.set_xlabel(f"{name} ({fd.unit})" if fd.unit else name)
        ax.set_ylabel("entries")
        ax.set_title(f"{name}: {v.reshape(len(v), -1).shape[0]} entries")
        out = plot_dir / f"hist_{name}.png"
        _save(fig, out)
        made.append((f"{name} histogram", out.name))
    if "esps" in names:
        v, z = _collect(files, "esps", max_points, with_numbers=True)
        if v is not None and v.size:
            fig, ax = _figure((5, 3.5))
            for el in np.unique(z):
                ax.hist(v[z == el], bins=60, histtype="step", label=chemical_symbols[el])
            ax.set_xlabel("ESP at atom (V)")
            ax.set_ylabel("atoms")
            ax.legend()
            out = plot_dir / "esps_per_element.png"
            _save(fig, out)
            made.append(("ESP per element", out.name))
    if "dipole" in names and "dipole_from_multipoles" in names:
        ref, pred = [], []
        for f in files:
            if not (f.has("dipole") and f.has("dipole_from_multipoles")):
                continue
            both = np.asarray(f.mask("dipole")) & np.asarray(f.mask("dipole_from_multipoles"))
            ref.append(np.asarray(f.read("dipole"))[both])
            pred.append(np.asarray(f.read("dipole_from_multipoles"))[both])
        if ref and sum(len(r) for r in ref):
            r, q = np.concatenate(ref)[:max_points], np.concatenate(pred)[:max_points]
            fig, ax = _figure((4, 4))
            ax.scatter(r, q, s=4)
            lo, hi = float(min(r.min(), q.min())), float(max(r.max(), q.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xlabel("DFT dipole component (e·Å)")
            ax.set_ylabel("dipole from multipoles (e·Å)")
            rms = float(np.sqrt(np.mean((r - q) ** 2)))
            ax.set_title(f"rms difference {rms:.3g} e·Å")
            out = plot_dir / "dipole_parity.png"
            _save(fig, out)
            made.append(("dipole from multipoles vs DFT dipole", out.name))
    return made


def _e0_lines(e0: dict, info: dict) -> list[str]:
    """The E0 table with its diagnostics (rank, condition number, residual, counts, sources)."""
    supplied = info.get("supplied") or {}
    how = f"least squares over {info['n_configs']} configs" + (f", supplied: {', '.join(supplied)}" if supplied else "")
    lines = [f"Atomic reference energies E0 ({how}; rank {info['rank']} of {info['n_elements']} fitted elements"
             + (", **under-determined**: minimum-norm solution"
                if info["underdetermined"] and info["n_configs"] else "")
             + "):", ""]
    if "condition_number" in info:
        cond = info["condition_number"]
        cond_text = _fmt(cond) if cond is not None else "infinite (rank-deficient)"
        lines += [f"Composition matrix: condition number {cond_text}; "
                  f"residual rms {_fmt(info.get('residual_rms'))} eV per config, "
                  f"{_fmt(info.get('residual_rms_per_atom'))} eV per atom.", ""]
    per, source = info.get("per_element") or {}, info.get("source") or {}
    lines += _md_table(["element", "E0 (eV)", "source", "configs with energy", "atoms"],
                       [[k, v, source.get(k, "–"), per.get(k, {}).get("n_configs"), per.get(k, {}).get("n_atoms")]
                        for k, v in e0.items()])
    return lines  # (an under-determined E0 is also in the statistics warnings, shown below the scales)


def _split_lines(report: dict) -> list[str]:
    """Per element and per config_type: configs in each split; the elements train lacks."""
    lines = ["## Splits", "", "Configs of each split that hold the element / have the config_type "
             f"(train {report['configs']['train']}, valid {report['configs']['valid']}, "
             f"test {report['configs']['test']}).", ""]
    missing = report.get("elements_missing_from_train")
    if missing:
        lines += [f"> warning: train holds no config with {missing_elements_text(missing)}: a model trained on it "
                  "never sees " + ("this element." if len(missing) == 1 else "these elements."), ""]
    by_z = sorted(report["per_element"].items(), key=lambda kv: atomic_numbers.get(kv[0], 0))  # (JSON sorts keys)
    lines += _md_table(["element", *SPLIT_NAMES], [[el, *(c[s] for s in SPLIT_NAMES)] for el, c in by_z])
    lines += _md_table(["config_type", *SPLIT_NAMES], [[f"`{t}`", *(c[s] for s in SPLIT_NAMES)]
                                                       for t, c in report["per_config_type"].items()])
    return lines


FLAGS_HEADER = ("file", "frame", "flag", "detail")


def read_flags(path: str | os.PathLike, n_examples: int = 5) -> tuple[dict[str, int], dict[str, list[list[str]]]]:
    """(rows per flag, the first ``n_examples`` rows [file, frame, detail] per flag) of a flags.tsv, read
    line by line (memory bounded by the examples kept). A malformed file is a ValueError naming the line."""
    counts: dict[str, int] = {}
    examples: dict[str, list[list[str]]] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().rstrip("\r\n")
        if tuple(header.split("\t")) != FLAGS_HEADER:
            raise ValueError(f"{path}: line 1: expected the header {'<TAB>'.join(FLAGS_HEADER)!r}, found "
                             f"{header[:80]!r}: not a flags.tsv of `scfdata quality` (rerun the quality rule)")
        for i, line in enumerate(fh, start=2):
            cells = line.rstrip("\r\n").split("\t")
            if cells == [""]:
                continue
            problem = ("" if len(cells) == 4 else f"expected 4 tab-separated columns (file, frame, flag, detail), "
                       f"found {len(cells)}")
            if not problem and not cells[1].isdigit():
                problem = f"frame must be a non-negative integer, found {cells[1]!r}"
            if not problem and not cells[2]:
                problem = "the flag name is empty"
            if problem:
                raise ValueError(f"{path}: line {i}: {problem}: {line.strip()[:80]!r} (rerun the quality rule)")
            file, frame, flag, detail = cells
            counts[flag] = counts.get(flag, 0) + 1
            if len(ex := examples.setdefault(flag, [])) < n_examples:
                ex.append([f"`{_cell(file)}`", frame, _cell(detail)])
    return counts, examples


def _quality_lines(manifest: dict, flags_tsv: str | os.PathLike | None, settings: dict | None) -> list[str]:
    """The Quality flags section: per flag the written configs carrying it (per split) and the configs
    dropped by quality.drop (manifest), the settings (the files' provenance), examples (flags.tsv)."""
    lines = ["## Quality flags", ""]
    quality = manifest.get("quality")
    if flags_tsv is None and not isinstance(quality, dict):
        return lines + ["Quality flags were not computed for this dataset (no flags.tsv).", ""]
    tsv_counts, examples = read_flags(flags_tsv) if flags_tsv is not None else ({}, {})
    quality = quality if isinstance(quality, dict) else {}
    written, dropped = quality.get("flags") or {}, quality.get("dropped") or {}
    by_split = quality.get("by_split") or {}
    names = list(dict.fromkeys([*written, *dropped, *tsv_counts]))
    if settings:
        lines += ["Settings: " + ", ".join(f"{k} {plain_value(v)}" for k, v in settings.items()) + ".", ""]
    if not any(written.get(n) or dropped.get(n) or tsv_counts.get(n) for n in names):
        return lines + ["No config was flagged.", ""]
    splits = [s for s in SPLIT_NAMES if s in by_split]
    where = f" (all in `{Path(flags_tsv).name}`)" if flags_tsv is not None else ""
    lines += [f"Configs carrying each flag: written to the splits, and dropped by `quality.drop` (rejects); "
              f"{quality.get('flagged', '–')} written configs carry a flag. Flagged configs{where}:", ""]
    lines += _md_table(["flag", "written", *splits, "dropped", "in flags.tsv"],
                       [[f"`{n}`", written.get(n), *((by_split[s] or {}).get(n, 0) for s in splits),
                         dropped.get(n, 0), tsv_counts.get(n) if flags_tsv is not None else None] for n in names])
    shown = [n for n in names if examples.get(n)]
    if shown:
        lines += ["First examples per flag:", ""]
        lines += _md_table(["flag", "file", "frame", "detail"],
                           [[f"`{n}`", *row] for n in shown for row in examples[n]])
    return lines


def build_report(manifest: dict, statistics: dict | None, out_path: str | os.PathLike,
                 rejects_tsv: str | os.PathLike | None = None, max_points: int = 200_000,
                 flags_tsv: str | os.PathLike | None = None) -> Path:
    """Write report.md (and plots/) for one dataset from its manifest and statistics (and flags.tsv)."""
    out_path = Path(out_path)
    ds = manifest.get("dataset", out_path.parent.name)
    splits = {k: v for k, v in manifest.get("splits", {}).items()}
    paths = [Path(splits[s]["path"]) for s in SPLIT_NAMES if s in splits]
    lines = [f"# scfdata report: {ds}", ""]
    lines += [f"Configs in **{manifest['configs_in']}**, written **{manifest['written']}**, "
              f"rejected **{manifest['rejected']}**.", ""]
    lines += _md_table(["split", "file", "configs"],
                       [[s, f"`{Path(splits[s]['path']).name}`", splits[s]["n_configs"]]
                        for s in SPLIT_NAMES if s in splits])
    written = [s for s in SPLIT_NAMES if s in splits]  # the first split in full, the others' coverage
    summaries = {s: summarize(splits[s]["path"], problems=False) if i == 0 else _coverage(splits[s]["path"])
                 for i, s in enumerate(written)}
    if summaries:
        first = next(iter(summaries.values()))
        lines += ["## Contents", "",
                  "Elements: " + ", ".join(f"{k} {v}" for k, v in first["elements"].items())
                  + " (first split).  Boundary classes: "
                  + ", ".join(f"{k} {v}" for k, v in first["boundary_classes"].items()) + ".", ""]
        lines += ["## Coverage", "", "Configs where the field is present (n / configs of the split), "
                  "and min / mean / max over present entries of the first split.", ""]
        names = []
        for s in summaries.values():
            names += [n for n in s["fields"] if n not in names]
        rows = []
        for name in names:
            e = first["fields"].get(name, {})
            row = [f"`{name}`", e.get("level", "–"), e.get("unit") or "–"]
            row += [f"{s['fields'][name]['coverage']}/{s['n_configs']}" if name in s["fields"] else "–"
                    for s in summaries.values()]
            row += [e.get("min"), e.get("mean"), e.get("max"), "derived" if e.get("derived") else "input"]
            rows.append(row)
        lines += _md_table(["field", "level", "unit", *summaries, "min", "mean", "max", "kind"], rows)
        reference = (first.get("provenance") or {}).get("reference") or {}
        targets = {t: v for t, v in reference.items() if isinstance(v, dict) and "derived" in v}
        if targets:
            lines += ["## Reference targets", ""]
            lines += _md_table(["target", "derived", "why not"],
                               [[f"`{t}`", "yes" if v["derived"] else "no", v.get("skipped") or ""]
                                for t, v in targets.items()])
        if first.get("losses"):
            lines += ["## Supported losses (first split)", ""]
            lines += _md_table(["loss", "supported", "configs", "reason"],
                               [[f"`{k}`", "yes" if v["supported"] else "no", v["n_configs"],
                                 v.get("reason") or v.get("note", "")]
                                for k, v in first["losses"].items()])
    if statistics:
        lines += ["## Statistics", "", f"Computed on the {statistics.get('computed_on', 'train')} configs "
                  f"({statistics.get('n_configs')}); full numbers in `statistics.json`.", ""]
        e0 = statistics.get("atomic_energies")
        if e0:
            lines += _e0_lines(e0, statistics["e0"])
        lines += _md_table(["scale", "value"], [[f"`{k}`", v] for k, v in statistics.get("scales", {}).items()])
        for w in statistics.get("warnings", []):
            lines += [f"> warning: {w}", ""]
    if statistics and statistics.get("split_report"):
        lines += _split_lines(statistics["split_report"])
    first_prov = next(iter(summaries.values()))["provenance"] if summaries else {}
    lines += _quality_lines(manifest, flags_tsv, ((first_prov or {}).get("quality") or {}).get("settings"))
    lines += ["## Rejects", ""]
    if manifest.get("rejected"):
        lines += _md_table(["reason", "configs"],
                           [[_cell(k), v] for k, v in manifest.get("reject_reasons", {}).items()])
        if rejects_tsv and Path(rejects_tsv).exists():
            with open(rejects_tsv) as fh:
                head = [next(fh, "") for _ in range(11)][1:]
            rows = [[_cell(c) for c in ln.rstrip("\n").split("\t")] for ln in head if ln.strip()]
            lines += [f"First {len(rows)} of {manifest['rejected']} (all in `{Path(rejects_tsv).name}`):", ""]
            lines += _md_table(["file", "frame", "reason"], rows)
    else:
        lines += ["No config was rejected.", ""]
    made = _plots(paths, out_path.parent / "plots", max_points) if paths else []
    if made:
        lines += ["## Plots", ""]
        for title, name in made:
            lines += [f"### {title}", "", f"![{title}](plots/{name})", ""]
    remove_stale_temporaries(out_path)  # a killed earlier writer's
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, out_path)
    return out_path
