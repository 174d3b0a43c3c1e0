#!/usr/bin/env python3
"""Write the HF parity fixture: a small random `transformers.BertForPreTraining`, a padded batch,
and what HF computes on it (logits, losses, and the loss after one AdamW step).

`tests/hf_parity.rs` loads the same directory through bertline's HF loader and must reproduce
every number within 1e-4. Run by hand (not in CI) after `pip install -r
scripts/requirements-parity.txt`:

    python scripts/hf_parity.py [--out tests/fixtures/parity]

Files written under OUT:
  model/config.json, model/model.safetensors   HF checkpoint (`save_pretrained`, HF key names)
  batch.safetensors     input_ids, token_type_ids, attention_mask [B, S] (i64, pad = 0);
                        labels [B, S] (i64, -100 where no prediction, as HF);
                        masked_lm_positions, masked_lm_ids [B, P] (i64, Google layout, 0-padded),
                        masked_lm_weights [B, P] (f32, 1.0 real / 0.0 padding);
                        next_sentence_labels [B] (i64, 1 = random next, as HF)
  expected.safetensors  prediction_logits [B, S, V], seq_relationship_logits [B, 2] (f32, eval mode)
  expected.json         losses (mlm, nsp, total), pre-clip gradient norm, AdamW hyper-parameters,
                        total loss after one step, versions used

Every weight is drawn at a scale well above HF's 0.02 init, and LayerNorm gains and all biases
are randomised too, so a swapped gamma/beta, a dropped bias, a missing attention mask or the
tanh GELU each move the logits far past the tolerance (the script prints these sensitivities).
"""

import argparse
import json
import math
import pathlib

import numpy as np
import safetensors.torch
import torch
import transformers

SEED = 12345
BATCH = 3
SEQ = 16
LENGTHS = [16, 11, 7]  # real tokens per row; the rest is [PAD]
MAX_PREDICTIONS = 4  # P, masked positions per row (Google's max_predictions_per_seq)
PAD, CLS, SEP = 0, 1, 2

# Hyper-parameters of the one optimizer step (BERT §A.2 with HF's no-decay rule).
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-6
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


def small_config() -> transformers.BertConfig:
    """The fixture's model: tiny, exact-erf GELU, no dropout needed (eval mode)."""
    return transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=64,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=PAD,
        attn_implementation="eager",
    )


def randomise_parameters(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Redraw every parameter so that each one visibly shapes the output."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("LayerNorm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.2 * noise)
            elif "embeddings" in name:
                param.copy_(0.5 * noise)
            else:
                param.copy_(noise / math.sqrt(param.shape[-1]))


