#!/usr/bin/env python3
"""Pictures of `ampipe bench --json-out` files: speedup over sequential across N, and the planner's
prediction against the measurement.

Needs Matplotlib: on Debian `apt-get install python3-matplotlib` (scripts/setup.sh installs it), which
installs it for /usr/bin/python3; run this script with that Python if the `python3` on PATH lacks it.
"""
import argparse
import json
import math
import os
import statistics
import sys
from collections import OrderedDict

from plot_common import BadInput, is_number, save_png

PROG = "plot_bench.py"

# What a row must have to count as a schedule record of `ampipe bench`.
REQUIRED = ("seq_length", "hidden_size", "top_k", "link", "schedule", "pipe_degree", "time_ms")
# The fields that describe the block being measured (not how it is scheduled): rows that agree on
# all of them are one shape, and their speedups are over that shape's `sequential` row.
SHAPE = ("family", "link", "seq_length", "hidden_size", "top_k", "heads", "num_query_groups", "ffn_hidden_size",
         "num_experts", "swiglu", "capacity_factor", "batch", "ranks", "threads")
# The fields a re-priced row must share with the measured one (as scripts/grid_report.py --reprice).
REPRICE_KEY = ("seq_length", "hidden_size", "top_k", "schedule", "planned_schedule", "pipe_degree", "stage_order",
               "chunk_policy", "moe_pipe_degree")
SCHEDULE_COLORS = OrderedDict([("sequential", "tab:gray"), ("moe-pipe", "tab:blue"), ("ampipe", "tab:red"),
                               ("auto", "tab:green")])


def note(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)


def read_jsonl(path):
    """The JSON objects of a JSON Lines file, each with its line number; BadInput if unreadable."""
    if not os.path.exists(path):
        raise BadInput(f"{path}: no such file")
    if os.path.isdir(path):
        raise BadInput(f"{path}: is a directory, not a JSON Lines file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: cannot read: {e}")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}: line {n}: not JSON ({e.msg})")
        if not isinstance(row, dict):
            raise BadInput(f"{path}: line {n}: not a JSON object")
        rows.append((n, row))
    if not rows:
        raise BadInput(f"{path}: empty (no JSON Lines)")
    return rows


def load_bench(path):
    """The rows of one bench file, family defaulted to "gpt"; (measured rows, rows lacking a time)."""
    rows = []
    unmeasured = 0
    for n, r in read_jsonl(path):
        if r.get("bench", "schedule") != "schedule" and "schedule" not in r:
            raise BadInput(f"{path}: line {n}: a '{r['bench']}' benchmark row, not a schedule record "
                           f"(needs {', '.join(REQUIRED)})")
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise BadInput(f"{path}: line {n}: not an `ampipe bench` schedule record (no {', '.join(missing)})")
        if r["time_ms"] is None:
            unmeasured += 1
            continue
        if not is_number(r["time_ms"]) or r["time_ms"] <= 0:
            raise BadInput(f"{path}: line {n}: time_ms {r['time_ms']!r} is not a positive number")
        for k in ("seq_length", "hidden_size", "top_k", "pipe_degree"):
            if not is_number(r[k]):
                raise BadInput(f"{path}: line {n}: {k} {r[k]!r} is not a number")
        if "predicted_ms" in r and r["predicted_ms"] is not None and not is_number(r["predicted_ms"]):
            raise BadInput(f"{path}: line {n}: predicted_ms {r['predicted_ms']!r} is not a number")
        r = dict(r)
        r.setdefault("family", "gpt")
        r["_line"] = n
        rows.append(r)
    if not rows:
        raise BadInput(f"{path}: no measured rows (time_ms is null in all {unmeasured}: a --predict-only file? "
                       f"give it with --reprice)")
    return rows, unmeasured


