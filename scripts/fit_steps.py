#!/usr/bin/env python3
"""Sizes a profile's pre-training to a time budget: rewrites the `# gpu steps` lines.

In pipeline.toml's `[profiles.NAME.pretrain]` table, every line `KEY = N  # gpu steps` for
num_train_steps, num_warmup_steps, eval_every_steps and save_checkpoints_steps gets the value
that fits SECONDS at STEP_S seconds per step (90% of the benched rate, rounded down to
hundreds; warmup 5%, evaluation and checkpoints every quarter). Used by scripts/gpu_pretrain.sh
and scripts/gpu_claim.sh on the GPU machine. Exits 1 when fewer than 500 steps fit.

Usage: scripts/fit_steps.py PIPELINE_TOML PROFILE STEP_S SECONDS
"""
import re
import sys


def fit(text, profile, steps):
    values = {"num_train_steps": steps, "num_warmup_steps": steps // 20,
              "eval_every_steps": steps // 4, "save_checkpoints_steps": steps // 4}
    header = f"[profiles.{profile}.pretrain]"
    head, found, tail = text.partition(header)
    if not found:
        raise SystemExit(f"fit_steps: no {header} table")
    body, sep, rest = tail.partition("\n[")
    for key, value in values.items():
        body = re.sub(rf"^{key} = \d+( +# gpu steps)$", rf"{key} = {value}\1", body, flags=re.M)
    return head + header + body + sep + rest


def main():
    path, profile, step_s, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    steps = int(seconds * 0.9 / step_s) // 100 * 100
    if steps < 500:
        print(f"fit_steps: only {steps} steps fit in {seconds:.0f} s at {step_s} s/step", file=sys.stderr)
        raise SystemExit(1)
    text = fit(open(path).read(), profile, steps)
    open(path, "w").write(text)
    print(f"fit_steps: {profile}: {steps} steps at {step_s} s/step in {seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
