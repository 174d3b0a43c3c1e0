//! Published figures the report sets this run's numbers beside: Google's pre-training data
//! statistics, the BERT paper's GLUE and SQuAD scores, and the GLUE scores of Google's
//! small BERT models. Every figure carries its source and whether it is a dev or a test score.

/// A statistic of the masked-LM data and the figure Google's generator gives for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataReference {
    /// Key in the `mask` stage's metrics.
    pub key: &'static str,
    /// What the row shows.
    pub label: &'static str,
    /// The figure from Google's `create_pretraining_data.py` at `max_seq_length = 128`.
    pub reference: f64,
    /// Decimal places to print.
    pub decimals: usize,
}

/// Where [`DATA_REFERENCES`] come from.
pub const DATA_REFERENCE_SOURCE: &str = "Google's create_pretraining_data.py on Wikipedia-style \
     text, max_seq_length 128, masked_lm_prob 0.15, max_predictions_per_seq 20 (approximate)";

/// The masked-LM data statistics compared against Google's generator, in display order.
///
/// Random-next is above one half because a document with a single segment left always
/// draws its B from another document.
pub const DATA_REFERENCES: &[DataReference] = &[
    DataReference {
        key: "avg_non_pad_tokens",
        label: "non-pad tokens per instance",
        reference: 111.0,
        decimals: 1,
    },
    DataReference {
        key: "random_next_fraction",
        label: "random-next fraction",
        reference: 0.56,
        decimals: 3,
    },
    DataReference {
        key: "avg_masked_positions",
        label: "masked positions per instance",
        reference: 16.5,
        decimals: 2,
    },
    // 80% of the time, replace with [MASK]
    DataReference {
        key: "mask_fraction",
        label: "masked positions replaced by [MASK]",
        reference: 0.80,
        decimals: 3,
    },
    // 10% of the time, replace with a random word
    DataReference {
        key: "random_fraction",
        label: "masked positions replaced by a random token",
        reference: 0.10,
        decimals: 3,
    },
    // 10% of the time, keep original
    DataReference {
        key: "kept_fraction",
        label: "masked positions kept unchanged",
        reference: 0.10,
        decimals: 3,
    },
];

/// Which split a published score was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The public dev set (what this pipeline measures).
    Dev,
    /// The hidden test set, scored by the GLUE evaluation server.
    Test,
}

impl Split {
    /// `dev` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

/// One column of published scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishedColumn {
    /// Column heading, e.g. `BERT-Tiny`.
    pub model: &'static str,
    /// Dev or test.
    pub split: Split,
    /// Where the numbers are printed.
    pub source: &'static str,
    /// `(task, score as printed, metric as printed)`; tasks use [`canonical_task`] names.
    pub scores: &'static [(&'static str, &'static str, &'static str)],
}

impl PublishedColumn {
    /// The score printed for `task`, with its metric, if this source has one.
    pub fn score(&self, task: &str) -> Option<(&'static str, &'static str)> {
        let task = canonical_task(task);
        self.scores
            .iter()
            .find(|(t, _, _)| *t == task)
            .map(|(_, score, metric)| (*score, *metric))
    }

    /// `BERT-Tiny (test)`.
    pub fn heading(&self) -> String {
        format!("{} ({})", self.model, self.split.as_str())
    }
}

/// Google's small-models release: GLUE test-server scores of BERT-Tiny (L=2, H=128).
pub const BERT_TINY: PublishedColumn = PublishedColumn {
    model: "BERT-Tiny",
    split: Split::Test,
    source: "google-research/bert README, small models table (GLUE test server)",
    scores: &[
        ("cola", "0.0", "MCC"),
        ("sst2", "83.2", "acc."),
        ("mrpc", "81.1/71.1", "F1/acc."),
        ("stsb", "74.3/73.6", "Pearson/Spearman"),
        ("qqp", "62.2/83.4", "F1/acc."),
        ("mnli", "70.2/70.3", "m/mm acc."),
        ("qnli", "81.5", "acc."),
        ("rte", "57.2", "acc."),
        ("wnli", "62.3", "acc."),
    ],
};

