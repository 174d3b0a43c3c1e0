#!/usr/bin/env python3
"""Time HF BertForSequenceClassification: the PyTorch baseline for `just bench-finetune`.

    python scripts/bench_finetune_torch.py [--threads 2] [--steps 10] [--warmup 2]

Same work as tests/finetune_bench.rs: the default profile's model (2 layers, hidden 128,
2 heads, intermediate 512, vocab 8192), 2 labels, batch 32 x seq 128 of random ids. A training
step is forward + backward + clip_grad_norm_(1.0) + AdamW step + zero_grad in train mode
(dropout 0.1); inference is a forward pass under torch.no_grad() in eval mode.
Prints one JSON object on stdout.
"""

import argparse
import json
import statistics
import time

import torch
import transformers

BATCH, SEQ = 32, 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=8192,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        hidden_act="gelu",
        num_labels=2,
        attn_implementation="eager",
    )
    model = transformers.BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 8192, (BATCH, SEQ), generator=generator)
    token_type_ids = torch.zeros((BATCH, SEQ), dtype=torch.long)
    token_type_ids[:, SEQ // 2 :] = 1
    attention_mask = torch.ones((BATCH, SEQ), dtype=torch.long)
    labels = torch.arange(BATCH) % 2
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-5,
        betas=(0.9, 0.999),
        eps=1e-6,
    )

    def train_step():
        loss = model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    def forward():
        with torch.no_grad():
            model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)

    def timed(function, train: bool) -> float:
        model.train(train)
        for _ in range(args.warmup):
            function()
        seconds = []
        for _ in range(args.steps):
            start = time.perf_counter()
            function()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    train_s = timed(train_step, True)
    infer_s = timed(forward, False)
    print(
        json.dumps(
            {
                "framework": "pytorch",
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
                "parameters": sum(p.numel() for p in model.parameters()),
                "batch": BATCH,
                "seq": SEQ,
                "train_step_median_s": train_s,
                "train_examples_per_s": BATCH / train_s,
                "inference_batch_median_s": infer_s,
                "inference_examples_per_s": BATCH / infer_s,
            }
        )
    )


if __name__ == "__main__":
    main()
