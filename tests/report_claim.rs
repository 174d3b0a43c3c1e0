//! The claim verdict of the report (`report::claim`): paired differences, the verdict's
//! rules (SST-2 and one of MRPC / STS-B / CoLA by 3 points over 3 seeds; WNLI never counts)
//! and the section's rows, on hand-made fine-tuning results with known answers.

use bertline::report::claim::{claim_section, compare, verdict, verdict_line, Verdict};
use bertline::report::{ArmResult, Block, TaskResult};

fn task(name: &str, pre: &[f64], scratch: &[f64]) -> TaskResult {
    let arm = |s: &[f64], lr: f64| ArmResult {
        scores: s.to_vec(),
        learning_rate: Some(lr),
        ..ArmResult::default()
    };
    TaskResult {
        task: name.into(),
        metric: Some("accuracy".into()),
        pretrained: Some(arm(pre, 3e-4)),
        scratch: Some(arm(scratch, 1e-3)),
    }
}

#[test]
fn paired_differences_and_their_std() {
    let c = compare(&task("SST-2", &[0.75, 0.77, 0.80], &[0.70, 0.71, 0.72])).unwrap();
    assert_eq!(c.task, "sst2");
    assert_eq!(c.seeds, 3);
    let d: Vec<f64> = c
        .differences
        .iter()
        .map(|d| (d * 1e6).round() / 1e6)
        .collect();
    assert_eq!(d, vec![5.0, 6.0, 8.0]);
    assert!((c.difference() - 19.0 / 3.0).abs() < 1e-9);
    // Differences 5, 6, 8: mean 6.333, sample variance (1.777+0.111+2.777)/2 = 2.333.
    assert!((c.difference_std().unwrap() - 2.333_333f64.sqrt()).abs() < 1e-5);
    assert!((c.pretrained_mean - 77.333_333).abs() < 1e-5);
}

#[test]
fn held_needs_sst2_and_one_other_over_three_seeds() {
    let sst2 = task("sst2", &[0.75, 0.76, 0.77], &[0.70, 0.71, 0.72]);
    let stsb_ahead = task("stsb", &[0.30, 0.32, 0.31], &[0.15, 0.16, 0.17]);
    let stsb_level = task("stsb", &[0.16, 0.17, 0.15], &[0.15, 0.16, 0.17]);
    let wnli_ahead = task("wnli", &[0.60, 0.60, 0.60], &[0.40, 0.40, 0.40]);
    let cmp = |ts: &[TaskResult]| ts.iter().filter_map(compare).collect::<Vec<_>>();
    assert_eq!(
        verdict(&cmp(&[sst2.clone(), stsb_ahead.clone()])),
        Verdict::Held
    );
    // WNLI ahead does not count.
    assert!(matches!(
        verdict(&cmp(&[sst2.clone(), stsb_level, wnli_ahead])),
        Verdict::NotHeld(_)
    ));
    // SST-2 level: not held, whatever STS-B does.
    let sst2_level = task("sst2", &[0.71, 0.71, 0.71], &[0.70, 0.71, 0.72]);
    let line = verdict_line(&cmp(&[sst2_level, stsb_ahead.clone()]));
    assert!(line.starts_with("NOT HELD: SST-2 +0.0"), "{line}");
    // Two seeds: no verdict.
    let two = task("sst2", &[0.75, 0.76], &[0.70, 0.71]);
    assert!(matches!(
        verdict(&cmp(&[two, stsb_ahead])),
        Verdict::NotMeasured(_)
    ));
    // No scratch arm: no verdict.
    let mut alone = sst2;
    alone.scratch = None;
    assert!(verdict_line(&cmp(&[alone])).starts_with("NOT MEASURED"));
}

#[test]
fn section_lists_every_compared_task() {
    let tasks = vec![
        task("sst2", &[0.75, 0.76, 0.77], &[0.70, 0.71, 0.72]),
        task("wnli", &[0.5, 0.5, 0.5], &[0.5, 0.5, 0.5]),
    ];
    let s = claim_section(Some(&tasks));
    let Block::Table(t) = &s.blocks[1] else {
        panic!("{:?}", s.blocks)
    };
    assert_eq!(t.rows.len(), 2);
    assert_eq!(t.rows[0][5], "+5.0 ± 0.0");
    assert_eq!(t.rows[1][7], "no: chance-level task");
}
