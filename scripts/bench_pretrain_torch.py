#!/usr/bin/env python3
"""Time HF BertForPreTraining training steps: the PyTorch baseline for `just bench-pretrain`.

    python scripts/bench_pretrain_torch.py [--threads 2] [--steps 5] [--warmup 2] [--mlm-head gathered|all]
    python scripts/bench_pretrain_torch.py --device cuda --size base --dtype f16 --steps 10

Default model (--size mini): 4 layers, hidden 256, 4 heads, intermediate 1024, vocab 8192
(BERT-mini with bertline's default vocabulary); --size base is BERT-Base (12/768/12/3072,
vocab 30522). Batch 32 (--batch) x seq 128, 20 masked positions per sequence (BERT's
max_predictions_per_seq). --dtype f16 runs autocast with a GradScaler (dynamic loss scaling),
bf16 autocast without; f32 is plain f32 (TF32 matmuls off). A training step is forward + backward + clip_grad_norm_(1.0) +
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
# (layers, hidden, heads, intermediate, vocab)
SIZES = {
    "tiny": (2, 128, 2, 512, 8192),  # Turc et al. 2019 BERT-Tiny, bertline's default profile
    "mini": (4, 256, 4, 1024, 8192),  # Turc et al. 2019 BERT-mini, bertline's default vocab
    "base": (12, 768, 12, 3072, 30522),  # BERT-Base, bert-base-uncased's vocab
}
# Dense peaks for MFU (H100 SXM / H200 datasheets): FP32 67, TF32 495 (dense), FP16/BF16 989.
GPU_PEAK_TFLOPS = {"f32": 67.0, "tf32": 495.0, "f16": 989.0, "bf16": 989.0}


def model_config(size: str) -> transformers.BertConfig:
    layers, hidden, heads, intermediate, vocab = SIZES[size]
    return transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        hidden_act="gelu",
        attn_implementation="eager",
    )


def training_flops(config: transformers.BertConfig, batch: int) -> float:
    """Model FLOPs of one training step (6 x matmul params x tokens + attention), MLM on masked rows."""
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    encoder = layers * (4 * h * h + 2 * h * config.intermediate_size) + h * h
    per_token = 6 * encoder + 12 * layers * SEQ * h
    return per_token * batch * SEQ + 6 * (h * h + h * vocab) * batch * MAX_PREDICTIONS


def make_batch(generator: torch.Generator, vocab: int, device: str) -> dict:
    """Random full-length sentence pairs with MAX_PREDICTIONS masked positions each."""
    input_ids = torch.randint(5, vocab, (BATCH, SEQ), generator=generator)
    token_type_ids = torch.zeros((BATCH, SEQ), dtype=torch.long)
    token_type_ids[:, SEQ // 2 :] = 1
    positions = torch.stack([torch.randperm(SEQ - 1, generator=generator)[:MAX_PREDICTIONS] + 1 for _ in range(BATCH)])
    positions, _ = positions.sort(dim=1)
    masked_ids = torch.gather(input_ids, 1, positions)
    labels = torch.full((BATCH, SEQ), -100, dtype=torch.long).scatter(1, positions, masked_ids)
    batch = {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": torch.ones((BATCH, SEQ), dtype=torch.long),
        "masked_lm_positions": positions,
        "masked_lm_ids": masked_ids,
        "labels": labels,
        "next_sentence_label": torch.randint(0, 2, (BATCH,), generator=generator),
    }
    return {name: tensor.to(device) for name, tensor in batch.items()}


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
    vocab = model.config.vocab_size
    return ce(mlm_logits.reshape(-1, vocab), batch["masked_lm_ids"].reshape(-1)) + ce(nsp_logits, batch["next_sentence_label"])


def adamw(model) -> torch.optim.Optimizer:
    """BERT's optimizer: AdamW, weight decay 0.01 except biases and LayerNorm weights."""
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), eps=1e-6)


def time_calls(function, warmup: int, steps: int, sync) -> list:
    """Seconds per call over `steps` calls after `warmup` untimed ones (`sync` waits for the GPU)."""
    for _ in range(warmup):
        function()
    sync()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        function()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(seconds: list) -> dict:
    median = statistics.median(seconds)
    return {
        "median_s": round(median, 5),
        "min_s": round(min(seconds), 5),
        "tokens_per_s": round(BATCH * SEQ / median, 1),
        "steps": len(seconds),
    }


def main() -> None:
    global BATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--size", choices=sorted(SIZES), default="mini")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    parser.add_argument("--mlm-head", choices=["gathered", "all"], default="gathered")
    parser.add_argument("--skip-forward", action="store_true")
    args = parser.parse_args()
    BATCH = args.batch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # f32 means f32, as bertline's cuBLAS SGEMM
        torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    config = model_config(args.size)
    model = transformers.BertForPreTraining(config).to(args.device)
    batch = make_batch(generator, config.vocab_size, args.device)
    autocast_dtype = {"f16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype)
    device_type = "cuda" if cuda else "cpu"

    def autocast():
        return torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    layers, hidden, heads, intermediate, vocab = SIZES[args.size]
    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "model": {"size": args.size, "layers": layers, "hidden": hidden, "heads": heads, "intermediate": intermediate, "vocab": vocab},
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": BATCH,
        "seq": SEQ,
        "max_predictions_per_seq": MAX_PREDICTIONS,
        "mlm_head": args.mlm_head,
    }

    if not args.skip_forward:
        model.eval()

        def forward():
            with torch.no_grad(), autocast():
                pretraining_loss(model, batch, args.mlm_head)

        result["forward"] = summary(time_calls(forward, args.warmup, args.steps, sync))
        result["forward"]["peak_rss_mib"] = round(peak_rss_mib(), 1)

    model.train()
    optimizer = adamw(model)
    scaler = torch.amp.GradScaler(device_type, enabled=args.dtype == "f16")

    def train_step():
        with autocast():
            loss = pretraining_loss(model, batch, args.mlm_head)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    result["train_step"] = summary(time_calls(train_step, args.warmup, args.steps, sync))
    result["train_step"]["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["train_step"]["flops_per_step"] = training_flops(config, BATCH)
    if cuda:
        achieved = training_flops(config, BATCH) / result["train_step"]["median_s"] / 1e12
        result["train_step"]["model_tflops_per_s"] = round(achieved, 2)
        result["train_step"]["mfu"] = round(achieved / GPU_PEAK_TFLOPS[args.dtype], 4)
        result["train_step"]["peak_tflops_assumed"] = GPU_PEAK_TFLOPS[args.dtype]
        result["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
