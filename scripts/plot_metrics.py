#!/usr/bin/env python3
"""Loss curves of `ampipe train --metrics-file` JSON Lines: training loss (thin line) and validation
loss (markers and line) of one or more runs against the iteration, in nats per token.

Needs Matplotlib: on Debian `apt-get install python3-matplotlib` (scripts/setup.sh installs it), which
installs it for /usr/bin/python3; run this script with that Python if the `python3` on PATH lacks it.
"""
import argparse
import json
import os
import sys

from plot_common import BadInput, is_number, save_png

PROG = "plot_metrics.py"


def note(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)


def load_metrics(path):
    """[(iter, loss or None, val_loss or None)] of one metrics file, in file order; BadInput if unusable."""
    if not os.path.exists(path):
        raise BadInput(f"{path}: no such file")
    if os.path.isdir(path):
        raise BadInput(f"{path}: is a directory, not a JSON Lines file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: cannot read: {e}")
    points = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}: line {n}: not JSON ({e.msg})")
        if not isinstance(r, dict):
            raise BadInput(f"{path}: line {n}: not a JSON object")
        if "iter" not in r or ("loss" not in r and "val_loss" not in r):
            raise BadInput(f"{path}: line {n}: not an `ampipe train --metrics-file` row (needs iter and loss "
                           f"or val_loss)")
        if not is_number(r["iter"]):
            raise BadInput(f"{path}: line {n}: iter {r['iter']!r} is not a number")
        vals = []
        for k in ("loss", "val_loss"):
            v = r.get(k)
            if v is not None and not is_number(v):
                raise BadInput(f"{path}: line {n}: {k} {v!r} is not a finite number")
            vals.append(v)
        points.append((r["iter"], vals[0], vals[1]))
    if not points:
        raise BadInput(f"{path}: empty (no JSON Lines)")
    return points


def main():
    ap = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__ + """
Each FILE is the --metrics-file of one `ampipe train` run: one JSON object a line with iter and loss
(and val_loss on the lines of an evaluation; other keys are ignored). One colour per run; its
training loss is drawn thin, its validation loss with markers. Prints the path of the PNG and each
run's last validation loss.

A missing, empty or unreadable FILE, a line that is not JSON or not a JSON object, or a row without
iter and loss (or val_loss) is refused with one line naming the file, exit status 2.""",
        epilog="""example:
  /usr/bin/python3 scripts/plot_metrics.py runs/gpt.jsonl runs/mixtral.jsonl --label GPT --label Mixtral \\
      --out docs/images/loss-gpt-vs-mixtral.png""")
    ap.add_argument("files", nargs="+", metavar="FILE", help="`ampipe train --metrics-file` JSON Lines file(s)")
    ap.add_argument("--label", action="append", default=None, metavar="NAME",
                    help="legend name of a run, once per FILE in the same order (default: each file's name "
                         "without .jsonl)")
    ap.add_argument("--out", metavar="PNG", default=os.path.join("results", "plots", "loss.png"),
                    help="the PNG to write; its directory is made if absent (default: %(default)s)")
    ap.add_argument("--tokens-per-iter", type=int, default=None, metavar="N",
                    help="plot against tokens seen (iteration x N: micro-batch x sequence length x "
                         "data-parallel ranks, e.g. 16 x 128 = 2048 for the default run) instead of iterations")
    ap.add_argument("--title", default=None, help="title of the figure (default: none but the axes)")
    ap.add_argument("--no-train", action="store_true", help="draw the validation loss only")
    ap.add_argument("--ymax", type=float, default=None,
                    help="top of the loss axis, to look closer at the end of a run (default: every loss "
                         "drawn fits)")
    ap.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default: %(default)s)")
    args = ap.parse_args()
    if args.label is not None and len(args.label) != len(args.files):
        ap.error(f"{len(args.label)} --label for {len(args.files)} FILE: give one per file, or none")
    if args.tokens_per_iter is not None and args.tokens_per_iter < 1:
        ap.error(f"--tokens-per-iter {args.tokens_per_iter}: expected a positive integer")
    if args.dpi < 20 or args.dpi > 600:
        ap.error(f"--dpi {args.dpi}: expected 20 to 600")
    if not args.out.lower().endswith(".png"):
        ap.error(f"--out {args.out}: expected a .png path")

    runs = []
    try:
        for i, path in enumerate(args.files):
            label = args.label[i] if args.label else os.path.basename(path).rsplit(".jsonl", 1)[0]
            runs.append((label, path, load_metrics(path)))
    except BadInput as e:
        note(str(e))
        return 2
    for label, path, pts in runs:
        if args.no_train and not any(v is not None for _, _, v in pts):
            note(f"{path}: no val_loss (no evaluation logged): nothing of this run to draw with --no-train")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as e:
        note(f"cannot import matplotlib ({e}): install python3-matplotlib (Debian) and run with /usr/bin/python3")
        return 1

    scale = args.tokens_per_iter or 1
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    shown = []  # every loss drawn
    for i, (label, path, pts) in enumerate(runs):
        c = colors[i % len(colors)]
        train = sorted((it * scale, l) for it, l, _ in pts if l is not None)
        val = sorted((it * scale, v) for it, _, v in pts if v is not None)
        if train and not args.no_train:
            ax.plot([x for x, _ in train], [y for _, y in train], color=c, linewidth=0.9, alpha=0.55,
                    label=f"{label} training")
            shown += [y for _, y in train]
        if val:
            ax.plot([x for x, _ in val], [y for _, y in val], color=c, linewidth=1.8, marker="o", markersize=5,
                    label=f"{label} validation (last {val[-1][1]:.3f})")
            shown += [y for _, y in val]
            at = f"after {val[-1][0]:,} tokens" if args.tokens_per_iter else f"at iteration {val[-1][0]:g}"
            print(f"{label}: last validation loss {val[-1][1]:.4f} {at}")
        elif not args.no_train:
            note(f"{path}: no val_loss (no evaluation logged): training loss only")
    if args.ymax is not None:
        below = [y for y in shown if y < args.ymax]
        if below:
            ax.set_ylim(min(below) - 0.05 * (args.ymax - min(below)), args.ymax)
        else:
            ax.set_ylim(top=args.ymax)
    if args.tokens_per_iter:
        ax.set_xlabel(f"tokens seen (iteration x {args.tokens_per_iter})")
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _: f"{v / 1e6:g}M" if abs(v) >= 1e6 else (f"{v / 1e3:g}k" if abs(v) >= 1e3 else f"{v:g}")))
    else:
        ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="upper right", framealpha=0.9)
    if args.title:
        ax.set_title(args.title, fontsize=11)
    fig.tight_layout()
    try:
        d = os.path.dirname(args.out)
        if d:
            os.makedirs(d, exist_ok=True)
        save_png(fig, args.out, args.dpi)
    except OSError as e:
        note(f"--out {args.out}: {e}")
        return 1
    plt.close(fig)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
