#!/usr/bin/env python
"""Plot the per-term loss curves of a training log: `plot_batch_losses.py LOG --min_epoch N --max_epoch M`.

A thin wrapper over ``scfdata.plot_losses.plot_losses`` (also ``scfdata plot-losses``).
"""

from __future__ import annotations

import argparse
import sys

from scfdata.plot_losses import plot_losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="training log with 'loss breakdown:' lines")
    parser.add_argument("--min_epoch", type=int, default=None, help="first epoch to plot")
    parser.add_argument("--max_epoch", type=int, default=None, help="last epoch to plot")
    parser.add_argument("-o", "--out", default="losses.png", help="output PNG (default: losses.png)")
    args = parser.parse_args(argv)
    try:
        out = plot_losses(args.log, args.min_epoch, args.max_epoch, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"plot_batch_losses: error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