def make_batch(config: transformers.BertConfig, generator: torch.Generator) -> dict:
    """A padded sentence-pair batch with Google-style masked positions and HF-style labels."""
    input_ids = torch.full((BATCH, SEQ), PAD, dtype=torch.long)
    token_type_ids = torch.zeros((BATCH, SEQ), dtype=torch.long)
    attention_mask = torch.zeros((BATCH, SEQ), dtype=torch.long)
    labels = torch.full((BATCH, SEQ), -100, dtype=torch.long)
    positions = torch.zeros((BATCH, MAX_PREDICTIONS), dtype=torch.long)
    ids = torch.zeros((BATCH, MAX_PREDICTIONS), dtype=torch.long)
    weights = torch.zeros((BATCH, MAX_PREDICTIONS), dtype=torch.float32)
    for row, length in enumerate(LENGTHS):
        # [CLS] A [SEP] B [SEP]
        len_a = (length - 3) // 2
        tokens = torch.randint(3, config.vocab_size, (length,), generator=generator)
        tokens[0], tokens[1 + len_a], tokens[length - 1] = CLS, SEP, SEP
        input_ids[row, :length] = tokens
        attention_mask[row, :length] = 1
        token_type_ids[row, 2 + len_a : length] = 1
        # Mask fewer positions in shorter rows so some prediction slots stay padding.
        count = min(MAX_PREDICTIONS, max(1, length // 4))
        candidates = [i for i in range(length) if tokens[i] not in (CLS, SEP)]
        order = torch.randperm(len(candidates), generator=generator)[:count]
        chosen = sorted(candidates[i] for i in order.tolist())
        for slot, position in enumerate(chosen):
            original = int(input_ids[row, position])
            positions[row, slot] = position
            ids[row, slot] = original
            weights[row, slot] = 1.0
            labels[row, position] = original
            input_ids[row, position] = 3  # [MASK]
    next_sentence_labels = torch.tensor([0, 1, 1], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "masked_lm_positions": positions,
        "masked_lm_ids": ids,
        "masked_lm_weights": weights,
        "next_sentence_labels": next_sentence_labels,
    }


def pretraining_losses(model, batch: dict) -> tuple:
    """(total, mlm, nsp, outputs): HF's loss = mean MLM CE over labelled tokens + NSP CE."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        labels=batch["labels"],
        next_sentence_label=batch["next_sentence_labels"],
    )
    ce = torch.nn.functional.cross_entropy
    vocab = model.config.vocab_size
    mlm = ce(out.prediction_logits.reshape(-1, vocab), batch["labels"].reshape(-1))
    nsp = ce(out.seq_relationship_logits, batch["next_sentence_labels"])
    assert torch.allclose(out.loss, mlm + nsp), "HF total loss is not MLM + NSP"
    return out.loss, mlm, nsp, out


def adamw_param_groups(model) -> list:
    """HF's rule: no weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if name.endswith("bias") or "LayerNorm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def one_adamw_step(model, loss) -> float:
    """Backward, clip to MAX_GRAD_NORM, one AdamW step; returns the pre-clip global norm."""
    optimizer = torch.optim.AdamW(adamw_param_groups(model), lr=LR, betas=BETAS, eps=EPS)
    optimizer.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    return float(norm)


def print_sensitivities(model, batch: dict, logits: torch.Tensor) -> None:
    """Show how far common porting mistakes would move the logits (must exceed 1e-4)."""
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        unmasked = dict(batch, attention_mask=torch.ones_like(batch["attention_mask"]))
        _, _, _, out = pretraining_losses(model, unmasked)
        print(f"  no attention mask : {(out.prediction_logits - logits)[real].abs().max():.3e}")
        model.config.hidden_act = "gelu_new"
        for layer in model.bert.encoder.layer:
            layer.intermediate.intermediate_act_fn = transformers.activations.ACT2FN["gelu_new"]
        _, _, _, out = pretraining_losses(model, batch)
        print(f"  tanh GELU         : {(out.prediction_logits - logits)[real].abs().max():.3e}")
        for layer in model.bert.encoder.layer:
            layer.intermediate.intermediate_act_fn = transformers.activations.ACT2FN["gelu"]
        model.config.hidden_act = "gelu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures/parity", type=pathlib.Path)
    args = parser.parse_args()

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    config = small_config()
    model = transformers.BertForPreTraining(config)
    randomise_parameters(model, generator)
    model.eval()  # no dropout anywhere: forward, backward and the step are deterministic
    batch = make_batch(config, generator)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out / "model", safe_serialization=True)
    safetensors.torch.save_file(batch, str(args.out / "batch.safetensors"))

    loss, mlm, nsp, out = pretraining_losses(model, batch)
    logits = out.prediction_logits.detach()
    safetensors.torch.save_file(
        {
            "prediction_logits": logits.contiguous(),
            "seq_relationship_logits": out.seq_relationship_logits.detach().contiguous(),
        },
        str(args.out / "expected.safetensors"),
    )
    print("sensitivity of the logits (max abs change on real tokens):")
    print_sensitivities(model, batch, logits)

    grad_norm = one_adamw_step(model, loss)
    with torch.no_grad():
        loss_after, mlm_after, nsp_after, _ = pretraining_losses(model, batch)

    expected = {
        "loss": float(loss),
        "mlm_loss": float(mlm),
        "nsp_loss": float(nsp),
        "grad_norm_before_clip": grad_norm,
        "loss_after_one_step": float(loss_after),
        "mlm_loss_after_one_step": float(mlm_after),
        "nsp_loss_after_one_step": float(nsp_after),
        "adamw": {
            "lr": LR,
            "betas": list(BETAS),
            "eps": EPS,
            "weight_decay": WEIGHT_DECAY,
            "no_decay": "names ending in 'bias' or containing 'LayerNorm'",
            "max_grad_norm": MAX_GRAD_NORM,
            "bias_correction": True,
        },
        "mode": "eval (no dropout) for forward, backward and the step",
        "seed": SEED,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
        },
    }
    (args.out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(json.dumps({k: v for k, v in expected.items() if isinstance(v, float)}, indent=2))


if __name__ == "__main__":
    main()
