#!/usr/bin/env python3
"""Pre-train HF BertForPreTraining on a bertline run's mask shards with the same recipe.

    .venv/bin/python scripts/torch_pretrain_twin.py --run runs/default --steps 800 \
        --lr 1e-3 --warmup 80 --batch 32 --eval-every 200 > twin.jsonl

The bug check behind the pre-training numbers in the README: if bertline's pre-training
learned more slowly than PyTorch's on the same data, config and recipe, the gap would be a
bertline bug; if the curves agree, a weak checkpoint is the budget's fault. The recipe is
bertline's (and run_pretraining.py's): model sizes from the run's pretrain `config.json`,
N(0, 0.02) init (HF's), AdamW betas (0.9, 0.999), eps 1e-6, weight decay 0.01 except
LayerNorm and bias, linear warmup then linear decay to 0, global grad-norm clip 1.0, MLM loss
as the weighted mean over the masked positions (gathered, as Google's `gather_indexes`) plus
NSP cross-entropy. Batches are drawn uniformly without replacement from all training shards
(bertline streams them through a shuffle buffer: same distribution, different order).

Prints one JSON object per line, the same keys as bertline's metrics.jsonl: train rows
(`split` = "train", means over the last --log-every steps) and eval rows (`split` = "eval",
over the first --eval-batches batches of the eval shards, dropout off).
"""

import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np
import pyarrow.ipc as ipc
import torch
import transformers

COLUMNS = [
    "input_ids",
    "token_type_ids",
    "attention_mask",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_label",
]
SEQ_COLUMNS = {"input_ids", "token_type_ids", "attention_mask"}


def read_shards(paths):
    """All rows of `paths` as numpy arrays, one per column, padded as bertline's reader pads
    them: the shards hold unpadded rows and the shape in their schema metadata
    (src/shard.rs, write_instances / read_instances)."""
    parts = {c: [] for c in COLUMNS}
    for p in paths:
        table = ipc.open_file(p).read_all()
        meta = table.schema.metadata
        seq = int(meta[b"bertline.max_seq_length"])
        preds = int(meta[b"bertline.max_predictions_per_seq"])
        rows = table.to_pydict()
        n = len(rows["input_ids"])
        out = {c: np.zeros((n, seq if c in SEQ_COLUMNS else preds), np.int64)
               for c in COLUMNS if c != "next_sentence_label"}
        out["masked_lm_weights"] = np.zeros((n, preds), np.float32)
        for i, (ids, b, pos, lab) in enumerate(zip(rows["input_ids"], rows["segment_b_start"],
                                                   rows["masked_lm_positions"],
                                                   rows["masked_lm_ids"])):
            out["input_ids"][i, :len(ids)] = ids
            out["token_type_ids"][i, b:len(ids)] = 1
            out["attention_mask"][i, :len(ids)] = 1
            out["masked_lm_positions"][i, :len(pos)] = pos
            out["masked_lm_ids"][i, :len(lab)] = lab
            out["masked_lm_weights"][i, :len(pos)] = 1.0
        out["next_sentence_label"] = np.asarray(rows["next_sentence_label"], np.int64)
        for c in COLUMNS:
            parts[c].append(out[c])
    return {c: np.concatenate(v) for c, v in parts.items()}


def batch_tensors(data, rows):
    b = {c: torch.from_numpy(np.ascontiguousarray(data[c][rows])) for c in COLUMNS}
    return {
        "input_ids": b["input_ids"].long(),
        "token_type_ids": b["token_type_ids"].long(),
        "attention_mask": b["attention_mask"].long(),
        "positions": b["masked_lm_positions"].long(),
        "ids": b["masked_lm_ids"].long(),
        "weights": b["masked_lm_weights"].float(),
        "nsp": b["next_sentence_label"].long(),
    }


