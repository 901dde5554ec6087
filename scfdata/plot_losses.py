"""Per-term loss curves from a training log's ``loss breakdown:`` lines.

Reads both the plain numbers that ``scfdata.losses.WeightedLoss`` logs::

    loss breakdown: energy_per_atom: 1.23e-05, forces: 4.5e-06,

and the tensor text MACE_SCF writes today::

    loss breakdown: forces: tensor(0.0123, device='cuda:0', grad_fn=<MulBackward0>), ...

(the ``device='cuda:0'`` inside never becomes a term). Epochs come from ``Epoch N:`` lines, MACE's
convention: that line is written after epoch N's batches, so the batch lines before it (since the
previous ``Epoch`` line) belong to epoch N, and those after the last one to the epoch in progress.
``Epoch None:`` (MACE's initial evaluation) is ignored. A term missing from a line (another stage)
is NaN there. Not supported: multi-element tensors, several runs interleaved in one log.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_MARK = "loss breakdown:"
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_TENSOR = re.compile(r"tensor\(\s*(" + _NUM + r")\s*(?:,[^()]*)?\)")
_TERM = re.compile(r"(?:^|(?<=[,\s{]))['\"]?([A-Za-z_]\w*)['\"]?\s*:\s*(" + _NUM + r")(?=\s*(?:[,}]|$))")
_EPOCH = re.compile(r"\bEpoch\s+(\d+)\s*:")
_NOT_TERMS = {"device", "cuda", "cpu", "grad_fn", "dtype", "requires_grad"}


def parse_breakdown(line: str) -> dict[str, float]:
    """The terms of one ``loss breakdown:`` line (text after the marker), in order of appearance."""
    text = line.split(_MARK, 1)[1] if _MARK in line else line
    text = _TENSOR.sub(r"\1", text)
    return {name: float(value) for name, value in _TERM.findall(text) if name not in _NOT_TERMS}


@dataclass
class LossLog:
    """Parsed breakdown lines: ``terms[name][step]`` (NaN where absent), ``epoch[step]``."""

    terms: dict[str, np.ndarray] = field(default_factory=dict)
    epoch: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_steps(self) -> int:
        return len(self.epoch)

    def select_epochs(self, min_epoch: int | None = None, max_epoch: int | None = None) -> LossLog:
        keep = np.ones(self.n_steps, dtype=bool)
        if min_epoch is not None:
            keep &= self.epoch >= min_epoch
        if max_epoch is not None:
            keep &= self.epoch <= max_epoch
        return LossLog({k: v[keep] for k, v in self.terms.items()}, self.epoch[keep])


def parse_log(log_path: str | os.PathLike) -> LossLog:
    """Read a training log; every ``loss breakdown:`` line is one step."""
    rows: list[dict[str, float]] = []
    row_epoch_mark: list[int] = []  # index of the Epoch line count seen before this row
    epochs_closed: list[int] = []  # epoch numbers in order of their "Epoch N:" lines
    with open(log_path, errors="replace") as fh:
        for line in fh:
            if _MARK in line:
                rows.append(parse_breakdown(line))
                row_epoch_mark.append(len(epochs_closed))
                continue
            m = _EPOCH.search(line)
            if m:
                epochs_closed.append(int(m.group(1)))
    names: list[str] = []
    for r in rows:
        names += [n for n in r if n not in names]
    terms = {n: np.array([r.get(n, np.nan) for r in rows], dtype=float) for n in names}
    # a row before the k-th Epoch line belongs to that epoch; after the last one, to the next epoch
    closing = np.array(epochs_closed + [(epochs_closed[-1] + 1) if epochs_closed else 0], dtype=np.int64)
    epoch = closing[np.array(row_epoch_mark, dtype=np.int64)] if rows else np.zeros(0, dtype=np.int64)
    return LossLog(terms, epoch)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average that skips NaN."""
    if window <= 1 or len(y) == 0:
        return y.copy()
    ok = np.isfinite(y) & (y > 0)
    vals = np.where(ok, y, 0.0)
    csum = np.concatenate([[0.0], np.cumsum(vals)])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(0, idx - window)
    cnt = ccnt[idx] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (csum[idx] - csum[lo]) / cnt
    out[cnt == 0] = np.nan
    return out


def make_figure(log: LossLog, title: str = "", smooth_window: int | None = None):
    """A matplotlib Figure with two panels (raw, smoothed), one line per term in each, log y scale; on an
    Agg canvas, without pyplot (no backend is selected, no figure is left open in pyplot's registry)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 8))
    FigureCanvasAgg(fig)
    ax_raw, ax_smooth = fig.subplots(2, 1, sharex=True)
    steps = np.arange(log.n_steps)
    window = smooth_window or max(1, log.n_steps // 50)
    for name, y in log.terms.items():
        y = np.where(y > 0, y, np.nan)  # log scale: zeros and negatives are not drawn
        ax_raw.plot(steps, y, lw=0.6, label=name)
        ax_smooth.plot(steps, _smooth(y, window), lw=1.2, label=name)
    if log.n_steps:
        starts = np.flatnonzero(np.diff(log.epoch)) + 1
        for ax in (ax_raw, ax_smooth):
            if len(starts):
                ax.vlines(starts - 0.5, 0, 1, transform=ax.get_xaxis_transform(), colors="0.8",
                          linestyles=":", lw=0.8)
    for ax, label in ((ax_raw, "raw"), (ax_smooth, f"smoothed ({window} steps)")):
        ax.set_yscale("log")
        ax.set_ylabel(f"weighted loss term ({label})")
        ax.grid(True, which="major", alpha=0.3)
    if log.terms:
        ax_raw.legend(fontsize="small", ncol=2)
    if log.n_steps:
        e0, e1 = int(log.epoch.min()), int(log.epoch.max())
        ax_smooth.set_xlabel(f"batch step (epochs {e0}–{e1}; dotted lines: epoch boundaries)")
    else:
        ax_smooth.set_xlabel("batch step (no loss breakdown lines found)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_losses(log_path: str | os.PathLike, min_epoch: int | None = None, max_epoch: int | None = None,
                out: str | os.PathLike = "losses.png") -> Path:
    """Plot every term of the ``loss breakdown:`` lines of ``log_path`` to ``out`` (PNG); returns ``out``.

    Raises ValueError when the log (within the epoch range) has no breakdown line.
    """
    log = parse_log(log_path)
    if log.n_steps == 0:
        raise ValueError(f"{log_path}: no '{_MARK}' lines found; log the losses at DEBUG level "
                         "(logger scfdata.losses) or check the file")
    sel = log.select_epochs(min_epoch, max_epoch)
    if sel.n_steps == 0:
        raise ValueError(f"{log_path}: no breakdown line in epochs {min_epoch}..{max_epoch}; the log holds "
                         f"epochs {int(log.epoch.min())}..{int(log.epoch.max())}")
    fig = make_figure(sel, title=Path(log_path).name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
