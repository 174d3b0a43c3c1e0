#!/usr/bin/env python3
"""The tables of `just bench-rss` (scripts/bench_rss.sh): is the peak RSS of every data stage
flat as the corpus grows, whether the text is one file or many?

    bench_rss.py table ROWS.jsonl    the measured rows (+ "setup" rows) -> tables and verdicts

A row of ROWS.jsonl: {"size_mb": nominal size, "layout": "one file" | "many files",
"stage": "vocab" | "pairs" | "mask", "input_bytes": text read, "wall_s": s, "cpu_s": s,
"rss_kb": peak}; a "setup" row: {"setup": "one line"}, printed first as it is.

Printed: peak RSS in MB (1 MB = 1024 kB, as /usr/bin/time counts) per stage and layout, one
column per size; text throughput per stage and size (MB of 10^6 bytes of text per wall second,
both layouts together); then one verdict per stage: "flat" when its peak RSS is at most 300 MB
at every size and layout (the issue's target at the default settings) and, in each layout, its
peak at the largest size is at most 1.25x its peak at the size before (by default 10x less
text: the peak has stopped growing with the corpus); else "NOT flat" with the numbers. Below
one block of text (4 MiB) per thread a stage holds less than its bound, so the smallest size
may sit lower: the verdict asks that growth stops, not that a 7 MB corpus use as much memory
as a 500 MB one. A stage measured more than once at the same size and layout (bench_rss.sh's
REPEATS) shows the median of its peaks, and its growth is the ratio of those medians: a
peak of pairs varies by up to a quarter from run to run with which blocks happen to be in
flight together, at any size, and one high or low run should not decide the verdict. The
300 MB target holds every run: the "peak RSS" range of a verdict is over all of them.
"""

import json
import statistics
import sys

MAX_GROWTH = 1.25
MAX_MB = 300
STAGES = ("vocab", "pairs", "mask")
KEYS = ("size_mb", "layout", "stage", "input_bytes", "wall_s", "rss_kb")


class BadRows(Exception):
    pass


def read_rows(path):
    """The setup lines and the measurement rows of ROWS.jsonl; BadRows on anything else."""
    setup, rows = [], []
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except OSError as e:
        raise BadRows(e.strerror)
    except UnicodeDecodeError:
        raise BadRows("not UTF-8 text")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadRows(f"line {n} is not JSON ({e.msg})")
        if not isinstance(row, dict):
            raise BadRows(f"line {n} is not a JSON object")
        if "setup" in row:
            setup.append(str(row["setup"]))
            continue
        missing = [k for k in KEYS if k not in row]
        if missing:
            raise BadRows(f"line {n} lacks {', '.join(missing)}")
        if not all(isinstance(row[k], (int, float)) for k in KEYS if k not in ("layout", "stage")):
            raise BadRows(f"line {n} has a non-number in {', '.join(KEYS)}")
        rows.append(row)
    if not rows:
        raise BadRows("no measurement rows")
    return setup, rows


def in_order(values, known=()):
    """The distinct values, the known ones first in their order, then as they come."""
    seen = [v for v in known if v in values]
    return seen + [v for v in dict.fromkeys(values) if v not in seen]


def table(setup, rows):
    """The printed tables and verdicts, after the setup lines."""
    sizes = sorted({r["size_mb"] for r in rows})
    stages = in_order([r["stage"] for r in rows], STAGES)
    layouts = in_order([r["layout"] for r in rows], ("one file", "many files"))
    peaks, text, wall = {}, {}, {}
    for r in rows:
        key = (r["stage"], r["layout"], r["size_mb"])
        peaks.setdefault(key, []).append(r["rss_kb"] / 1024)
        both_layouts = (r["stage"], r["size_mb"])
        text[both_layouts] = text.get(both_layouts, 0) + r["input_bytes"]
        wall[both_layouts] = wall.get(both_layouts, 0) + r["wall_s"]

    rss = {key: statistics.median(values) for key, values in peaks.items()}
    repeats = max(len(values) for values in peaks.values())
    width = 24
    head = "".join(f"{f'{s:g} MB':>10}" for s in sizes)
    out = list(setup)
    if repeats > 1:
        out.append(f"peak RSS: the median of up to {repeats} runs of each stage")
    out.append(f"{'peak RSS MB':<{width}}{head}")
    for stage in stages:
        for layout in layouts:
            cells = ("-" if c is None else "%.0f" % c
                     for c in (rss.get((stage, layout, s)) for s in sizes))
            out.append(f"{stage:<7}{layout:<{width - 7}}" + "".join(f"{c:>10}" for c in cells))
    out.append(f"{'text MB per wall s':<{width}}{head}")

    def rate(stage, size):
        if (stage, size) not in text:
            return "-"
        if not wall[stage, size]:
            return "inf"
        return "%.2f" % (text[stage, size] / 1e6 / wall[stage, size])

    for stage in stages:
        out.append(f"{stage:<{width}}" + "".join(f"{rate(stage, s):>10}" for s in sizes))
    for stage in stages:
        every = [v for (st, _, _), values in peaks.items() if st == stage for v in values]
        low, high = min(every), max(every)
        numbers = f"peak RSS {low:.0f}..{high:.0f} MB"
        growths = []
        if len(sizes) > 1:
            prev, last = sizes[-2], sizes[-1]
            for layout in layouts:
                a, b = rss.get((stage, layout, prev)), rss.get((stage, layout, last))
                if a and b:
                    growths.append((layout, b / a))
            steps = ", ".join(f"x{g:.2f} {layout}" for layout, g in growths)
            numbers += f"; {prev:g} -> {last:g} MB of text: {steps}"
        if high <= MAX_MB and all(g <= MAX_GROWTH for _, g in growths):
            out.append(f"{stage}: flat ({numbers})")
        else:
            out.append(f"{stage}: NOT flat ({numbers}; target: at most {MAX_MB} MB, and at "
                       f"most x{MAX_GROWTH} from the second largest size to the largest)")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) == 3 and argv[1] == "table":
        try:
            setup, rows = read_rows(argv[2])
        except BadRows as e:
            print(f"error: {argv[2]}: {e}", file=sys.stderr)
            return 2
        sys.stdout.write(table(setup, rows))
        return 0
    print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
