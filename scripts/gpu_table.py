#!/usr/bin/env python3
"""The table of scripts/gpu_check.sh: reads its JSON lines, prints one table with the targets.

    python3 scripts/gpu_table.py gpu_check.jsonl

Rows it understands (one JSON object per line; anything else is listed as unknown):
  {"check": "device", "name": ..., "bf16_tflops": measured bf16 matmul rate, "datasheet_bf16_tflops": ...}
  {"check": "one_step", "precision": "f32"|"bf16", "rel_diff": ..., "loss_gpu": ..., "loss_cpu": ...}
  {"check": "curves", "final_f32": ..., "final_bf16": ...}
  {"check": "cuda_kernels", "tests_passed": n, "tests_failed": n}
  {"check": "throughput", "impl": "bertline", "model": "tiny"|"mini"|"base", "precision": ...,
   "batch": ..., "ms_per_step": ..., "tokens_per_s": ..., "flops_per_step": ...}
  the JSON of scripts/bench_pretrain_torch.py (PyTorch rows: "framework": "pytorch")
  any of the above with "owed": "why" (not built yet) or "failed": exit status instead of results;
  {"check": "torch_SIZE_DTYPE", "failed": status} is a PyTorch run that failed.
"""

import json
import sys

MODELS = {"tiny": "BERT-Tiny", "mini": "BERT-mini", "base": "BERT-Base"}
ONE_STEP_TOLERANCE = {"f32": 1e-4, "bf16": 1e-2}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def normalise(row):
    """PyTorch's benchmark JSON, or gpu_check.sh's failure line for it (`torch_SIZE_DTYPE`), as a
    throughput row."""
    check = row.get("check", "")
    if check.startswith("torch_") and check.count("_") == 2:
        _, size, dtype = check.split("_")
        return {"check": "throughput", "impl": "pytorch", "model": size, "precision": dtype,
                "batch": "", **{k: v for k, v in row.items() if k != "check"}}
    if row.get("framework") != "pytorch":
        return row
    t = row.get("train_step", {})
    return {
        "check": "throughput",
        "impl": "pytorch",
        "model": row["model"]["size"],
        "precision": row["dtype"],
        "batch": row["batch"],
        "ms_per_step": t["median_s"] * 1e3,
        "tokens_per_s": t["tokens_per_s"],
        "flops_per_step": t.get("flops_per_step"),
    }


def verdict(ok):
    return "pass" if ok else "FAIL"


def status(row):
    """`owed: why` or `failed (exit N)` for a row without results, else None."""
    if "owed" in row:
        return f"owed: {row['owed']}"
    if "failed" in row:
        return f"failed (exit {row['failed']})"
    return None


def checks_table(rows):
    lines = []
    for row in rows:
        check = row.get("check")
        if check == "one_step":
            precision = row["precision"]
            tol = ONE_STEP_TOLERANCE[precision]
            name = f"one step GPU vs CPU, dropout, {precision}"
            target = f"rel diff <= {tol:g}"
            text = status(row)
            if text is None:
                text = (f"rel diff {row['rel_diff']:.1e} (loss gpu {row['loss_gpu']:.6f}, "
                        f"cpu {row['loss_cpu']:.6f})")
                result = verdict(row["rel_diff"] <= tol)
            else:
                result = "owed" if "owed" in row else "FAIL"
            lines.append((name, text, target, result))
        elif check == "curves":
            name = "300 steps bf16 vs f32, final loss"
            target = "within 2%"
            text = status(row)
            if text is None:
                rel = abs(row["final_bf16"] - row["final_f32"]) / abs(row["final_f32"])
                text = f"bf16 {row['final_bf16']:.4f} vs f32 {row['final_f32']:.4f} ({100 * rel:.2f}%)"
                result = verdict(rel <= 0.02)
            else:
                result = "owed" if "owed" in row else "FAIL"
            lines.append((name, text, target, result))
        elif check == "cuda_kernels":
            text = status(row)
            if text is None:
                text = f"{row['tests_passed']} passed, {row['tests_failed']} failed"
                result = verdict(row["tests_failed"] == 0 and row["tests_passed"] > 0)
            else:
                result = "owed" if "owed" in row else "FAIL"
            lines.append(("CUDA kernels vs CPU references", text, "all pass", result))
    return lines