/// Google's small-models release: GLUE test-server scores of BERT-Mini (L=4, H=256).
pub const BERT_MINI: PublishedColumn = PublishedColumn {
    model: "BERT-Mini",
    split: Split::Test,
    source: "google-research/bert README, small models table (GLUE test server)",
    scores: &[
        ("cola", "0.0", "MCC"),
        ("sst2", "85.9", "acc."),
        ("mrpc", "81.1/71.8", "F1/acc."),
        ("stsb", "75.4/73.3", "Pearson/Spearman"),
        ("qqp", "66.4/86.2", "F1/acc."),
        ("mnli", "74.8/74.3", "m/mm acc."),
        ("qnli", "84.1", "acc."),
        ("rte", "57.9", "acc."),
        ("wnli", "62.3", "acc."),
    ],
};

/// BERT paper, Table 1: BERT-Base on the GLUE test server.
pub const BERT_BASE_TEST: PublishedColumn = PublishedColumn {
    model: "BERT-Base",
    split: Split::Test,
    source: "Devlin et al. 2018, Table 1 (GLUE test server); SQuAD: Table 2 has no \
             BERT-Base test score",
    scores: &[
        ("cola", "52.1", "MCC"),
        ("sst2", "93.5", "acc."),
        ("mrpc", "88.9", "F1"),
        ("stsb", "85.8", "Spearman"),
        ("qqp", "71.2", "F1"),
        ("mnli", "84.6/83.4", "m/mm acc."),
        ("qnli", "90.5", "acc."),
        ("rte", "66.4", "acc."),
    ],
};

/// BERT paper, Table 5 (GLUE dev, first row) and Table 2 (SQuAD v1.1 dev): BERT-Base.
pub const BERT_BASE_DEV: PublishedColumn = PublishedColumn {
    model: "BERT-Base",
    split: Split::Dev,
    source: "Devlin et al. 2018, Table 5 (GLUE dev) and Table 2 (SQuAD v1.1 dev, single)",
    scores: &[
        ("sst2", "92.7", "acc."),
        ("mrpc", "86.7", "acc."),
        ("mnli", "84.4", "m acc."),
        ("qnli", "88.4", "acc."),
        ("squad", "80.8/88.5", "EM/F1"),
    ],
};

/// The published columns, in the order the GLUE table shows them.
pub const PUBLISHED: [PublishedColumn; 4] = [BERT_TINY, BERT_MINI, BERT_BASE_TEST, BERT_BASE_DEV];

/// The tasks the GLUE table always lists, in the paper's order.
pub const STANDARD_TASKS: [&str; 9] = [
    "mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte", "squad",
];

/// Lower-cases and keeps only letters and digits, so `SST-2`, `sst_2` and `sst2` are one
/// task.
pub fn canonical_task(task: &str) -> String {
    let t: String = task
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .flat_map(char::to_lowercase)
        .collect();
    match t.as_str() {
        "squadv11" | "squad11" | "squadv1" => "squad".into(),
        "mnlim" | "mnlimatched" => "mnli".into(),
        _ => t,
    }
}

/// The name a task is printed under: `SST-2`, `STS-B`, `SQuAD v1.1`; other names unchanged.
pub fn task_display_name(task: &str) -> String {
    let name = match canonical_task(task).as_str() {
        "cola" => "CoLA",
        "sst2" => "SST-2",
        "mrpc" => "MRPC",
        "stsb" => "STS-B",
        "qqp" => "QQP",
        "mnli" => "MNLI-m",
        "mnlimm" | "mnlimismatched" => "MNLI-mm",
        "qnli" => "QNLI",
        "rte" => "RTE",
        "wnli" => "WNLI",
        "squad" => "SQuAD v1.1",
        _ => return task.to_string(),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_normalise_across_spellings() {
        assert_eq!(canonical_task("SST-2"), "sst2");
        assert_eq!(canonical_task("sts_b"), "stsb");
        assert_eq!(canonical_task("SQuAD v1.1"), "squad");
        assert_eq!(task_display_name("stsb"), "STS-B");
        assert_eq!(task_display_name("my_task"), "my_task");
    }

    #[test]
    fn published_scores_are_labelled_with_their_split() {
        assert_eq!(BERT_TINY.score("SST-2"), Some(("83.2", "acc.")));
        assert_eq!(BERT_MINI.score("qqp"), Some(("66.4/86.2", "F1/acc.")));
        assert_eq!(BERT_BASE_TEST.score("cola"), Some(("52.1", "MCC")));
        assert_eq!(BERT_BASE_DEV.score("squad"), Some(("80.8/88.5", "EM/F1")));
        assert_eq!(BERT_BASE_TEST.score("squad"), None);
        assert_eq!(BERT_TINY.heading(), "BERT-Tiny (test)");
        assert_eq!(BERT_BASE_DEV.heading(), "BERT-Base (dev)");
    }
}
