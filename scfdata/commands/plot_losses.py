"""`scfdata plot-losses LOG [--min-epoch N] [--max-epoch M] [-o OUT.png]`."""


def register(sub) -> None:
    p = sub.add_parser("plot-losses", help="per-term loss curves from a training log's `loss breakdown:` lines")
    p.add_argument("log", help="training log")
    p.add_argument("--min-epoch", type=int, default=None)
    p.add_argument("--max-epoch", type=int, default=None)
    p.add_argument("-o", "--output", default="losses.png", help="output PNG (default losses.png)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..plot_losses import plot_losses

    out = plot_losses(args.log, args.min_epoch, args.max_epoch, args.output)
    print(out)
    return 0
