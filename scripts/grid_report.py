#!/usr/bin/env python3
"""grid_report.py GRID.jsonl [...]: the tables of docs/RESULTS.md from `ampipe bench --json-out` files.

Per model shape: sequential (with its comm share), the best moe-pipe and ampipe (P), ampipe's
speedups, the planner's choice (auto) and how it compares with the best measured schedule; then the
planner's accuracy: |predicted - measured| / measured over every measured case of the file; and,
where the file has per-stage times (stage_ms, predicted_stage_ms), the cost model's error per
compute stage (predicted / measured - 1 of each stage's sum over chunks, each task priced alone).

grid_report.py GRID.jsonl --reprice PRED.jsonl: the accuracy lines again with the predictions of
PRED.jsonl (`ampipe bench --predict-only --json-out` over the same grid, e.g. with a profile
calibrated again), row by row; `auto` rows count only where both files planned the same schedule.
"""
import json
import statistics
import sys
from collections import OrderedDict


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def report(path):
    rows = load(path)
    link = rows[0]["link"] if rows else "?"
    shapes = OrderedDict()
    for r in rows:
        shapes.setdefault((r["seq_length"], r["hidden_size"], r["top_k"]), []).append(r)
    print(f"### {link} ({path})\n")
    print("| N | d | k | sequential ms (comm) | best moe-pipe ms (P) | best ampipe ms (P) | ampipe / seq | ampipe / moe-pipe "
          "| ampipe eff | auto: choice | auto ms | auto / seq | auto / best |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    errors, auto_ok, auto_vs_seq, auto_within = [], 0, [], 0
    for (N, d, k), rs in shapes.items():
        seq = next(r for r in rs if r["schedule"] == "sequential")
        fixed = [r for r in rs if r["schedule"] != "auto"]
        moe = min((r for r in rs if r["schedule"] == "moe-pipe"), key=lambda r: r["time_ms"], default=None)
        am = min((r for r in rs if r["schedule"] == "ampipe"), key=lambda r: r["time_ms"], default=None)
        auto = next((r for r in rs if r["schedule"] == "auto"), None)
        best = min(fixed + ([auto] if auto else []), key=lambda r: r["time_ms"])
        for r in rs:
            if "predicted_ms" in r:
                errors.append((abs(r["predicted_ms"] - r["time_ms"]) / r["time_ms"], r))
        comm = 100.0 * seq["comm_ms"] / seq["time_ms"]
        cells = [str(N), str(d), str(k), f"{seq['time_ms']:.0f} ({comm:.0f}%)"]
        cells.append(f"{moe['time_ms']:.0f} ({moe['pipe_degree']})" if moe else "-")
        cells.append(f"{am['time_ms']:.0f} ({am['pipe_degree']})" if am else "-")
        cells.append(f"{seq['time_ms'] / am['time_ms']:.2f}x" if am else "-")
        cells.append(f"{moe['time_ms'] / am['time_ms']:.2f}x" if am and moe else "-")
        cells.append(f"{am['efficiency']:.2f}" if am else "-")
        if auto:
            choice = auto["planned_schedule"]
            if choice != "sequential":
                choice += f" P={auto['pipe_degree']}"
                if auto.get("chunk_policy") == "balanced":
                    choice += " bal"
                if auto.get("moe_pipe_degree", 0) != auto["pipe_degree"] and choice.startswith("ampipe"):
                    choice += f" moe={auto['moe_pipe_degree']}"
                choice += " " + auto["stage_order"][:5]
            vs_seq = seq["time_ms"] / auto["time_ms"]
            vs_best = best["time_ms"] / auto["time_ms"]
            auto_vs_seq.append(vs_seq)
            auto_within += vs_best >= 1 / 1.05
            cells += [choice, f"{auto['time_ms']:.0f}", f"{vs_seq:.2f}x", f"{vs_best:.2f}x"]
        else:
            cells += ["-"] * 4
        print("| " + " | ".join(cells) + " |")
    print()
    if errors:
        e = sorted(x for x, _ in errors)
        worst = max(errors, key=lambda x: x[0])[1]
        print(f"Planner accuracy over {len(e)} measured cases: median |error| {100 * statistics.median(e):.1f}%, "
              f"90th percentile {100 * e[int(0.9 * (len(e) - 1))]:.1f}%, worst {100 * e[-1]:.1f}% "
              f"({worst['schedule']} P={worst['pipe_degree']} N={worst['seq_length']} d={worst['hidden_size']} "
              f"k={worst['top_k']}: predicted {worst['predicted_ms']:.0f} ms, measured {worst['time_ms']:.0f} ms).")
    if auto_vs_seq:
        n = len(auto_vs_seq)
        print(f"auto within 5% of the best measured schedule in {auto_within} of {n} shapes "
              f"({100.0 * auto_within / n:.0f}%); auto / sequential: min {min(auto_vs_seq):.2f}x, "
              f"median {statistics.median(auto_vs_seq):.2f}x.")
    stage_report(rows)
    print()


COMM_STAGES = {"a2a dispatch", "a2a combine", "a2a combine bwd", "a2a dispatch bwd"}


def stage_report(rows):
    per_stage = OrderedDict()
    for r in rows:
        measured, predicted = r.get("stage_ms"), r.get("predicted_stage_ms")
        if not measured or not predicted:
            continue
        for name, ms in measured.items():
            if name in COMM_STAGES or ms < 1.0 or name not in predicted:
                continue
            per_stage.setdefault(name, []).append(predicted[name] / ms - 1)
    if not per_stage:
        return
    print("Cost model per compute stage (predicted / measured - 1, every case; median [min, max]): " +
          "; ".join(f"{name} {100 * statistics.median(e):+.0f}% [{100 * min(e):+.0f}, {100 * max(e):+.0f}]"
                    for name, e in per_stage.items()) + ".")


KEY = ("seq_length", "hidden_size", "top_k", "schedule", "planned_schedule", "pipe_degree", "stage_order",
       "chunk_policy", "moe_pipe_degree")


def reprice(path, pred_path):
    rows, preds = load(path), load(pred_path)
    if len(rows) != len(preds):
        sys.exit(f"{pred_path} has {len(preds)} rows, {path} has {len(rows)}: not the same grid")
    errors = []
    for r, p in zip(rows, preds):
        if r["schedule"] != "auto" and any(r[k] != p[k] for k in KEY):
            sys.exit(f"row mismatch: {[r[k] for k in KEY]} against {[p[k] for k in KEY]}")
        if r["schedule"] == "auto" and any(r[k] != p[k] for k in KEY):
            continue  # the planner chose differently with the other profile
        errors.append((abs(p["predicted_ms"] - r["time_ms"]) / r["time_ms"], r, p))
    e = sorted(x for x, _, _ in errors)
    _, worst, wp = max(errors, key=lambda x: x[0])
    print(f"Re-priced with profile {preds[0].get('profile', '?')} ({pred_path}): over {len(e)} measured cases: "
          f"median |error| {100 * statistics.median(e):.1f}%, 90th percentile {100 * e[int(0.9 * (len(e) - 1))]:.1f}%, "
          f"worst {100 * e[-1]:.1f}% ({worst['schedule']} P={worst['pipe_degree']} N={worst['seq_length']} "
          f"d={worst['hidden_size']} k={worst['top_k']}: predicted {wp['predicted_ms']:.0f} ms, measured "
          f"{worst['time_ms']:.0f} ms).")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    if "--reprice" in args:
        i = args.index("--reprice")
        reprice(args[0], args[i + 1])
        sys.exit(0)
    for p in args:
        report(p)
