#!/usr/bin/env python3
"""Why a briefly pre-trained checkpoint fine-tunes worse than random weights: an ablation in PyTorch.

Fine-tunes a bertline checkpoint on SST-2 with HF's `BertForSequenceClassification` (the
recipe of the default profile: 1,500 training rows, 3 epochs, batch 16, AdamW with linear
warmup 10% and decay, clip 1.0, dropout 0.1, 64 tokens) once per variant, each variant
re-initialising one group of parameters (BERT's init: N(0, 0.02) weights, zero biases, unit
LayerNorm scales) before fine-tuning. It prints, per variant, the training loss of every
epoch and the SST-2 dev accuracy. An independent implementation: when it reproduces what
bertline's finetune stage measures, the weights are the cause, not bertline's code; the
variant that restores fitting names the part of the checkpoint that resists fine-tuning.

Usage: .venv/bin/python scripts/finetune_reinit.py CHECKPOINT_DIR [GLUE_DIR] [LR]
(needs torch and transformers: pip install -r scripts/requirements-parity.txt)
"""
import random
import re
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

TRAIN_ROWS = 1500
MAX_LEN = 64
EPOCHS = 3
BATCH = 16

# name, regular expression of the parameters re-initialised ("" = none, "." = all)
VARIANTS = [
    ("pre-trained as is", ""),
    ("attention query + key", r"attention\.self\.(query|key)\."),
    ("embeddings", r"^bert\.embeddings\."),
    ("feed-forward", r"(intermediate|output)\.dense\."),
    ("pooler", r"^bert\.pooler\."),
    ("everything (scratch)", r"."),
]


def rows(path):
    out = []
    for line in open(path, encoding="utf-8").read().splitlines()[1:]:
        sentence, label = line.rsplit("\t", 1)
        out.append((sentence.strip(), int(label)))
    return out


def reinitialise(model, pattern):
    """Re-draws every parameter whose name matches `pattern`; returns how many."""
    if not pattern:
        return 0
    count = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not re.search(pattern, name):
                continue
            count += 1
            if "LayerNorm.weight" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
    return count


def fine_tune(ckpt, pattern, train, dev, lr):
    torch.manual_seed(1)
    order = random.Random(1)
    tok = BertTokenizerFast.from_pretrained(ckpt)
    config = BertConfig.from_pretrained(ckpt, hidden_dropout_prob=0.1,
                                        attention_probs_dropout_prob=0.1, num_labels=2)
    model = BertForSequenceClassification.from_pretrained(ckpt, config=config)
    reinitialise(model, pattern)

    def encode(batch):
        x = tok([s for s, _ in batch], padding=True, truncation=True, max_length=MAX_LEN,
                return_tensors="pt")
        return x, torch.tensor([y for _, y in batch])

    steps = EPOCHS * ((len(train) + BATCH - 1) // BATCH)
    warmup = max(1, int(0.1 * steps))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup))))
    losses = []
    model.train()
    for _ in range(EPOCHS):
        data = list(train)
        order.shuffle(data)
        total, n = 0.0, 0
        for i in range(0, len(data), BATCH):
            x, y = encode(data[i:i + BATCH])
            loss = model(**x, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            total, n = total + loss.item(), n + 1
        losses.append(total / n)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dev), 128):
            x, y = encode(dev[i:i + 128])
            correct += (model(**x).logits.argmax(-1) == y).sum().item()
    return losses, 100.0 * correct / len(dev)


def main():
    torch.set_num_threads(2)
    ckpt = sys.argv[1]
    glue = sys.argv[2] if len(sys.argv) > 2 else "datasets/glue"
    lr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
    train = rows(f"{glue}/SST-2/train.tsv")
    random.Random(1).shuffle(train)
    train = train[:TRAIN_ROWS]
    dev = rows(f"{glue}/SST-2/dev.tsv")
    print(f"SST-2, {TRAIN_ROWS} rows, {EPOCHS} epochs, lr {lr:g}: {ckpt}")
    print(f"{'re-initialised':24s} {'train loss per epoch':26s} dev acc")
    for name, pattern in VARIANTS:
        losses, acc = fine_tune(ckpt, pattern, train, dev, lr)
        print(f"{name:24s} {' '.join(f'{l:.3f}' for l in losses):26s} {acc:.1f}")


if __name__ == "__main__":
    main()
