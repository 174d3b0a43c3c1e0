//! Fine-tuning (BERT §4): a linear head on the pooled `[CLS]` output for the GLUE tasks
//! (§4.1) and start/end scores for SQuAD (§4.2), trained with AdamW, 10% linear warmup then
//! linear decay, per task and seed, from this run's pre-trained checkpoint, an HF-format
//! BERT directory, or random weights (`compare_scratch` runs both).
//!
//! The steps follow Google's `run_classifier.py`: [`convert_examples_to_features`]
//! (`[CLS] A [SEP] B [SEP]`, [`truncate_pair_tails`]) → [`train_sequence_classifier`] →
//! [`predict_sequence_classifier`] → the official metrics of [`crate::metrics`]. SQuAD uses
//! [`crate::squad`] for features, span selection and the official EM / F1.
//!
//! [`run`] is the `finetune` stage: every task × initialisation × seed, dev
//! metrics with mean / median / std over seeds, per-seed dev predictions (JSON), GLUE test
//! predictions in submission format, and a summary in the manifest record.
//!
//! Batches are padded to their longest row, not to `max_seq_length`: with the attention mask
//! the logits are the same, and short GLUE sentences train several times faster.
//!
//! The seams, one module each: [`recipe`] (what a task trains with), [`features`] (examples
//! to padded id batches), [`train`] (the training loop and inference), [`results`] (what a
//! run and an arm over seeds scored), [`glue`] (one classification task), [`squad`] (SQuAD)
//! and [`stage`] (the `finetune` stage).

pub mod features;
pub mod glue;
pub mod recipe;
pub mod results;
pub mod squad;
pub mod stage;
pub mod train;

pub use features::*;
pub use glue::*;
pub use recipe::*;
pub use results::*;
pub use squad::*;
pub use stage::*;
pub use train::*;
