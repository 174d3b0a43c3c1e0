//! GLUE metrics against hand-computed values, including the degenerate cases the module
//! documents (one class only, constant predictions, empty input).

use bertline::metrics::{
    accuracy, average_ranks, f1_binary, matthews_corrcoef, pearson, spearman, Confusion, Metric,
    MetricsWriter, SeedSummary, Targets,
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn accuracy_counts_matches() {
    assert_eq!(accuracy(&[1, 0, 1, 1], &[1, 1, 1, 0]), 0.5);
    assert_eq!(accuracy(&[2, 0, 1], &[2, 0, 1]), 1.0);
    assert_eq!(accuracy(&[], &[]), 0.0);
}

#[test]
fn confusion_and_f1_of_positive_class() {
    // tp = 2 (rows 0, 2), fp = 1 (row 3), fn = 1 (row 1), tn = 0.
    let (p, g) = ([1, 0, 1, 1], [1, 1, 1, 0]);
    let c = Confusion::tally(&p, &g);
    assert_eq!(
        c,
        Confusion {
            true_positive: 2,
            false_positive: 1,
            true_negative: 0,
            false_negative: 1
        }
    );
    // 2 tp / (2 tp + fp + fn) = 4 / 6.
    assert!(close(f1_binary(&p, &g), 4.0 / 6.0));
}

#[test]
fn f1_without_true_positives_is_zero() {
    assert_eq!(f1_binary(&[0, 0, 0], &[0, 0, 0]), 0.0);
    assert_eq!(f1_binary(&[0, 0, 0], &[1, 1, 0]), 0.0);
    assert_eq!(f1_binary(&[1, 1], &[0, 0]), 0.0);
    assert_eq!(f1_binary(&[1, 1], &[1, 1]), 1.0);
}

#[test]
fn mcc_binary_hand_computed() {
    // tp 2, tn 2, fp 1, fn 1: (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3.
    let mcc = matthews_corrcoef(&[1, 1, 0, 0, 1, 0], &[1, 0, 0, 0, 1, 1]);
    assert!(close(mcc, 1.0 / 3.0), "{mcc}");
    // tp 2, tn 0, fp 1, fn 1: (0 - 1) / sqrt(3*3*1*1) = -1/3.
    let mcc = matthews_corrcoef(&[1, 0, 1, 1], &[1, 1, 1, 0]);
    assert!(close(mcc, -1.0 / 3.0), "{mcc}");
    assert!(close(matthews_corrcoef(&[0, 1, 1, 0], &[0, 1, 1, 0]), 1.0));
    assert!(close(matthews_corrcoef(&[1, 0, 0, 1], &[0, 1, 1, 0]), -1.0));
}

#[test]
fn mcc_multiclass_matches_sklearn_formula() {
    // c = 4 correct of n = 8; predicted counts {0:3, 1:3, 2:2}, gold {0:2, 1:3, 2:3};
    // (c n - p.t) / sqrt((n^2 - p.p)(n^2 - t.t)) = (32 - 21) / sqrt(42 * 42) = 11/42.
    let mcc = matthews_corrcoef(&[0, 2, 1, 0, 0, 1, 2, 1], &[0, 1, 2, 0, 1, 2, 2, 1]);
    assert!(close(mcc, 11.0 / 42.0), "{mcc}");
}

#[test]
fn mcc_degenerate_inputs_are_zero() {
    // Constant predictions (a collapsed CoLA model) -> 0, as sklearn.
    assert_eq!(matthews_corrcoef(&[1, 1, 1, 1], &[1, 0, 1, 0]), 0.0);
    // Only one gold class.
    assert_eq!(matthews_corrcoef(&[1, 0, 1, 0], &[1, 1, 1, 1]), 0.0);
    assert_eq!(matthews_corrcoef(&[], &[]), 0.0);
}

#[test]
fn pearson_hand_computed() {
    // dx = -2..2, dy = (-2, 0, 1, 0, 1): sxy 6, sxx 10, syy 6 -> 6 / sqrt(60).
    let r = pearson(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 4.0, 5.0, 4.0, 5.0]);
    assert!(close(r, 6.0 / 60f64.sqrt()), "{r}");
    assert!(close(pearson(&[1.0, 2.0, 3.0], &[-2.0, -4.0, -6.0]), -1.0));
    assert!(close(pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]), 1.0));
}