def throughput_table(rows, device):
    measured = device.get("bf16_tflops")
    datasheet = device.get("datasheet_bf16_tflops")
    out = []
    for row in rows:
        if row.get("check") != "throughput":
            continue
        name = MODELS.get(row["model"], row["model"])
        head = (name, row["impl"], row["precision"], str(row.get("batch", "")))
        text = status(row)
        if text is not None:
            out.append(head + (text,))
            continue
        ms = row["ms_per_step"]
        tflops = row["flops_per_step"] / (ms / 1e3) / 1e12 if row.get("flops_per_step") else None
        mfu = lambda peak: f"{100 * tflops / peak:.1f}%" if tflops is not None and peak else "-"
        cells = (
            f"{ms:.1f}",
            f"{row['tokens_per_s']:,.0f}",
            f"{tflops:.1f}" if tflops is not None else "-",
            mfu(measured),
            mfu(datasheet),
        )
        out.append(head + cells)
    return out


def find(rows, impl, model, precision):
    for r in rows:
        if (r.get("check") == "throughput" and r["impl"] == impl and r["model"] == model
                and r["precision"] == precision and status(r) is None):
            return r
    return None


def targets(rows, device):
    """The issue's three speed targets, each pass / FAIL / not measured."""
    out = []
    base_ours = find(rows, "bertline", "base", "bf16")
    base_torch = find(rows, "pytorch", "base", "bf16")
    datasheet = device.get("datasheet_bf16_tflops")
    if base_ours and base_torch and datasheet:
        tflops = base_ours["flops_per_step"] / (base_ours["ms_per_step"] / 1e3) / 1e12
        ok = base_ours["ms_per_step"] <= base_torch["ms_per_step"] and tflops / datasheet >= 0.40
        out.append(("BERT-Base bf16 <= PyTorch bf16 ms/step and MFU >= 40%", verdict(ok)))
    else:
        out.append(("BERT-Base bf16 <= PyTorch bf16 ms/step and MFU >= 40%", "not measured"))
    tiny = find(rows, "bertline", "tiny", "bf16") or find(rows, "bertline", "tiny", "f32")
    if tiny:
        out.append((f"BERT-Tiny batch 256 < 10 ms/step ({tiny['precision']})", verdict(tiny["ms_per_step"] < 10)))
    else:
        out.append(("BERT-Tiny batch 256 < 10 ms/step", "not measured"))
    mini_ours = find(rows, "bertline", "mini", "f32")
    mini_torch = find(rows, "pytorch", "mini", "f32")
    if mini_ours and mini_torch:
        out.append(("BERT-mini f32 at least PyTorch f32", verdict(mini_ours["ms_per_step"] <= mini_torch["ms_per_step"])))
    else:
        out.append(("BERT-mini f32 at least PyTorch f32", "not measured"))
    return out


def render(rows):
    rows = [normalise(r) for r in rows]
    device = next((r for r in rows if r.get("check") == "device"), {})
    lines = []
    if device:
        rate = device.get("bf16_tflops")
        rate = f"{rate:.0f}" if rate is not None else "not measured"
        lines.append(f"device: {device.get('name', '?')}; bf16 matmul {rate} TFLOP/s measured, "
                     f"{device.get('datasheet_bf16_tflops', '?')} datasheet")
    checks = checks_table(rows)
    if checks:
        widths = [max(len(c[i]) for c in checks + [("check", "result", "target", "verdict")]) for i in range(4)]
        header = ("check", "result", "target", "verdict")
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for c in checks:
            lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
    speed = throughput_table(rows, device)
    if speed:
        header = ("model (seq 128)", "impl", "precision", "batch", "ms/step", "tokens/s", "TFLOP/s",
                  "MFU measured", "MFU datasheet")
        full = [header] + [r for r in speed if len(r) == len(header)]
        widths = [max(len(r[i]) for r in full) for i in range(len(header))]
        widths[:4] = [max(len(r[i]) for r in [header] + speed) for i in range(4)]
        lines.append("")
        for r in [header] + speed:
            if len(r) == len(header):
                lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
            else:  # owed or failed: the reason instead of the numbers
                lines.append("  ".join(v.ljust(w) for v, w in zip(r[:4], widths[:4])) + "  " + r[4])
    lines.append("")
    lines.append("targets:")
    for name, result in targets(rows, device):
        lines.append(f"  {name}: {result}")
    unknown = [r for r in rows if r.get("check") not in ("device", "one_step", "curves", "cuda_kernels", "throughput")]
    for r in unknown:
        lines.append(f"unknown row: {json.dumps(r, sort_keys=True)}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: gpu_table.py gpu_check.jsonl")
    print(render(load(sys.argv[1])))