def losses(model, b):
    """MLM loss (weighted mean over masked positions), NSP loss and the counts for accuracy."""
    out = model.bert(
        input_ids=b["input_ids"],
        token_type_ids=b["token_type_ids"],
        attention_mask=b["attention_mask"],
    )
    seq, pooled = out[0], out[1]
    hidden = seq.size(-1)
    gathered = torch.gather(seq, 1, b["positions"].unsqueeze(-1).expand(-1, -1, hidden))
    mlm_logits = model.cls.predictions(gathered)
    nsp_logits = model.cls.seq_relationship(pooled)
    per_token = torch.nn.functional.cross_entropy(
        mlm_logits.reshape(-1, mlm_logits.size(-1)), b["ids"].reshape(-1), reduction="none"
    )
    w = b["weights"].reshape(-1)
    mlm_loss = (per_token * w).sum() / (w.sum() + 1e-5)
    nsp_loss = torch.nn.functional.cross_entropy(nsp_logits, b["nsp"])
    mlm_correct = ((mlm_logits.argmax(-1).reshape(-1) == b["ids"].reshape(-1)).float() * w).sum()
    nsp_correct = (nsp_logits.argmax(-1) == b["nsp"]).float().sum()
    return mlm_loss, nsp_loss, float(mlm_correct), float(w.sum()), float(nsp_correct), len(b["nsp"])


def lr_at(step, peak, warmup, total):
    """bertline's schedule: linear warmup to `peak`, then linear decay to 0 at `total`."""
    if step < warmup:
        return peak * step / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="bertline run directory (holds mask/ and pretrain/)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dropout", type=float, default=None, help="override the config's dropout")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-batches", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    shards = sorted(glob.glob(os.path.join(args.run, "mask", "*.arrow")))
    train_paths = [p for p in shards if "eval" not in os.path.basename(p)]
    eval_paths = [p for p in shards if "eval" in os.path.basename(p)]
    if not train_paths or not eval_paths:
        sys.exit(f"{args.run}/mask: no train or eval shards; run `just mask` first")
    train, evaluation = read_shards(train_paths), read_shards(eval_paths)

    with open(os.path.join(args.run, "pretrain", "config.json")) as f:
        cfg = json.load(f)
    if args.dropout is not None:
        cfg["hidden_dropout_prob"] = cfg["attention_probs_dropout_prob"] = args.dropout
    cfg["attn_implementation"] = "eager"
    config = transformers.BertConfig(**{k: v for k, v in cfg.items() if k != "architectures"})
    model = transformers.BertForPreTraining(config)

    no_decay = [p for n, p in model.named_parameters() if "LayerNorm" in n or n.endswith("bias")]
    decay = [p for n, p in model.named_parameters() if not ("LayerNorm" in n or n.endswith("bias"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
        eps=1e-6,
    )

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train["next_sentence_label"]))
    cursor = 0
    eval_batches = [
        batch_tensors(evaluation, np.arange(i * args.batch, min((i + 1) * args.batch, len(evaluation["next_sentence_label"]))))
        for i in range(args.eval_batches)
        if i * args.batch < len(evaluation["next_sentence_label"])
    ]
    window = []
    start = time.time()
    for step in range(args.steps):
        if cursor + args.batch > len(order):
            order, cursor = rng.permutation(len(order)), 0
        rows = order[cursor : cursor + args.batch]
        cursor += args.batch
        b = batch_tensors(train, rows)
        model.train()
        mlm_loss, nsp_loss, mc, mn, nc, nn_ = losses(model, b)
        loss = mlm_loss + nsp_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        lr = lr_at(step, args.lr, args.warmup, args.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        window.append((float(mlm_loss), float(nsp_loss), mc, mn, nc, nn_, norm))
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            w = np.array(window)
            print(json.dumps({
                "split": "train", "step": done, "learning_rate": lr, "elapsed_s": time.time() - start,
                "mlm_loss": w[:, 0].mean(), "nsp_loss": w[:, 1].mean(),
                "loss": w[:, 0].mean() + w[:, 1].mean(),
                "mlm_accuracy": w[:, 2].sum() / w[:, 3].sum(),
                "nsp_accuracy": w[:, 4].sum() / w[:, 5].sum(), "grad_norm": w[:, 6].mean(),
            }), flush=True)
            window = []
        if done % args.eval_every == 0 or done == args.steps:
            model.eval()
            tot = np.zeros(6)
            with torch.no_grad():
                for eb in eval_batches:
                    ml, nl, mc, mn, nc, nn_ = losses(model, eb)
                    tot += [float(ml) * mn, float(nl) * nn_, mc, mn, nc, nn_]
            mlm = tot[0] / tot[3]
            print(json.dumps({
                "split": "eval", "step": done, "mlm_loss": mlm, "nsp_loss": tot[1] / tot[5],
                "loss": mlm + tot[1] / tot[5], "mlm_accuracy": tot[2] / tot[3],
                "nsp_accuracy": tot[4] / tot[5], "mlm_perplexity": math.exp(mlm),
            }), flush=True)


if __name__ == "__main__":
    main()
