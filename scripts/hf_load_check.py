#!/usr/bin/env python3
"""Check that a checkpoint directory bertline wrote loads in HF transformers, with nothing lost.

    python scripts/hf_load_check.py DIR [--sentence TEXT] [--tokenizer PATH] [--reference REF]

DIR holds config.json and model.safetensors (bertline's `model/export.rs` format). Fails (exit 1)
on any missing, unexpected or mismatched key reported by
`BertForPreTraining.from_pretrained(DIR, output_loading_info=True)`, on a config the
checkpoint's tensors contradict, or on non-finite outputs. If a tokenizer is found
(DIR/tokenizer.json or DIR/vocab.txt, or --tokenizer) it is loaded with BertTokenizerFast and
the sentence is encoded with it; otherwise fixed ids are used. With --reference, REF (another
HF checkpoint dir, e.g. the one bertline loaded before saving DIR) runs on the same inputs and
the logits must agree within 1e-5. Prints one JSON line.
"""

import argparse
import inspect
import json
import pathlib
import sys

import torch
import transformers

# HF ties these to other tensors (`_tied_weights_keys`); a checkpoint may omit them.
TIED_KEYS = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}


def load_model(directory: pathlib.Path):
    """from_pretrained with loading info; raises on anything HF had to invent or drop."""
    model, info = transformers.BertForPreTraining.from_pretrained(
        directory, output_loading_info=True, attn_implementation="eager"
    )
    missing = sorted(set(info.get("missing_keys", [])) - TIED_KEYS)
    problems = {
        "missing_keys": missing,
        "unexpected_keys": sorted(info.get("unexpected_keys", [])),
        "mismatched_keys": sorted(str(k) for k in info.get("mismatched_keys", [])),
        "error_msgs": list(info.get("error_msgs", [])),
    }
    problems = {name: keys for name, keys in problems.items() if keys}
    if problems:
        raise SystemExit(f"hf_load_check: {directory}: HF could not load it cleanly: {problems}")
    return model.eval()


def check_tied_decoder(model) -> None:
    """The MLM decoder must be the word embedding matrix (BERT ties them)."""
    decoder = model.cls.predictions.decoder.weight
    embeddings = model.bert.embeddings.word_embeddings.weight
    if not torch.equal(decoder, embeddings):
        raise SystemExit("hf_load_check: cls.predictions.decoder.weight != word embeddings")


def find_tokenizer(directory: pathlib.Path, explicit: str | None):
    """BertTokenizerFast from tokenizer.json or vocab.txt, or None when there is neither."""
    candidates = [pathlib.Path(explicit)] if explicit else []
    candidates += [directory / "tokenizer.json", directory / "vocab.txt"]
    for path in candidates:
        if not path.exists():
            continue
        if path.is_dir():
            return transformers.BertTokenizerFast.from_pretrained(path), str(path)
        if path.name.endswith(".json"):
            return transformers.BertTokenizerFast(tokenizer_file=str(path)), str(path)
        return tokenizer_from_vocab_txt(path), str(path)
    return None, None


def tokenizer_from_vocab_txt(path: pathlib.Path):
    """BertTokenizerFast over a WordPiece vocab.txt (one token a line, id = line number)."""
    if "vocab" in inspect.signature(transformers.BertTokenizerFast.__init__).parameters:
        # transformers >= 5 takes the vocabulary itself and ignores `vocab_file`.
        lines = path.read_text(encoding="utf-8").splitlines()
        return transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(lines)})
    return transformers.BertTokenizerFast(vocab_file=str(path))


def encode(tokenizer, sentence: str, vocab_size: int) -> dict:
    """A [CLS] A [SEP] B [SEP] pair, or fixed ids when there is no tokenizer."""
    if tokenizer is None:
        ids = torch.tensor([[min(i, vocab_size - 1) for i in (2, 7, 9, 11, 3, 13, 3)]])
        return {
            "input_ids": ids,
            "token_type_ids": torch.tensor([[0, 0, 0, 0, 0, 1, 1]]),
            "attention_mask": torch.ones_like(ids),
        }
    first, _, second = sentence.partition(". ")
    return dict(tokenizer(first, second or first, return_tensors="pt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=pathlib.Path)
    parser.add_argument("--sentence", default="The cat sat on the mat. It was warm there.")
    parser.add_argument("--tokenizer", help="tokenizer.json, vocab.txt or a directory")
    parser.add_argument("--reference", type=pathlib.Path, help="checkpoint dir to compare logits with")
    args = parser.parse_args()

    model = load_model(args.dir)
    check_tied_decoder(model)
    tokenizer, tokenizer_path = find_tokenizer(args.dir, args.tokenizer)
    inputs = encode(tokenizer, args.sentence, model.config.vocab_size)
    if int(inputs["input_ids"].max()) >= model.config.vocab_size:
        raise SystemExit("hf_load_check: tokenizer ids exceed the model's vocab_size")
    with torch.no_grad():
        out = model(**inputs)
    logits = out.prediction_logits
    if not (torch.isfinite(logits).all() and torch.isfinite(out.seq_relationship_logits).all()):
        raise SystemExit("hf_load_check: non-finite logits")
    if args.reference:
        with torch.no_grad():
            ref = load_model(args.reference)(**inputs)
        diff = max(
            float((ref.prediction_logits - logits).abs().max()),
            float((ref.seq_relationship_logits - out.seq_relationship_logits).abs().max()),
        )
        if diff > 1e-5:
            raise SystemExit(f"hf_load_check: logits differ from {args.reference} by {diff:.3e}")
    tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0]) if tokenizer else None
    report = {
        "dir": str(args.dir),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": {k: getattr(model.config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act")},
        "tokenizer": tokenizer_path,
        "reference": str(args.reference) if args.reference else None,
        "tokens": tokens,
        "mlm_argmax": logits[0].argmax(-1).tolist(),
        "nsp_probs": torch.softmax(out.seq_relationship_logits[0], -1).tolist(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
