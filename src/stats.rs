//! Summary statistics of masked-LM instances, to compare a run with Google's
//! `create_pretraining_data.py`: average length, random-next rate, masked positions per
//! instance and the `[MASK]` / random / kept split. The main type is [`InstanceStats`].

use std::fmt;

use serde::{Serialize, Serializer};

use crate::shard::{InstanceColumns, InstanceShard, TrainingInstance};

/// Counts over instances; the averages are derived from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceStats {
    /// Instances seen.
    pub instances: u64,
    /// Non-pad tokens, `[CLS]` and `[SEP]` included.
    pub tokens: u64,
    /// Instances whose `B` is a random span.
    pub random_next: u64,
    /// Masked positions (real predictions, not padding).
    pub masked: u64,
    /// Masked positions showing `[MASK]`.
    pub shown_mask: u64,
    /// Masked positions showing their original token.
    pub shown_kept: u64,
    /// Masked positions showing another token.
    pub shown_random: u64,
}

impl InstanceStats {
    /// Stats over shards as read back with `shard::read_instances`.
    pub fn from_shards(shards: impl IntoIterator<Item = InstanceShard>, mask_id: u32) -> Self {
        let mut stats = InstanceStats::default();
        for shard in shards {
            stats.add_shard(&shard, mask_id);
        }
        stats
    }

    /// Adds every row of a shard.
    pub fn add_shard(&mut self, shard: &InstanceShard, mask_id: u32) {
        let (seq_len, max_predictions) = (shard.seq_len, shard.max_predictions);
        for row in 0..shard.batch {
            let input_ids = &shard.input_ids[row * seq_len..(row + 1) * seq_len];
            let attention = &shard.attention_mask[row * seq_len..(row + 1) * seq_len];
            let predictions = row * max_predictions..(row + 1) * max_predictions;
            self.instances += 1;
            self.tokens += attention.iter().filter(|&&m| m != 0).count() as u64;
            self.random_next += u64::from(shard.next_sentence_label[row] != 0);
            for p in predictions {
                if shard.masked_lm_weights[p] > 0.0 {
                    let shown = input_ids[shard.masked_lm_positions[p] as usize];
                    self.add_masked(shown, shard.masked_lm_ids[p], mask_id);
                }
            }
        }
    }

    /// Adds one instance before it is padded and written.
    pub fn add_instance(&mut self, instance: &TrainingInstance, mask_id: u32) {
        self.instances += 1;
        self.tokens += instance.tokens.len() as u64;
        self.random_next += u64::from(instance.is_random_next);
        for (&position, &label) in instance
            .masked_lm_positions
            .iter()
            .zip(&instance.masked_lm_labels)
        {
            self.add_masked(instance.tokens[position as usize], label, mask_id);
        }
    }

    /// Adds every instance of a shard in columns, before it is padded and written.
    pub fn add_columns(&mut self, instances: &InstanceColumns, mask_id: u32) {
        self.instances += instances.len() as u64;
        self.tokens += instances.input_ids.values.len() as u64;
        self.random_next += instances
            .next_sentence_label
            .iter()
            .map(|&l| u64::from(l))
            .sum::<u64>();
        for i in 0..instances.len() {
            let tokens = instances.input_ids.row(i);
            let positions = instances.masked_lm_positions.row(i);
            for (&position, &label) in positions.iter().zip(instances.masked_lm_ids.row(i)) {
                self.add_masked(tokens[position as usize], label, mask_id);
            }
        }
    }

    /// Classifies a masked position by what the model is shown. A random draw that happens
    /// to be `[MASK]` or the label itself counts as mask or kept, as the model sees it.
    fn add_masked(&mut self, shown: u32, label: u32, mask_id: u32) {
        self.masked += 1;
        if shown == mask_id {
            self.shown_mask += 1;
        } else if shown == label {
            self.shown_kept += 1;
        } else {
            self.shown_random += 1;
        }
    }

    /// Adds another set of counts (e.g. from another thread).
    pub fn merge(&mut self, other: &InstanceStats) {
        self.instances += other.instances;
        self.tokens += other.tokens;
        self.random_next += other.random_next;
        self.masked += other.masked;
        self.shown_mask += other.shown_mask;
        self.shown_kept += other.shown_kept;
        self.shown_random += other.shown_random;
    }

    fn ratio(num: u64, den: u64) -> f64 {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    }

    /// Average non-pad tokens per instance.
    pub fn avg_tokens(&self) -> f64 {
        Self::ratio(self.tokens, self.instances)
    }

    /// Fraction of instances with a random next sentence.
    pub fn random_next_fraction(&self) -> f64 {
        Self::ratio(self.random_next, self.instances)
    }

    /// Average masked positions per instance.
    pub fn avg_masked(&self) -> f64 {
        Self::ratio(self.masked, self.instances)
    }

    /// Fraction of masked positions showing `[MASK]` (BERT: 0.8).
    pub fn mask_fraction(&self) -> f64 {
        Self::ratio(self.shown_mask, self.masked)
    }

    /// Fraction of masked positions showing a random token (BERT: 0.1).
    pub fn random_fraction(&self) -> f64 {
        Self::ratio(self.shown_random, self.masked)
    }

    /// Fraction of masked positions showing the original token (BERT: 0.1).
    pub fn kept_fraction(&self) -> f64 {
        Self::ratio(self.shown_kept, self.masked)
    }
}

/// The JSON form: counts and derived averages.
#[derive(Serialize)]
struct StatsRecord {
    instances: u64,
    tokens: u64,
    random_next: u64,
    masked: u64,
    shown_mask: u64,
    shown_kept: u64,
    shown_random: u64,
    avg_tokens: f64,
    random_next_fraction: f64,
    avg_masked: f64,
    mask_fraction: f64,
    random_fraction: f64,
    kept_fraction: f64,
}

impl Serialize for InstanceStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        StatsRecord {
            instances: self.instances,
            tokens: self.tokens,
            random_next: self.random_next,
            masked: self.masked,
            shown_mask: self.shown_mask,
            shown_kept: self.shown_kept,
            shown_random: self.shown_random,
            avg_tokens: self.avg_tokens(),
            random_next_fraction: self.random_next_fraction(),
            avg_masked: self.avg_masked(),
            mask_fraction: self.mask_fraction(),
            random_fraction: self.random_fraction(),
            kept_fraction: self.kept_fraction(),
        }
        .serialize(serializer)
    }
}

impl fmt::Display for InstanceStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("instances", format!("{}", self.instances), ""),
            (
                "avg non-pad tokens",
                format!("{:.1}", self.avg_tokens()),
                "",
            ),
            (
                "random next",
                format!("{:.3}", self.random_next_fraction()),
                "Google: ~0.5 and up",
            ),
            (
                "avg masked positions",
                format!("{:.2}", self.avg_masked()),
                "",
            ),
            (
                "  [MASK]",
                format!("{:.3}", self.mask_fraction()),
                "BERT: 0.8",
            ),
            (
                "  random",
                format!("{:.3}", self.random_fraction()),
                "BERT: 0.1",
            ),
            (
                "  kept",
                format!("{:.3}", self.kept_fraction()),
                "BERT: 0.1",
            ),
        ];
        writeln!(f, "{:<22} {:>10}", "statistic", "value")?;
        for (name, value, note) in rows {
            let line = format!("{name:<22} {value:>10}  {note}");
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}
