#!/usr/bin/env python3
"""Frozen-feature probe of a checkpoint: does pre-training put task information in it?

Fits a logistic regression (L-BFGS, L2 1e-3, standardised features) on 1,500 SST-2 training
rows and scores it on SST-2 dev, with three frozen features of the last layer: the [CLS]
vector, the mean over tokens, and the mean of the embedding-layer outputs. The same
architecture at random initialisation (HF BertConfig init, seed 0) is the baseline. Cheaper
than fine-tuning (seconds on a CPU) and free of fine-tuning's optimisation effects: a
checkpoint whose features do not beat random ones here has not learned the task's signal.

Usage: .venv/bin/python scripts/probe_features.py CHECKPOINT_DIR [GLUE_DIR]
(needs torch and transformers: pip install -r scripts/requirements-parity.txt)
"""
import random
import sys

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

TRAIN_ROWS = 1500
MAX_LEN = 64


def rows(path):
    out = []
    for line in open(path, encoding="utf-8").read().splitlines()[1:]:
        sentence, label = line.rsplit("\t", 1)
        out.append((sentence.strip(), int(label)))
    return out


def features(model, tok, data):
    model.eval()
    cls, mean, emb = [], [], []
    with torch.no_grad():
        for i in range(0, len(data), 128):
            batch = tok([s for s, _ in data[i:i + 128]], padding=True, truncation=True,
                        max_length=MAX_LEN, return_tensors="pt")
            out = model(**batch, output_hidden_states=True)
            m = batch["attention_mask"].unsqueeze(-1).float()
            h, e = out.last_hidden_state, out.hidden_states[0]
            cls.append(h[:, 0])
            mean.append((h * m).sum(1) / m.sum(1))
            emb.append((e * m).sum(1) / m.sum(1))
    return {"cls": torch.cat(cls), "mean": torch.cat(mean), "embedding-mean": torch.cat(emb)}


def probe_accuracy(xtr, ytr, xte, yte):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(xtr.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    y = torch.tensor(ytr, dtype=torch.float)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xtr @ w + b, y)
        loss = loss + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    pred = ((xte @ w + b) > 0).long()
    return (pred == torch.tensor(yte)).float().mean().item()


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ckpt = sys.argv[1]
    glue = sys.argv[2] if len(sys.argv) > 2 else "datasets/glue"
    tok = BertTokenizerFast.from_pretrained(ckpt)
    train = rows(f"{glue}/SST-2/train.tsv")
    random.Random(1).shuffle(train)
    train = train[:TRAIN_ROWS]
    dev = rows(f"{glue}/SST-2/dev.tsv")
    ytr, yte = [y for _, y in train], [y for _, y in dev]
    print(f"SST-2 dev accuracy (%) of a linear probe on frozen features, {TRAIN_ROWS} train rows")
    for name, model in [("pre-trained", BertModel.from_pretrained(ckpt)),
                        ("random init", BertModel(BertConfig.from_pretrained(ckpt)))]:
        ftr, fte = features(model, tok, train), features(model, tok, dev)
        scores = {k: round(100 * probe_accuracy(ftr[k], ytr, fte[k], yte), 1) for k in ftr}
        print(f"{name:12s} " + "  ".join(f"{k} {v}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