#[test]
fn pearson_of_a_constant_is_zero() {
    assert_eq!(pearson(&[3.0, 3.0, 3.0], &[1.0, 2.0, 5.0]), 0.0);
    assert_eq!(pearson(&[1.0, 2.0, 5.0], &[0.0, 0.0, 0.0]), 0.0);
    assert_eq!(pearson(&[], &[]), 0.0);
    assert_eq!(spearman(&[2.5, 2.5], &[1.0, 2.0]), 0.0);
}

#[test]
fn ranks_average_ties() {
    assert_eq!(
        average_ranks(&[10.0, 20.0, 10.0, 30.0, 20.0, 10.0]),
        vec![2.0, 4.5, 2.0, 6.0, 4.5, 2.0]
    );
    assert_eq!(average_ranks(&[0.3, 0.1, 0.2]), vec![3.0, 1.0, 2.0]);
}

#[test]
fn spearman_with_ties_hand_computed() {
    // y ranks (1, 2.5, 4.5, 2.5, 4.5) against 1..5: sxy 7, sxx 10, syy 9 -> 7 / sqrt(90).
    let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 4.0, 5.0, 4.0, 5.0]);
    assert!(close(r, 7.0 / 90f64.sqrt()), "{r}");
    // Monotone but non-linear: Spearman 1, Pearson below 1.
    let (x, y) = ([1.0, 2.0, 3.0, 4.0], [1.0, 10.0, 100.0, 1000.0]);
    assert!(close(spearman(&x, &y), 1.0));
    assert!(pearson(&x, &y) < 0.95);
}

#[test]
#[should_panic(expected = "differ in length")]
fn mismatched_lengths_panic() {
    accuracy(&[1, 0], &[1]);
}

#[test]
fn seed_summary_mean_median_sample_std() {
    let s = SeedSummary::of(&[0.8, 0.9, 0.7, 0.85]);
    assert_eq!(s.n, 4);
    assert!(close(s.mean, 0.8125));
    assert!(close(s.median, 0.825));
    assert!(
        (s.std - 0.085_391_256_382_996_67).abs() < 1e-12,
        "{}",
        s.std
    );
    assert_eq!((s.min, s.max), (0.7, 0.9));
    let odd = SeedSummary::of(&[3.0, 1.0, 2.0]);
    assert_eq!((odd.median, odd.std), (2.0, 1.0));
    let one = SeedSummary::of(&[0.5]);
    assert_eq!((one.mean, one.median, one.std), (0.5, 0.5, 0.0));
    assert_eq!(SeedSummary::of(&[]).n, 0);
}

#[test]
fn metric_names_round_trip_and_kinds_are_checked() {
    for m in Metric::ALL {
        assert_eq!(Metric::parse(m.name()), Some(m));
    }
    assert_eq!(Metric::parse("matthews"), None);
    let classes = Targets::Classes(vec![1, 0, 1]);
    let gold = Targets::Classes(vec![1, 1, 1]);
    assert!(close(
        Metric::Accuracy.evaluate(&classes, &gold).unwrap(),
        2.0 / 3.0
    ));
    let scores = Targets::Scores(vec![0.5, 1.5, 2.5]);
    let gold_scores = Targets::Scores(vec![1.0, 2.0, 3.0]);
    assert!(close(
        Metric::Pearson.evaluate(&scores, &gold_scores).unwrap(),
        1.0
    ));
    let err = Metric::Mcc.evaluate(&scores, &gold_scores).unwrap_err();
    assert!(err.to_string().contains("regression"), "{err}");
}

#[test]
fn metrics_writer_appends_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/metrics.jsonl");
    #[derive(serde::Serialize)]
    struct Record {
        step: u32,
        loss: f64,
    }
    let mut w = MetricsWriter::create(&path).unwrap();
    w.write(&Record { step: 1, loss: 0.5 }).unwrap();
    drop(w);
    let mut w = MetricsWriter::append(&path).unwrap();
    w.write(&Record {
        step: 2,
        loss: 0.25,
    })
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "{\"step\":1,\"loss\":0.5}\n{\"step\":2,\"loss\":0.25}\n"
    );
}
