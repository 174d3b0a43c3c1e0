//! Shared by the tests that run the stages through their library entry points, as the
//! binaries do.
#![allow(dead_code)]

use std::path::Path;

use bertline::progress::{NoProgress, Progress};
use bertline::stage::{Outcome, StageCtx, StageOptions};

/// A stage's entry point: every stage has this shape.
pub type StageFn = fn(&StageCtx, &dyn Progress) -> bertline::Result<Outcome>;

/// vocab, pairs, mask, pretrain and finetune, in pipeline order.
pub const STAGES: [StageFn; 5] = [
    bertline::tokenize::run_vocab,
    bertline::pairs::run,
    bertline::mask::run,
    bertline::pretrain::run,
    bertline::finetune::run,
];

/// The run of `config`'s `profile`, not forced.
pub fn open(config: &Path, profile: &str, verify: bool) -> StageCtx {
    StageCtx::open(StageOptions {
        config: config.to_path_buf(),
        profile: profile.into(),
        force: false,
        verify,
    })
    .unwrap()
}

/// Runs `stages` in order; for each, whether it was skipped as fresh.
pub fn run_stages(ctx: &StageCtx, stages: &[StageFn]) -> Vec<bool> {
    stages
        .iter()
        .map(|run| run(ctx, &NoProgress).unwrap().skipped())
        .collect()
}

/// Opens the run again and runs `stages` over the unchanged config: every one is skipped.
pub fn assert_rerun_skips(config: &Path, profile: &str, verify: bool, stages: &[StageFn]) {
    let ctx = open(config, profile, verify);
    assert_eq!(
        run_stages(&ctx, stages),
        vec![true; stages.len()],
        "a second run over an unchanged config skips every stage"
    );
}
