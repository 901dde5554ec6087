"""Parsing `loss breakdown:` lines (plain numbers and MACE_SCF tensor text) and rendering the PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scfdata.plot_losses import make_figure, parse_breakdown, parse_log, plot_losses

ROOT = Path(__file__).resolve().parents[1]


def test_plain_numbers():
    line = "2024-05-01 12:00:00.123 DEBUG: loss breakdown: energy_per_atom: 1.23e-05, forces: 4.5e-06, "
    assert parse_breakdown(line) == {"energy_per_atom": 1.23e-05, "forces": 4.5e-06}


def test_tensor_text_cuda_and_cpu():
    line = ("INFO: loss breakdown: energy: tensor(0.0123, device='cuda:0', grad_fn=<MulBackward0>), "
            "forces: tensor(2.5e-03, grad_fn=<MulBackward0>), esps: tensor(7., device='cuda:0'), "
            "dipole: tensor(nan, device='cuda:0', grad_fn=<DivBackward0>), ")
    got = parse_breakdown(line)
    assert list(got) == ["energy", "forces", "esps", "dipole"]
    assert got["energy"] == 0.0123 and got["forces"] == 2.5e-3 and got["esps"] == 7.0
    assert np.isnan(got["dipole"])
    assert "cuda" not in got


def test_unparsed_device_text_never_becomes_a_term():
    # a tensor form the parser does not simplify (2 elements) must not yield a 'cuda' term
    line = "loss breakdown: forces: tensor([1., 2.], device='cuda:0'), energy: 0.5, "
    got = parse_breakdown(line)
    assert "cuda" not in got and got["energy"] == 0.5


def _write_log(path: Path, n_epochs: int = 4, steps: int = 10, tensor: bool = False) -> None:
    rng = np.random.default_rng(0)
    lines = ["2024-05-01 10:00:00.000 INFO: Epoch None: loss=1.0"]
    for e in range(n_epochs):
        for s in range(steps):
            vals = {"energy_per_atom": 10.0 ** -(1 + e + s / steps), "forces": rng.uniform(1e-3, 1e-2)}
            if e >= 2:
                vals["esps"] = rng.uniform(1e-4, 1e-3)
            if tensor:
                body = "".join(f"{k}: tensor({v:.6f}, device='cuda:0', grad_fn=<MulBackward0>), "
                               for k, v in vals.items())
            else:
                body = "".join(f"{k}: {v:.6g}, " for k, v in vals.items())
            lines.append(f"2024-05-01 10:{e:02d}:{s:02d}.000 DEBUG: loss breakdown: {body}")
        lines.append(f"2024-05-01 10:{e:02d}:59.000 INFO: Epoch {e}: loss=0.1, RMSE_E_per_atom=1.0 meV")
    lines.append("2024-05-01 11:00:00.000 DEBUG: loss breakdown: energy_per_atom: 1e-9, forces: 1e-4, ")
    path.write_text("\n".join(lines) + "\n")


def test_parse_log_epochs(tmp_path):
    log_path = tmp_path / "train.log"
    _write_log(log_path)
    log = parse_log(log_path)
    assert log.n_steps == 41
    assert list(log.terms) == ["energy_per_atom", "forces", "esps"]
    np.testing.assert_array_equal(log.epoch, [0] * 10 + [1] * 10 + [2] * 10 + [3] * 10 + [4])
    assert np.isnan(log.terms["esps"][:20]).all() and np.isfinite(log.terms["esps"][20:40]).all()
    sel = log.select_epochs(1, 2)
    assert sel.n_steps == 20 and set(sel.epoch) == {1, 2}


@pytest.mark.parametrize("tensor", [False, True])
def test_png_one_line_per_term(tmp_path, tensor):
    log_path = tmp_path / "train.log"
    _write_log(log_path, tensor=tensor)
    out = plot_losses(log_path, min_epoch=1, max_epoch=3, out=tmp_path / "plots" / "losses.png")
    assert out.exists() and out.stat().st_size > 5000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = make_figure(parse_log(log_path).select_epochs(1, 3))
    raw, smooth = fig.axes
    for ax in (raw, smooth):
        assert [line.get_label() for line in ax.get_lines()] == ["energy_per_atom", "forces", "esps"]
        assert ax.get_yscale() == "log"
    # the raw curve is the data; the smoothed one is a running mean of it
    y = raw.get_lines()[1].get_ydata()
    np.testing.assert_allclose(y, parse_log(log_path).select_epochs(1, 3).terms["forces"])


def test_empty_range_is_a_clear_error(tmp_path):
    log_path = tmp_path / "train.log"
    _write_log(log_path)
    with pytest.raises(ValueError, match="no breakdown line in epochs 7..9"):
        plot_losses(log_path, 7, 9, tmp_path / "x.png")
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(ValueError, match="no 'loss breakdown:' lines"):
        plot_losses(empty, out=tmp_path / "y.png")


def test_script(tmp_path):
    log_path = tmp_path / "train.log"
    _write_log(log_path)
    out = tmp_path / "s.png"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_batch_losses.py"), str(log_path),
                        "--min_epoch", "0", "--max_epoch", "1", "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 5000
