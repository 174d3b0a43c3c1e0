#!/usr/bin/env python3
"""Read-back statistics and the table of `just bench-data` (scripts/bench_data.sh).

    bench_data.py stats google FILE.tfrecord VOCAB   Google's output -> one JSON line
    bench_data.py stats bertline MASK_DIR VOCAB      bertline's train mask shards -> one JSON line
    bench_data.py table ROWS.jsonl                   the two rows (+ a "setup" row) -> table

Both outputs are read back with the same counting, that of `src/stats.rs`: non-pad tokens per
instance (`[CLS]` and `[SEP]` included), the share of instances whose B is random, real
masked positions per instance (weight > 0), and what the model is shown at those positions:
`[MASK]`, the original token ("kept") or another token ("random"; a random draw that happens
to be `[MASK]` or the original counts as those, as the model sees it). Google's TFRecord
needs TensorFlow, bertline's Arrow shards pyarrow: `stats` imports them, `table` needs neither.

A row of ROWS.jsonl: {"generator": name, "instances": n, "wall_s": s, "cpu_s": s,
"rss_kb": peak, "parts": {"pairs": {"wall_s": .., "cpu_s": .., "rss_kb": ..}, ...}
(optional), "stats": the JSON of `stats`}; the "setup" row: {"setup": "one line"}.
"""

import json
import sys

STAT_KEYS = ("instances", "tokens", "random_next", "masked", "shown_mask", "shown_kept",
             "shown_random")


def mask_id(vocab_path):
    with open(vocab_path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.rstrip("\n") == "[MASK]":
                return i
    raise SystemExit(f"error: {vocab_path} has no [MASK] token")


class Counts:
    def __init__(self):
        for k in STAT_KEYS:
            setattr(self, k, 0)

    def add(self, input_ids, attention, positions, labels, weights, random_next, mask):
        self.instances += 1
        self.tokens += sum(1 for m in attention if m)
        self.random_next += 1 if random_next else 0
        for p, label, w in zip(positions, labels, weights):
            if w <= 0:
                continue
            self.masked += 1
            shown = input_ids[p]
            if shown == mask:
                self.shown_mask += 1
            elif shown == label:
                self.shown_kept += 1
            else:
                self.shown_random += 1

    def json(self):
        return {k: getattr(self, k) for k in STAT_KEYS}


def google_stats(path, mask):
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    counts = Counts()
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        f = tf.train.Example.FromString(record).features.feature
        counts.add(
            list(f["input_ids"].int64_list.value),
            list(f["input_mask"].int64_list.value),
            list(f["masked_lm_positions"].int64_list.value),
            list(f["masked_lm_ids"].int64_list.value),
            list(f["masked_lm_weights"].float_list.value),
            f["next_sentence_labels"].int64_list.value[0] != 0,
            mask,
        )
    return counts.json()


def bertline_stats(mask_dir, mask):
    import glob
    import os

    import pyarrow.ipc as ipc

    counts = Counts()
    # the train split, as `bertline-mask stats` counts (the bench holds out nothing)
    shards = sorted(glob.glob(os.path.join(mask_dir, "train-*.arrow")))
    if not shards:
        raise SystemExit(f"error: no train-*.arrow shard in {mask_dir}")
    for shard in shards:
        # Instance shards hold unpadded rows: every token is attended, every listed
        # position is a prediction (src/shard.rs, write_instances).
        cols = ipc.open_file(shard).read_all().to_pydict()
        for ids, positions, labels, nsp in zip(cols["input_ids"], cols["masked_lm_positions"],
                                               cols["masked_lm_ids"], cols["next_sentence_label"]):
            counts.add(ids, [1] * len(ids), positions, labels, [1.0] * len(positions),
                       nsp != 0, mask)
    return counts.json()


def ratio(num, den):
    return num / den if den else 0.0


def derived(stats):
    """The averages and shares of a stats object."""
    n, m = stats["instances"], stats["masked"]
    return {
        "tokens per instance": ("%.2f", ratio(stats["tokens"], n)),
        "random-next fraction": ("%.4f", ratio(stats["random_next"], n)),
        "masked positions / instance": ("%.2f", ratio(m, n)),
        "[MASK] share": ("%.4f", ratio(stats["shown_mask"], m)),
        "random share": ("%.4f", ratio(stats["shown_random"], m)),
        "kept share": ("%.4f", ratio(stats["shown_kept"], m)),
    }


def table(rows):
    """The printed table: one column per generator (bertline first), then bertline / Google
    for the measurements."""
    setup = [r["setup"] for r in rows if "setup" in r]
    gens = [r for r in rows if "generator" in r]
    gens.sort(key=lambda r: r["generator"] != "bertline")
    if len(gens) != 2:
        raise SystemExit(f"error: expected a bertline and a Google row, got {len(gens)}")
    ours, theirs = gens
    width = 30
    out = list(setup)
    out.append(f"{'':<{width}}{ours['generator']:>14}{theirs['generator']:>14}{'ratio':>10}")

    def line(label, a, b, fmt, ratio_fmt=None, r=None):
        cells = f"{label:<{width}}{fmt % a:>14}{fmt % b:>14}"
        if ratio_fmt is not None:
            cells += f"{ratio_fmt % r:>10}"
        return cells.rstrip()

    def rate(row, key):
        return ratio(row["instances"], row[key])

    out.append(line("instances", ours["instances"], theirs["instances"], "%d"))
    out.append(line("wall s", ours["wall_s"], theirs["wall_s"], "%.2f"))
    for name, part in ours.get("parts", {}).items():
        out.append(f"{'  ' + name + ' wall s':<{width}}{part['wall_s']:>14.2f}")
    out.append(line("CPU s (user+sys)", ours["cpu_s"], theirs["cpu_s"], "%.2f"))
    ips = (rate(ours, "wall_s"), rate(theirs, "wall_s"))
    out.append(line("instances/s", *ips, "%.0f", "%.1fx", ratio(ips[0], ips[1])))
    ipc = (rate(ours, "cpu_s"), rate(theirs, "cpu_s"))
    out.append(line("instances/CPU-s", *ipc, "%.0f", "%.1fx", ratio(ipc[0], ipc[1])))
    rss = (ours["rss_kb"] / 1024, theirs["rss_kb"] / 1024)
    out.append(line("peak RSS MB", *rss, "%.0f", "%.2fx", ratio(rss[0], rss[1])))
    for name, part in ours.get("parts", {}).items():
        out.append(f"{'  ' + name + ' peak RSS MB':<{width}}{part['rss_kb'] / 1024:>14.0f}")
    out.append("output statistics, read back from both outputs:")
    a, b = derived(ours["stats"]), derived(theirs["stats"])
    for key in a:
        out.append(line(key, a[key][1], b[key][1], a[key][0]))
    speedup = ratio(ips[0], ips[1])
    out.append(
        "targets: >= 100x Google's instances/s: %s (%.1fx); < 200 MB peak RSS: %s (%.0f MB)"
        % ("met" if speedup >= 100 else "NOT met", speedup,
           "met" if rss[0] < 200 else "NOT met", rss[0]))
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) == 5 and argv[1] == "stats" and argv[2] in ("google", "bertline"):
        mask = mask_id(argv[4])
        stats = (google_stats if argv[2] == "google" else bertline_stats)(argv[3], mask)
        print(json.dumps(stats))
        return 0
    if len(argv) == 3 and argv[1] == "table":
        try:
            with open(argv[2]) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        except OSError as e:
            print(f"error: {argv[2]}: {e.strerror}", file=sys.stderr)
            return 2
        sys.stdout.write(table(rows))
        return 0
    print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
