#!/usr/bin/env python3
"""Reference statistics for tests/data_stats.rs: Google's create_pretraining_data.py
(google-research/bert @ eedf5716, Apache-2.0) with its algorithm copied verbatim (whole-word
masking off, so its branch is left out), run on
pre-tokenized ids (one line of space-separated ids per input line, blank line between
documents) instead of calling its tokenizer, so only the algorithm is compared.

Usage: google_pretraining_data_ref.py IDS_FILE SEED
Prints instances, average non-pad tokens, random-next rate, masked positions per instance
and the [MASK]/kept/random split (max_seq_length 128, dupe_factor 5, short_seq_prob 0.1,
masked_lm_prob 0.15, max_predictions_per_seq 20, vocabulary of 8192 ids)."""
import random, sys, collections
def truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng):
  while True:
    total_length = len(tokens_a) + len(tokens_b)
    if total_length <= max_num_tokens:
      break
    trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
    assert len(trunc_tokens) >= 1
    if rng.random() < 0.5:
      del trunc_tokens[0]
    else:
      trunc_tokens.pop()

def create_masked_lm_predictions(tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng):
  cand_indexes = []
  for (i, token) in enumerate(tokens):
    if token == "[CLS]" or token == "[SEP]":
      continue
    cand_indexes.append([i])
  rng.shuffle(cand_indexes)
  output_tokens = list(tokens)
  num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
  masked_lms = []
  covered_indexes = set()
  for index_set in cand_indexes:
    if len(masked_lms) >= num_to_predict:
      break
    if len(masked_lms) + len(index_set) > num_to_predict:
      continue
    for index in index_set:
      covered_indexes.add(index)
      if rng.random() < 0.8:
        masked_token = "[MASK]"
      else:
        if rng.random() < 0.5:
          masked_token = tokens[index]
        else:
          masked_token = vocab_words[rng.randint(0, len(vocab_words) - 1)]
      output_tokens[index] = masked_token
      masked_lms.append((index, tokens[index]))
  masked_lms = sorted(masked_lms)
  return output_tokens, [p for p,_ in masked_lms], [l for _,l in masked_lms]

def create_instances_from_document(all_documents, document_index, max_seq_length, short_seq_prob,
    masked_lm_prob, max_predictions_per_seq, vocab_words, rng):
  document = all_documents[document_index]
  max_num_tokens = max_seq_length - 3
  target_seq_length = max_num_tokens
  if rng.random() < short_seq_prob:
    target_seq_length = rng.randint(2, max_num_tokens)
  instances = []
  current_chunk = []
  current_length = 0
  i = 0
  while i < len(document):
    segment = document[i]
    current_chunk.append(segment)
    current_length += len(segment)
    if i == len(document) - 1 or current_length >= target_seq_length:
      if current_chunk:
        a_end = 1
        if len(current_chunk) >= 2:
          a_end = rng.randint(1, len(current_chunk) - 1)
        tokens_a = []
        for j in range(a_end):
          tokens_a.extend(current_chunk[j])
        tokens_b = []
        is_random_next = False
        if len(current_chunk) == 1 or rng.random() < 0.5:
          is_random_next = True
          target_b_length = target_seq_length - len(tokens_a)
          for _ in range(10):
            random_document_index = rng.randint(0, len(all_documents) - 1)
            if random_document_index != document_index:
              break
          random_document = all_documents[random_document_index]
          random_start = rng.randint(0, len(random_document) - 1)
          for j in range(random_start, len(random_document)):
            tokens_b.extend(random_document[j])
            if len(tokens_b) >= target_b_length:
              break
          num_unused_segments = len(current_chunk) - a_end
          i -= num_unused_segments
        else:
          is_random_next = False
          for j in range(a_end, len(current_chunk)):
            tokens_b.extend(current_chunk[j])
        truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
        tokens = ["[CLS]"] + tokens_a + ["[SEP]"] + tokens_b + ["[SEP]"]
        out, pos, lab = create_masked_lm_predictions(tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng)
        instances.append((out, pos, lab, is_random_next))
      current_chunk = []
      current_length = 0
    i += 1
  return instances

def main(path, seed):
  rng = random.Random(seed)
  all_documents = [[]]
  for line in open(path):
    line = line.strip()
    if not line:
      all_documents.append([])
    tokens = line.split()
    if tokens:
      all_documents[-1].append(tokens)
  all_documents = [x for x in all_documents if x]
  rng.shuffle(all_documents)
  vocab_words = [str(i) for i in range(5, 8192)] + ["[PAD]","[UNK]","[CLS]","[SEP]","[MASK]"]
  instances = []
  for _ in range(5):
    for d in range(len(all_documents)):
      instances.extend(create_instances_from_document(all_documents, d, 128, 0.1, 0.15, 20, vocab_words, rng))
  n = len(instances)
  toks = sum(len(t) for t,_,_,_ in instances)
  rnd = sum(r for *_, r in instances)
  m = sum(len(p) for _,p,_,_ in instances)
  mk = kp = rd = 0
  for t,p,l,_ in instances:
    for q,lab in zip(p,l):
      if t[q] == "[MASK]": mk += 1
      elif t[q] == lab: kp += 1
      else: rd += 1
  print(f"seed {seed} docs {len(all_documents)} instances {n} avg_tokens {toks/n:.2f} random_next {rnd/n:.4f} avg_masked {m/n:.3f} mask {mk/m:.4f} kept {kp/m:.4f} random {rd/m:.4f}")
main(sys.argv[1], int(sys.argv[2]))
