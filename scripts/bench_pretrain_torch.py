#!/usr/bin/env python3
"""Time HF BertForPreTraining on CPU at BERT-mini size: the PyTorch baseline for `just bench-pretrain`.

    python scripts/bench_pretrain_torch.py [--threads 2] [--steps 5] [--warmup 2] [--mlm-head gathered|all]

Model: 4 layers, hidden 256, 4 heads, intermediate 1024, vocab 8192 (BERT-mini with bertline's
default vocabulary); batch 32 x seq 128, 20 masked positions per sequence (BERT's
max_predictions_per_seq). A training step is forward + backward + clip_grad_norm_(1.0) +
AdamW step + zero_grad, in train mode (dropout 0.1). Forward-only is `torch.no_grad()` in eval mode.

--mlm-head gathered (default) runs the MLM head only on the masked positions, as Google's
run_pretraining.py does (`gather_indexes`) and as bertline does; --mlm-head all runs HF's
BertForPreTraining.forward, which projects all 128 positions onto the vocabulary.

Prints one JSON object on stdout: median/min step seconds, tokens/s (batch * seq / median),
peak RSS (MiB) after each phase, and the versions and thread count used.
"""

import argparse
import json
import platform
import resource
import statistics
import time

import torch
import transformers

BATCH = 32
SEQ = 128
MAX_PREDICTIONS = 20
VOCAB = 8192


def mini_config() -> transformers.BertConfig:
    """BERT-mini (Turc et al. 2019: L=4, H=256, A=4) with bertline's 8192-token vocabulary."""
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
        hidden_act="gelu",
        attn_implementation="eager",
    )


def make_batch(generator: torch.Generator) -> dict:
    """Random full-length sentence pairs with MAX_PREDICTIONS masked positions each."""
    input_ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    token_type_ids = torch.zeros((BATCH, SEQ), dtype=torch.long)
    token_type_ids[:, SEQ // 2 :] = 1
    positions = torch.stack([torch.randperm(SEQ - 1, generator=generator)[:MAX_PREDICTIONS] + 1 for _ in range(BATCH)])
    positions, _ = positions.sort(dim=1)
    masked_ids = torch.gather(input_ids, 1, positions)
    labels = torch.full((BATCH, SEQ), -100, dtype=torch.long).scatter(1, positions, masked_ids)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": torch.ones((BATCH, SEQ), dtype=torch.long),
        "masked_lm_positions": positions,
        "masked_lm_ids": masked_ids,
        "labels": labels,
        "next_sentence_label": torch.randint(0, 2, (BATCH,), generator=generator),
    }


def pretraining_loss(model, batch: dict, mlm_head: str) -> torch.Tensor:
    """MLM CE + NSP CE, with the MLM head over all positions (HF) or the masked ones (Google)."""
    if mlm_head == "all":
        return model(
            input_ids=batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            next_sentence_label=batch["next_sentence_label"],
        ).loss
    sequence_output, pooled_output = model.bert(
        input_ids=batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
        return_dict=False,
    )[:2]
    index = batch["masked_lm_positions"].unsqueeze(-1).expand(-1, -1, sequence_output.shape[-1])
    masked_output = torch.gather(sequence_output, 1, index)  # gather_indexes
    mlm_logits = model.cls.predictions(masked_output)
    nsp_logits = model.cls.seq_relationship(pooled_output)
    ce = torch.nn.functional.cross_entropy
    return ce(mlm_logits.reshape(-1, VOCAB), batch["masked_lm_ids"].reshape(-1)) + ce(nsp_logits, batch["next_sentence_label"])


def adamw(model) -> torch.optim.Optimizer:
    """BERT's optimizer: AdamW, weight decay 0.01 except biases and LayerNorm weights."""
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), eps=1e-6)


def time_calls(function, warmup: int, steps: int) -> list:
    """Seconds per call over `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(seconds: list) -> dict:
    median = statistics.median(seconds)
    return {
        "median_s": round(median, 4),
        "min_s": round(min(seconds), 4),
        "tokens_per_s": round(BATCH * SEQ / median, 1),
        "steps": len(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mlm-head", choices=["gathered", "all"], default="gathered")
    parser.add_argument("--skip-forward", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = transformers.BertForPreTraining(mini_config())
    batch = make_batch(generator)
    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "model": {"layers": 4, "hidden": 256, "heads": 4, "intermediate": 1024, "vocab": VOCAB},
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": BATCH,
        "seq": SEQ,
        "max_predictions_per_seq": MAX_PREDICTIONS,
        "mlm_head": args.mlm_head,
    }

    if not args.skip_forward:
        model.eval()

        def forward():
            with torch.no_grad():
                pretraining_loss(model, batch, args.mlm_head)

        result["forward"] = summary(time_calls(forward, args.warmup, args.steps))
        result["forward"]["peak_rss_mib"] = round(peak_rss_mib(), 1)

    model.train()
    optimizer = adamw(model)

    def train_step():
        loss = pretraining_loss(model, batch, args.mlm_head)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result["train_step"] = summary(time_calls(train_step, args.warmup, args.steps))
    result["train_step"]["peak_rss_mib"] = round(peak_rss_mib(), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
