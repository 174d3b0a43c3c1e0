//! SQuAD v1.1: loading counts of the shipped dev file, the official normalisation and
//! EM / F1 on fixed strings, sliding-window features on a real long paragraph, and span
//! selection on fixed logits.

use std::collections::HashMap;
use std::path::Path;

use bertline::squad::{
    check_is_max_context, convert_examples_to_features, doc_spans, evaluate, exact_match_score,
    f1_score, get_best_indexes, improve_answer_span, load_squad, metric_max_over_ground_truths,
    normalize_answer, read_squad_examples, write_predictions, DocSpan, FeatureSizes, SpanLogits,
    SquadContext, SquadDataset,
};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::Tokenizer;

fn dev_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/squad/dev-v1.1.json")
}

fn dev() -> SquadDataset {
    load_squad(&dev_file()).unwrap()
}

/// BERT basic tokenization for building a test vocabulary: lower case, every
/// non-alphanumeric character its own token.
fn basic_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.to_lowercase().split_whitespace() {
        let mut cur = String::new();
        for c in word.chars() {
            if c.is_alphanumeric() {
                cur.push(c);
            } else {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

/// A BERT WordPiece tokenizer whose vocabulary holds the words of `texts`, except
/// "broncos", which is split into "bron ##cos" to exercise sub-word pieces.
fn tokenizer_for(texts: &[&str]) -> Tokenizer {
    let mut vocab: Vec<String> = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "bron", "##cos",
    ]
    .map(String::from)
    .to_vec();
    for text in texts {
        for t in basic_tokens(text) {
            if t != "broncos" && !vocab.contains(&t) {
                vocab.push(t);
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.txt");
    std::fs::write(&path, vocab.join("\n")).unwrap();
    let model = WordPiece::from_file(path.to_str().unwrap())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer
}

fn tokens_of(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| tokenizer.id_to_token(id).unwrap())
        .collect()
}

#[test]
fn shipped_dev_file_counts() {
    let dataset = dev();
    assert_eq!(dataset.data.len(), 48);
    assert_eq!(dataset.num_questions(), 10570);
    let paragraphs: usize = dataset.data.iter().map(|a| a.paragraphs.len()).sum();
    assert_eq!(paragraphs, 2067);
    let answers: usize = dataset
        .data
        .iter()
        .flat_map(|a| &a.paragraphs)
        .flat_map(|p| &p.qas)
        .map(|q| q.answers.len())
        .sum();
    assert_eq!(answers, 34726);
    assert_eq!(dataset.data[0].title, "Super_Bowl_50");

    let (train, eval) = dataset.split_by_article();
    assert_eq!((train.data.len(), eval.data.len()), (24, 24));
    assert_eq!(train.num_questions() + eval.num_questions(), 10570);
    assert_eq!(train.data[0].title, "Super_Bowl_50");
    // Every training question's first answer lies on whole doc tokens, except a handful
    // whose answer text differs from the context in whitespace or starts mid-word.
    let examples = read_squad_examples(&train, true);
    assert!(
        examples.len() * 1000 >= train.num_questions() * 995,
        "{}",
        examples.len()
    );
    assert_eq!(
        read_squad_examples(&eval, false).len(),
        eval.num_questions()
    );
}

#[test]
fn truncate_questions_keeps_the_first_ones() {
    let mut dataset = dev();
    dataset.truncate_questions(50);
    assert_eq!(dataset.num_questions(), 50);
    assert_eq!(dataset.data.len(), 1);
    assert_eq!(
        dataset.data[0].paragraphs[0].qas[0].id,
        "56be4db0acb8001400a502ec"
    );
}

#[test]
fn whitespace_doc_tokens_and_answer_positions() {
    let context = SquadContext::new("  The  Broncos\u{202f}won\n(24–10). ".into());
    assert_eq!(context.doc_tokens, ["The", "Broncos", "won", "(24–10)."]);
    assert_eq!(
        &context.text[context.word_spans[3].0..context.word_spans[3].1],
        "(24–10)."
    );
    // Characters, not bytes: "–" is one character.
    assert_eq!(
        context.char_to_word_offset.len(),
        context.text.chars().count()
    );
    assert_eq!(context.char_to_word_offset[0], None);
    assert_eq!(context.char_to_word_offset[2], Some(0));
    assert_eq!(context.char_to_word_offset[5], Some(0));

    let examples = read_squad_examples(&dev(), true);
    let first = &examples[0];
    assert_eq!(first.qas_id, "56be4db0acb8001400a502ec");
    assert_eq!(first.orig_answer_text.as_deref(), Some("Denver Broncos"));
    let words = &first.context.doc_tokens[first.start_position..=first.end_position];
    assert_eq!(words.join(" "), "Denver Broncos");
    assert_eq!(first.answers.len(), 3);
}

#[test]
fn normalize_answer_matches_the_official_script() {
    assert_eq!(
        normalize_answer("The  Quick, brown fox!"),
        "quick brown fox"
    );
    assert_eq!(normalize_answer("An apple a day"), "apple day");
    assert_eq!(normalize_answer("anthem theatre"), "anthem theatre");
    assert_eq!(normalize_answer("Denver Broncos."), "denver broncos");
    // Only ASCII punctuation is removed; an en dash stays.
    assert_eq!(normalize_answer("24–10 (a-b)"), "24–10 ab");
    assert_eq!(normalize_answer("the"), "");
    assert_eq!(normalize_answer("Ünïcode THE Über"), "ünïcode über");
}

#[test]
fn exact_match_and_f1_hand_computed() {
    assert!(exact_match_score("the Denver Broncos!", "Denver broncos"));
    assert!(!exact_match_score("Denver", "Denver Broncos"));
    // pred {denver, broncos}, gold {denver, broncos, team}: p 1, r 2/3, F1 0.8.
    assert!((f1_score("Denver Broncos", "the Denver Broncos team") - 0.8).abs() < 1e-12);
    // pred [cat, cat, dog] vs gold [cat, bird]: one shared token, p 1/3, r 1/2, F1 0.4.
    assert!((f1_score("cat cat dog", "cat bird") - 0.4).abs() < 1e-12);
    assert_eq!(f1_score("Carolina", "Denver Broncos"), 0.0);
    assert_eq!(f1_score("the", "a"), 0.0);
    let golds = ["Denver Broncos", "the Broncos", "Broncos"];
    let best = metric_max_over_ground_truths(f1_score, "Broncos team", &golds);
    // vs "Broncos": p 1/2, r 1 -> 2/3 (the best of 0.5, 2/3, 2/3).
    assert!((best - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn evaluate_scores_in_percent_and_counts_unanswered_as_zero() {
    let mut dataset = dev();
    dataset.truncate_questions(4);
    let qas: Vec<_> = dataset.data[0].paragraphs[0].qas.clone();
    let mut predictions = HashMap::new();
    // Right, right after normalisation, one extra word, and one unanswered.
    predictions.insert(qas[0].id.clone(), "Denver Broncos".to_string());
    predictions.insert(qas[1].id.clone(), "the carolina panthers.".to_string());
    predictions.insert(
        qas[2].id.clone(),
        format!("{} extra", qas[2].answers[0].text),
    );
    let scores = evaluate(&dataset, &predictions);
    assert_eq!((scores.total, scores.answered), (4, 3));
    assert!((scores.exact_match - 50.0).abs() < 1e-9, "{scores:?}");
    let gold2 = normalize_answer(&qas[2].answers[0].text);
    let n = gold2.split_whitespace().count() as f64;
    let f1_2 = 2.0 * (n / (n + 1.0)) / (n / (n + 1.0) + 1.0);
    let expected_f1 = 100.0 * (1.0 + 1.0 + f1_2) / 4.0;
    assert!(
        (scores.f1 - expected_f1).abs() < 1e-9,
        "{scores:?} vs {expected_f1}"
    );
}

#[test]
fn sliding_windows_and_max_context() {
    // run_squad.py's loop: 0..10, 8..18, 16..26, 24..30.
    let spans = doc_spans(30, 10, 8);
    let expected: Vec<DocSpan> = [(0, 10), (8, 10), (16, 10), (24, 6)]
        .map(|(start, length)| DocSpan { start, length })
        .to_vec();
    assert_eq!(spans, expected);
    assert_eq!(
        doc_spans(5, 10, 8),
        vec![DocSpan {
            start: 0,
            length: 5
        }]
    );
    assert!(doc_spans(0, 10, 8).is_empty());
    // The example in run_squad.py: "bought" (7) has 4 left / 0 right context in span B
    // (3..8) and 1 left / 3 right in span C (6..11), so C is its max-context span.
    let spans = [(0, 5), (3, 5), (6, 5)].map(|(start, length)| DocSpan { start, length });
    assert!(check_is_max_context(&spans, 2, 7));
    assert!(!check_is_max_context(&spans, 1, 7));
    assert!(check_is_max_context(&spans, 0, 0));
    assert_eq!(improve_answer_span(&[5, 6, 7, 8, 9], 1, 4, &[7, 8]), (2, 3));
    assert_eq!(improve_answer_span(&[5, 6, 7, 8, 9], 1, 4, &[3]), (1, 4));
}

#[test]
fn features_of_a_long_paragraph() {
    let examples = read_squad_examples(&dev(), true);
    let example = examples[0].clone();
    let tokenizer = tokenizer_for(&[&example.context.text, &example.question_text]);
    let sizes = FeatureSizes {
        max_seq_length: 40,
        doc_stride: 10,
        max_query_length: 64,
    };
    let features =
        convert_examples_to_features(std::slice::from_ref(&example), &tokenizer, sizes).unwrap();
    let doc = &features[0].context_tokens;
    let n = doc.ids.len();
    // Words become pieces: "broncos" is split, so pieces outnumber whitespace words.
    assert!(n > example.context.doc_tokens.len());
    // Question: 11 pieces, so windows hold 40 - 11 - 3 = 26 context pieces, 10 apart.
    let first = &features[0];
    assert_eq!(
        tokens_of(&tokenizer, &first.input_ids[..16]),
        [
            "[CLS]",
            "which",
            "nfl",
            "team",
            "represented",
            "the",
            "afc",
            "at",
            "super",
            "bowl",
            "50",
            "?",
            "[SEP]",
            "super",
            "bowl",
            "50"
        ]
    );
    assert_eq!(first.doc_offset, 13);
    assert_eq!(first.input_ids.len(), 40);
    assert_eq!(first.segment_ids[..13], [0; 13]);
    assert_eq!(first.segment_ids[13..], [1; 27]);
    assert_eq!(
        *first.input_ids.last().unwrap(),
        tokenizer.token_to_id("[SEP]").unwrap()
    );
    let expected_windows = (n - 26).div_ceil(10) + 1;
    assert_eq!(features.len(), expected_windows);
    for (i, f) in features.iter().enumerate() {
        assert_eq!((f.doc_span_index, f.doc_start), (i, 10 * i));
        assert_eq!(f.doc_len(), 26.min(n - 10 * i));
    }
    // The answer "Denver Broncos" = denver bron ##cos.
    let answer_start = doc
        .ids
        .windows(3)
        .position(|w| tokens_of(&tokenizer, w) == ["denver", "bron", "##cos"])
        .unwrap();
    let mut windows_with_answer = 0;
    for f in &features {
        let inside = answer_start >= f.doc_start && answer_start + 2 < f.doc_start + f.doc_len();
        if inside {
            windows_with_answer += 1;
            assert_eq!(f.start_position, answer_start - f.doc_start + 13);
            assert_eq!(f.end_position, f.start_position + 2);
            let answer = tokens_of(&tokenizer, &f.input_ids[f.start_position..=f.end_position]);
            assert_eq!(answer, ["denver", "bron", "##cos"]);
            // Both pieces of "Broncos" map back to the same whitespace word.
            assert_eq!(
                f.token_to_orig(f.start_position + 1),
                f.token_to_orig(f.end_position)
            );
            assert_eq!(
                example.context.doc_tokens[f.token_to_orig(f.end_position).unwrap()],
                "Broncos"
            );
        } else {
            assert_eq!((f.start_position, f.end_position), (0, 0));
        }
    }
    // 26-piece windows 10 apart hold a 3-piece answer in two or three of them.
    assert!(
        (2..=3).contains(&windows_with_answer),
        "{windows_with_answer}"
    );
    // Every context piece is the max-context token of exactly one window.
    for t in 0..n {
        let owners = features
            .iter()
            .filter(|f| t >= f.doc_start && t < f.doc_start + f.doc_len())
            .filter(|f| f.is_max_context(t - f.doc_start + f.doc_offset))
            .count();
        assert_eq!(owners, 1, "piece {t}");
    }
    let (ids, segments, mask) = features[0].padded(48, 0);
    assert_eq!(
        (ids.len(), segments.len(), mask.iter().sum::<u32>()),
        (48, 48, 40)
    );
}

#[test]
fn span_selection_on_fixed_logits() {
    let text = "Super Bowl 50 was won by the Denver Broncos, beating Carolina.";
    let question = "Who won Super Bowl 50?";
    let dataset: SquadDataset = serde_json::from_value(serde_json::json!({
        "data": [{"title": "t", "paragraphs": [{"context": text, "qas": [
            {"id": "q1", "question": question,
             "answers": [{"text": "Denver Broncos", "answer_start": 29}]}]}]}]
    }))
    .unwrap();
    let examples = read_squad_examples(&dataset, false);
    let tokenizer = tokenizer_for(&[text, question]);
    let sizes = FeatureSizes {
        max_seq_length: 64,
        doc_stride: 128,
        max_query_length: 64,
    };
    let features = convert_examples_to_features(&examples, &tokenizer, sizes).unwrap();
    assert_eq!(features.len(), 1);
    let f = &features[0];
    // [CLS] who won super bowl 50 ? [SEP] = positions 0..8; the context starts at 8:
    // super 8, bowl 9, 50 10, was 11, won 12, by 13, the 14, denver 15, bron 16, ##cos 17,
    // "," 18, beating 19, carolina 20, "." 21, [SEP] 22.
    assert_eq!(
        tokens_of(&tokenizer, &f.input_ids[14..19]),
        ["the", "denver", "bron", "##cos", ","]
    );
    assert_eq!((f.start_position, f.end_position), (15, 17));
    let mut start_logits = vec![0.0f32; 26];
    let mut end_logits = vec![0.0f32; 26];
    start_logits[2] = 9.0; // "won" in the question: never an answer
    end_logits[2] = 9.0;
    start_logits[25] = 12.0; // padding beyond the sequence
    end_logits[25] = 12.0;
    start_logits[15] = 5.0; // denver
    end_logits[15] = 0.5;
    start_logits[14] = 4.5; // the
    end_logits[17] = 5.0; // ##cos
    end_logits[18] = 4.0; // ","
    end_logits[13] = 6.0; // "by": before every good start
    let logits = SpanLogits {
        start_logits,
        end_logits,
    };
    let nbest = write_predictions(&examples[0], &[f], &[&logits], 20, 30);
    let texts: Vec<&str> = nbest.iter().map(|n| n.text.as_str()).collect();
    // 5 + 5, 4.5 + 5, 5 + 4, 4.5 + 4, ...; the answer is cut from the original text, so
    // the trailing comma is separate from "Broncos".
    assert_eq!(
        texts[..4],
        [
            "Denver Broncos",
            "the Denver Broncos",
            "Denver Broncos,",
            "the Denver Broncos,"
        ]
    );
    assert_eq!((nbest[0].start_logit, nbest[0].end_logit), (5.0, 5.0));
    let total: f32 = nbest.iter().map(|n| n.probability).sum();
    assert!((total - 1.0).abs() < 1e-5);
    assert!(nbest[0].probability > nbest[1].probability);
    // A one-piece limit leaves single pieces: "by" (0 + 6) beats "Denver" (5 + 0.5).
    let short = write_predictions(&examples[0], &[f], &[&logits], 20, 1);
    let short: Vec<&str> = short.iter().take(2).map(|n| n.text.as_str()).collect();
    assert_eq!(short, ["by", "Denver"]);
    // Nothing qualifies: the official fallback text.
    let none = write_predictions(&examples[0], &[f], &[&logits], 20, 0);
    assert_eq!(none.len(), 1);
    assert_eq!(none[0].text, "empty");
}

#[test]
fn best_indexes_are_sorted_and_stable() {
    assert_eq!(
        get_best_indexes(&[0.1, 0.9, 0.5, 0.9, -1.0], 3),
        vec![1, 3, 2]
    );
    assert_eq!(get_best_indexes(&[0.1, 0.2], 5), vec![1, 0]);
}

#[test]
fn missing_squad_file_names_it() {
    let err = load_squad(Path::new("nowhere/train-v1.1.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nowhere/train-v1.1.json") && err.contains("not found"),
        "{err}"
    );
}