def load_reprice(path):
    rows = []
    for n, r in read_jsonl(path):
        missing = [k for k in REPRICE_KEY + ("predicted_ms",) if k not in r]
        if missing:
            raise BadInput(f"{path}: line {n}: not an `ampipe bench` row with a prediction (no {', '.join(missing)})")
        if not is_number(r["predicted_ms"]):
            raise BadInput(f"{path}: line {n}: predicted_ms {r['predicted_ms']!r} is not a number")
        rows.append(r)
    return rows


def stem(path):
    base = os.path.basename(path)
    for ext in (".jsonl", ".json", ".ndjson"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def shape_of(r):
    return tuple(r.get(k) for k in SHAPE)


# --- speedup over sequential across N ---


def speedups(rows):
    """{panel key: {series: [(N, speedup, best row)]}} and the notes on shapes without a `sequential` row."""
    shapes = OrderedDict()
    for r in rows:
        shapes.setdefault(shape_of(r), []).append(r)
    panels = OrderedDict()
    skipped = []
    for shape, rs in shapes.items():
        seqs = [r for r in rs if r["schedule"] == "sequential"]
        r0 = rs[0]
        if not seqs:
            skipped.append(f"N={r0['seq_length']} d={r0['hidden_size']} k={r0['top_k']}")
            continue
        base = min(r["time_ms"] for r in seqs)
        panel = tuple(None if k == "seq_length" else v for k, v in zip(SHAPE, shape))
        series = panels.setdefault(panel, OrderedDict())
        for name in ("moe-pipe", "ampipe", "auto"):
            cands = [r for r in rs if r["schedule"] == name]
            if cands:
                best = min(cands, key=lambda r: r["time_ms"])
                series.setdefault(name, []).append((r0["seq_length"], base / best["time_ms"], best))
    return panels, skipped


def num_key(v):
    """Sorts numbers as numbers and everything else as text, None first."""
    return (0, v, "") if is_number(v) else (1, 0, str(v))


def panel_titles(keys):
    """A title per panel: d, k, the family where not gpt, and any other field that two panels of the
    same d, k and family differ in."""
    titles = {}
    base = {}
    for p in keys:
        f = dict(zip(SHAPE, p))
        base.setdefault((f["family"], f["hidden_size"], f["top_k"]), []).append(p)
    for (family, d, k), ps in base.items():
        extra = [i for i, key in enumerate(SHAPE) if key not in ("seq_length", "link")
                 and len({q[i] for q in ps}) > 1]
        for p in ps:
            parts = [f"d={d}", f"k={k}"] + ([str(family)] if family != "gpt" else [])
            parts += [f"{SHAPE[i]}={p[i]}" for i in extra]
            titles[p] = "  ".join(parts)
    return titles


def point_label(name, r):
    if name == "auto":
        plan = r.get("planned_schedule", "?")
        return plan if plan == "sequential" else f"{plan} P={r['pipe_degree']}"
    return f"P={r['pipe_degree']}"


SERIES = OrderedDict([
    ("moe-pipe", dict(color="tab:blue", marker="s", label="moe-pipe (best P)")),
    ("ampipe", dict(color="tab:red", marker="o", label="ampipe (best P)")),
    ("auto", dict(color="tab:green", marker="^", linestyle=":", label="auto (planner's choice)")),
])


def plot_speedup(plt, path, link, rows, out, dpi, multi_link):
    panels, skipped = speedups(rows)
    for s in skipped:
        note(f"{path}: {link}: no sequential row for {s}: left out of the speedup plot")
    if not panels:
        note(f"{path}: {link}: no shape has a sequential row: no speedup plot")
        return None
    keys = sorted(panels, key=lambda p: tuple(num_key(x) for x in p))
    titles = panel_titles(keys)
    ks = sorted({dict(zip(SHAPE, p))["top_k"] for p in keys}, key=num_key)
    rows_of = OrderedDict()  # one panel row per (everything but k), one column per k
    for p in keys:
        f = dict(zip(SHAPE, p))
        rows_of.setdefault(tuple(v for k, v in f.items() if k != "top_k"), {})[f["top_k"]] = p
    nrows, ncols = len(rows_of), len(ks)
    all_n = sorted({n for s in panels.values() for pts in s.values() for n, _, _ in pts})
    bars = len(all_n) == 1  # one N: a line says nothing, so bars with their values
    values = [sp for s in panels.values() for pts in s.values() for _, sp, _ in pts]
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.9 * ncols + 0.5, 6.4), 2.7 * nrows + 0.9), squeeze=False,
                             sharex=not bars, sharey=True)
    for i, by_k in enumerate(rows_of.values()):
        for j, k in enumerate(ks):
            ax = axes[i][j]
            p = by_k.get(k)
            if p is None:
                ax.set_visible(False)
                continue
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="sequential (1.0)")
            if bars:
                names = [n for n in SERIES if n in panels[p]]
                for x, name in enumerate(names):
                    _, y, r = panels[p][name][0]
                    st = SERIES[name]
                    ax.bar(x, y, width=0.6, color=st["color"], alpha=0.85, label=st["label"])
                    ax.annotate(f"{y:.2f}x\n{point_label(name, r)}", (x, y), textcoords="offset points",
                                xytext=(0, 3), ha="center", va="bottom", fontsize=8.5)
                ax.set_xticks(range(len(names)))
                ax.set_xticklabels(names)
                half = max(len(names), 3) / 2  # bars as wide for one schedule as for three
                ax.set_xlim((len(names) - 1) / 2 - half, (len(names) - 1) / 2 + half)
                if i == nrows - 1:
                    ax.set_xlabel(f"schedule (N = {all_n[0]})")
                ax.grid(True, axis="y", alpha=0.3)
            else:
                for name, pts in panels[p].items():
                    pts = sorted(pts, key=lambda t: t[0])
                    ax.plot([t[0] for t in pts], [t[1] for t in pts], linewidth=1.6, markersize=5, **SERIES[name])
                ax.set_xscale("log", base=2)
                ax.set_xticks(all_n)
                ax.set_xticklabels([str(n) for n in all_n])
                ax.minorticks_off()
                ax.grid(True, alpha=0.3)
                if i == nrows - 1:
                    ax.set_xlabel("sequence length N (tokens)")
            ax.set_title(titles[p], fontsize=10)
            if j == 0:
                ax.set_ylabel("speedup over sequential")
    if bars:
        axes[0][0].set_ylim(0, max(values + [1.0]) * 1.32)
    else:
        lo, hi = min(values + [1.0]), max(values + [1.0])
        pad = 0.08 * (hi - lo) if hi > lo else 0.1
        axes[0][0].set_ylim(lo - pad, hi + pad)
    seen = OrderedDict()
    for a in axes.flat:
        for h, l in zip(*a.get_legend_handles_labels()):
            seen.setdefault(l, h)
    ncol = len(seen) if ncols > 1 else 2  # one panel: the legend on two lines
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    fam = sorted({str(dict(zip(SHAPE, p))["family"]) for p in keys})
    fig.suptitle(f"Speedup over sequential, link {link} ({', '.join(fam)}; {os.path.basename(path)})", fontsize=11)
    legend_in = 0.2 + 0.25 * math.ceil(len(seen) / ncol)
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    name = f"speedup-{stem(path)}" + (f"-{link}" if multi_link else "") + ".png"
    dest = os.path.join(out, name)
    save_png(fig, dest, dpi)
    plt.close(fig)
    return dest


