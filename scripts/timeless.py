#!/usr/bin/env python3
"""A stage's output files as sha256 digests, with wall-clock measurements left out.

`just chaos` (scripts/chaos.sh) compares a killed-and-rerun project with an uninterrupted one
file by file. Most outputs are byte-identical run to run (vocabulary, shards, weights,
optimizer state, submissions); a few record how long things took next to the results. Those
are digested after removing exactly the wall-clock parts, so a different timing is not a
mismatch while a different loss, score, prediction or hash still is:

- `*.json` / `*.jsonl` (fine-tuning results and predictions, `metrics.jsonl`, `state.json`):
  parsed, the keys in WALL_CLOCK_KEYS removed at every depth (the list of
  tests/determinism.rs), then re-serialized with sorted keys.
- `report/report.md` / `report/report.html`: the report renders the manifest. The sections
  "Machine and wall times" and "Run history" are dropped (the history lists every recorded
  stage run, so a crash campaign's is longer by design), and so is the HTML's throughput
  chart (tokens per second along training). In every other line that holds a
  wall-clock value (a UTC time stamp, a duration, a throughput, a key naming seconds or a
  rate), names a file with timings (`metrics.jsonl`, a fine-tuning `.json`) or holds
  pre-training's `resumed_from` (the step a rerun resumed from: how the run went, not what it
  computed), every duration with its unit, number and hex hash is masked: the line's words
  are compared, not its figures. All other lines are compared exactly.
- Everything else: the raw bytes.

usage: timeless.py DIR STAGE   prints "sha256  path" for every file under DIR/STAGE, sorted
"""

import hashlib
import json
import os
import re
import sys

# Keep in step with WALL_CLOCK_KEYS in tests/determinism.rs.
WALL_CLOCK_KEYS = {
    "seconds",
    "elapsed_s",
    "train_seconds",
    "examples_per_s",
    "eval_examples_per_s",
    "tokens_per_s",
}

DROPPED_SECTIONS = ("Machine and wall times", "Run history")
DROPPED_FIGURES = ("Throughput",)

TIME_STAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")  # 2026-11-30 10:06:42
# A duration with its unit (124 ms, 1.8 s): the report picks the unit by the size, so a run
# that took under a second where the other took more differs in the unit too.
DURATION = re.compile(r"\b\d+(\.\d+)?\s?(ms|s|min|h)\b")
WALL_CLOCK_IN_LINE = re.compile(
    TIME_STAMP.pattern
    + "|" + DURATION.pattern
    + r"|/s\b|_per_s\b|per second|seconds|wall time"  # a throughput or a key naming one
    r"|metrics\.jsonl|finetune/[^ <|]*\.json|results\.json|seed\d+\.json"
    r"|resumed_from"
)
# A hex hash, or a number that is not part of a word (the 2 of SST-2 stays).
FIGURE = re.compile(r"\b[0-9a-f]{12,64}\b|(?<![\w-])[-+]?\d+(\.\d+)?(e[-+]?\d+)?[kM]?")


def without_wall_clock(value):
    if isinstance(value, dict):
        return {k: without_wall_clock(v) for k, v in value.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(value, list):
        return [without_wall_clock(v) for v in value]
    return value


def timeless_json(data: bytes) -> bytes:
    text = data.decode("utf-8")
    try:
        values = [json.loads(text)]
    except json.JSONDecodeError:
        values = [json.loads(line) for line in text.splitlines() if line.strip()]
    return "\n".join(
        json.dumps(without_wall_clock(v), sort_keys=True) for v in values
    ).encode()


def heading(line: str):
    """The title of a level-2 heading in Markdown or HTML, else None."""
    m = re.match(r"\s*(?:## (.*)|<h2[^>]*>(.*)</h2>)\s*$", line)
    if not m:
        return None
    return (m.group(1) or m.group(2)).replace("&#39;", "'")


def timeless_report(data: bytes) -> bytes:
    out = []
    dropping = False
    in_figure = False
    for line in data.decode("utf-8").splitlines():
        title = heading(line)
        if title is not None:
            dropping = title in DROPPED_SECTIONS
        figure = re.match(r'\s*<figure[^>]*aria-label="([^"]*)"', line)
        if figure and figure.group(1) in DROPPED_FIGURES:
            in_figure = True
        if in_figure:
            in_figure = "</figure>" not in line
            continue
        if dropping:
            continue
        if WALL_CLOCK_IN_LINE.search(line):
            line = FIGURE.sub("#", DURATION.sub("#", TIME_STAMP.sub("#", line)))
        out.append(line)
    return "\n".join(out).encode()


def digest(rel: str, data: bytes) -> str:
    if rel.endswith(".json") or rel.endswith(".jsonl"):
        data = timeless_json(data)
    elif rel.startswith("report/") and (rel.endswith(".md") or rel.endswith(".html")):
        data = timeless_report(data)
    return hashlib.sha256(data).hexdigest()


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    root, stage = argv[1], argv[2]
    rows = []
    for dirpath, _, files in os.walk(os.path.join(root, stage)):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            with open(path, "rb") as f:
                rows.append((rel, digest(rel, f.read())))
    for rel, h in sorted(rows):
        print(f"{h}  {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
