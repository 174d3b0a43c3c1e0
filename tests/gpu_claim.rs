//! The prepared GPU run of the claim (scripts/gpu_claim.sh), what of it runs without a GPU:
//! the `gpu` profile loads with its tasks and full training sets, and scripts/fit_steps.py
//! (which sizes the profile's pre-training to the time left) rewrites exactly the `# gpu
//! steps` lines of that profile, into a file the config loader reads back. Needs python3
//! (skipped without it).

use std::path::PathBuf;

mod script_common;
use script_common::{repo, run_script};

/// Runs fit_steps.py on a copy of the shipped pipeline.toml; `None` without python3.
fn fit_steps(step_s: &str, seconds: &str) -> Option<(std::process::Output, PathBuf, String)> {
    let dir = tempfile::tempdir().unwrap().keep();
    let toml = dir.join("pipeline.toml");
    let before = std::fs::read_to_string(repo("pipeline.toml")).unwrap();
    std::fs::write(&toml, &before).unwrap();
    let output = run_script(
        "fit_steps.py",
        [toml.to_str().unwrap(), "gpu", step_s, seconds],
    )?;
    Some((output, toml, before))
}

#[test]
fn the_gpu_profile_fine_tunes_four_tasks_on_full_training_sets_with_both_arms() {
    let loaded = bertline::config::load_config(&repo("pipeline.toml"), "gpu").unwrap();
    let ft = &loaded.config.finetune;
    assert_eq!(ft.tasks, ["sst2", "mrpc", "stsb", "cola"]);
    assert_eq!(ft.max_train_examples, 0);
    assert_eq!(ft.seeds.len(), 3);
    assert!(ft.compare_scratch && ft.learning_rates.len() >= 2);
    // Read from the config, not expanded: the Wikipedia globs point outside the repository.
    let tsv = loaded
        .config
        .corpus
        .input
        .iter()
        .filter(|f| f.ends_with("/train.tsv"))
        .count();
    assert_eq!(tsv, 4, "the four tasks' train.tsv as pre-training text");
}

#[test]
fn fit_steps_sizes_only_the_gpu_profile_and_the_result_loads() {
    // 420 s at 0.06 s/step, 90% of it: 6,300 steps (rounded down to hundreds).
    let Some((output, toml, before)) = fit_steps("0.06", "420") else {
        return;
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let after = std::fs::read_to_string(&toml).unwrap();
    let changed: Vec<(&str, &str)> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(changed.len(), 4, "{changed:?}");
    let loaded = bertline::config::load_config(&toml, "gpu").unwrap();
    let p = &loaded.config.pretrain;
    assert_eq!(
        (
            p.num_train_steps,
            p.num_warmup_steps,
            p.eval_every_steps,
            p.save_checkpoints_steps
        ),
        (6300, 315, 1575, 1575)
    );
    // Every other profile reads as before.
    let other = bertline::config::load_config(&toml, "wiki-gpu").unwrap();
    let shipped = bertline::config::load_config(&repo("pipeline.toml"), "wiki-gpu").unwrap();
    assert_eq!(other.config.pretrain, shipped.config.pretrain);
}

#[test]
fn fit_steps_refuses_a_budget_of_under_500_steps_and_leaves_the_file_alone() {
    let Some((output, toml, before)) = fit_steps("1.0", "420") else {
        return;
    };
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("only 300 steps fit"));
    assert_eq!(std::fs::read_to_string(&toml).unwrap(), before);
}