# --- the planner's prediction against the measurement ---


def plot_planner(plt, path, link, pairs, out, dpi, multi_link, suffix="", source=None):
    """pairs: [(measured row, predicted ms)]."""
    errs = [abs(p - r["time_ms"]) / r["time_ms"] for r, p in pairs]
    med = statistics.median(errs)
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    lo = min(min(r["time_ms"], p) for r, p in pairs) / 1.25
    hi = max(max(r["time_ms"], p) for r, p in pairs) * 1.25
    xs = [lo, hi]
    ax.fill_between(xs, [x * 0.85 for x in xs], [x * 1.15 for x in xs], color="0.85", alpha=0.6,
                    label="within 15%", linewidth=0)
    ax.plot(xs, xs, color="black", linewidth=1, label="predicted = measured")
    names = list(SCHEDULE_COLORS) + sorted({r["schedule"] for r, _ in pairs} - set(SCHEDULE_COLORS))
    for name in names:
        pts = [(r["time_ms"], p) for r, p in pairs if r["schedule"] == name]
        if not pts:
            continue
        inside = sum(abs(p - m) / m <= 0.15 for m, p in pts)
        ax.scatter([m for m, _ in pts], [p for _, p in pts], s=22, alpha=0.8, color=SCHEDULE_COLORS.get(name),
                   edgecolors="none", label=f"{name} ({inside}/{len(pts)} within 15%)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    decades = math.log10(hi / lo)
    if decades > 1.5:
        subs = (1.0, 2.0, 5.0)
    elif decades > 0.6:
        subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    else:
        subs = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 10 else f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_aspect("equal")
    ax.grid(True, which="both", alpha=0.25)
    ax.set_xlabel("measured time_ms (one block, forward + backward)")
    ax.set_ylabel("predicted_ms (planner)")
    src = os.path.basename(path) + (f", predicted by {os.path.basename(source)}" if source else "")
    ax.set_title(f"Planner vs measured, link {link}: median |error| {100 * med:.1f}%\n"
                 f"({len(pairs)} rows of {src})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8.5, framealpha=0.9)
    fig.tight_layout()
    name = f"planner-{stem(path)}" + (f"-{link}" if multi_link else "") + suffix + ".png"
    dest = os.path.join(out, name)
    save_png(fig, dest, dpi)
    plt.close(fig)
    return dest, med


def reprice_pairs(path, rows_all, pred_path, preds):
    """Row by row, as scripts/grid_report.py --reprice: `auto` rows count only where both planned alike."""
    if len(rows_all) != len(preds):
        raise BadInput(f"{pred_path}: {len(preds)} rows, {path} has {len(rows_all)}: not the same grid")
    pairs, dropped = [], 0
    for r, p in zip(rows_all, preds):
        same = all(r.get(k) == p.get(k) for k in REPRICE_KEY)
        if not same and r.get("schedule") != "auto":
            raise BadInput(f"{pred_path}: row {[p.get(k) for k in REPRICE_KEY]} does not match {path} line "
                           f"{r.get('_line')} {[r.get(k) for k in REPRICE_KEY]}: not the same grid")
        if not same:
            dropped += 1
            continue
        if r.get("time_ms") is not None:
            pairs.append((r, p["predicted_ms"]))
    return pairs, dropped


def main():
    ap = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__ + """
For every FILE and every link rate in it, writes into DIR:
  speedup-STEM.png   speedup over `sequential` across N: one panel per model shape (d, k and the family
                     where not gpt), x = N on a log2 axis, y = sequential's time_ms / the schedule's, with
                     sequential the row of the same shape in the same file; lines for moe-pipe and ampipe
                     (each the fastest row over P, stage order and chunk policy at that N) and auto (the
                     planner's choice); a dashed line at 1.0. Where the file has a single N, bars
                     instead of lines, each labelled with its speedup and P.
  planner-STEM.png   predicted_ms against time_ms (log-log), coloured by schedule, with the y = x diagonal
                     and a +/-15% band; the median |predicted - measured| / measured in the title. Left out
                     (with a note) where the file has no predicted_ms.
STEM is the file's name without .jsonl, plus -LINK where a file holds several link rates.
Rows with time_ms null (`ampipe bench --predict-only`) are not measurements and are left out.
Prints the path of each PNG written (and the planner's median error); notes go to stderr.

A missing, empty or unreadable FILE, a line that is not JSON or not a JSON object, or a file without schedule
records of `ampipe bench` (keys seq_length, hidden_size, top_k, link, schedule, pipe_degree, time_ms)
is refused with one line naming it, exit status 2.""",
        epilog="""examples:
  /usr/bin/python3 scripts/plot_bench.py results/grid-200mbit.jsonl results/grid-unshaped.jsonl
  /usr/bin/python3 scripts/plot_bench.py results/grid-200mbit.jsonl \\
      --reprice results/grid-200mbit.repriced.jsonl --out docs/images""")
    ap.add_argument("files", nargs="+", metavar="FILE", help="`ampipe bench --json-out` JSON Lines file(s)")
    ap.add_argument("--out", metavar="DIR", default=os.path.join("results", "plots"),
                    help="directory for the PNGs, made if absent (default: %(default)s)")
    ap.add_argument("--reprice", metavar="PRED", default=None,
                    help="also plot planner-STEM-repriced.png: the measured rows of the one FILE against the "
                         "predicted_ms of PRED (`ampipe bench --predict-only --json-out` over the same grid, "
                         "e.g. with a profile calibrated again), matched row by row as "
                         "scripts/grid_report.py --reprice does (auto rows only where both planned alike)")
    ap.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs (default: %(default)s)")
    ap.add_argument("--no-speedup", action="store_true", help="do not write the speedup plots")
    ap.add_argument("--no-planner", action="store_true", help="do not write the planner plots")
    args = ap.parse_args()
    if args.dpi < 20 or args.dpi > 600:
        ap.error(f"--dpi {args.dpi}: expected 20 to 600")
    if args.reprice and len(args.files) != 1:
        ap.error("--reprice takes exactly one measured FILE")

    try:
        loaded = []
        for path in args.files:
            rows, unmeasured = load_bench(path)
            if unmeasured:
                note(f"{path}: {unmeasured} rows with time_ms null (not measured) left out")
            loaded.append((path, rows))
        repriced = None
        if args.reprice:
            preds = load_reprice(args.reprice)
            all_rows = [dict(r, _line=n) for n, r in read_jsonl(args.files[0])]
            repriced = reprice_pairs(args.files[0], all_rows, args.reprice, preds)
    except BadInput as e:
        note(str(e))
        return 2

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        note(f"cannot import matplotlib ({e}): install python3-matplotlib (Debian) and run with /usr/bin/python3")
        return 1

    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        note(f"--out {args.out}: {e}")
        return 1
    for path, rows in loaded:
        links = OrderedDict()
        for r in rows:
            links.setdefault(r["link"], []).append(r)
        multi = len(links) > 1
        for link, rs in links.items():
            if not args.no_speedup:
                dest = plot_speedup(plt, path, link, rs, args.out, args.dpi, multi)
                if dest:
                    print(dest)
            if not args.no_planner:
                pairs = [(r, r["predicted_ms"]) for r in rs if is_number(r.get("predicted_ms"))]
                if not pairs:
                    note(f"{path}: {link}: no predicted_ms: no planner plot")
                else:
                    if len(pairs) < len(rs):
                        note(f"{path}: {link}: {len(rs) - len(pairs)} rows without predicted_ms left out of the "
                             f"planner plot")
                    dest, med = plot_planner(plt, path, link, pairs, args.out, args.dpi, multi)
                    print(f"{dest}: median |error| {100 * med:.1f}% over {len(pairs)} rows")
    if repriced is not None:
        pairs, dropped = repriced
        path = args.files[0]
        if dropped:
            note(f"{args.reprice}: {dropped} auto rows planned differently from {path}: left out")
        by_link = OrderedDict()
        for r, p in pairs:
            by_link.setdefault(r["link"], []).append((r, p))
        for link, ps in by_link.items():
            dest, med = plot_planner(plt, path, link, ps, args.out, args.dpi, len(by_link) > 1,
                                     suffix="-repriced", source=args.reprice)
            print(f"{dest}: median |error| {100 * med:.1f}% over {len(ps)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
