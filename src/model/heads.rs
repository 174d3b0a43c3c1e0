//! The heads on top of [`BertModel`]: pre-training (masked LM + next sentence, BERT §3.1)
//! and the fine-tuning heads of §4 (sequence classification / regression, SQuAD spans).
//!
//! The MLM head runs only on the masked positions: they are gathered first, so the
//! `[hidden, vocab]` decoder sees `batch * max_predictions_per_seq` rows, not every token.

use super::BertDevice;
use dfdx::shapes::Axis;
use dfdx::tensor::{PutTape, SplitTape, Tape, Tensor, WithEmptyTape};
use dfdx::tensor_ops::{GatherTo, ReshapeTo, SelectTo, SumTo};

use super::encoder::BertModelOutput;
use super::{
    hf_params, mean_of, BertConfig, BertInputs, BertModel, Init, LayerNorm, Linear, Matrix, Mode,
    Scalar, Vector,
};
use crate::shard::InstanceShard;

// modeling_bert.py (v4.44.2): class BertPredictionHeadTransform
/// `LayerNorm(gelu(dense(x)))` before the tied decoder.
#[derive(Debug, Clone)]
pub struct BertPredictionHeadTransform<D: BertDevice> {
    pub dense: Linear<D>,
    pub layer_norm: LayerNorm<D>,
}

hf_params!(BertPredictionHeadTransform { "dense" => dense, "LayerNorm" => layer_norm });

impl<D: BertDevice> BertPredictionHeadTransform<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        let h = config.hidden_size;
        BertPredictionHeadTransform {
            dense: Linear::new(h, h, init),
            layer_norm: LayerNorm::new(h, config.layer_norm_eps, init),
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, hidden_states: Matrix<D, T>) -> Matrix<D, T> {
        self.layer_norm
            .forward(D::gelu(self.dense.forward(hidden_states)))
    }
}

// modeling_bert.py (v4.44.2): class BertLMPredictionHead
/// Transform, then the decoder tied to the word embeddings, plus a per-token bias.
#[derive(Debug, Clone)]
pub struct BertLMPredictionHead<D: BertDevice> {
    pub transform: BertPredictionHeadTransform<D>,
    /// `[vocab_size]`, HF `cls.predictions.bias` (= `cls.predictions.decoder.bias`).
    pub bias: Vector<D>,
}

hf_params!(BertLMPredictionHead { "transform" => transform, "bias" => bias });

impl<D: BertDevice> BertLMPredictionHead<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertLMPredictionHead {
            transform: BertPredictionHeadTransform::new(config, init),
            bias: init.zeros(config.vocab_size),
        }
    }

    /// Vocabulary logits `[rows, vocab]`; `word_embeddings` is the tied decoder weight.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        hidden_states: Matrix<D, T>,
        word_embeddings: &Matrix<D>,
    ) -> Matrix<D, T> {
        let _span = tracing::span!(tracing::Level::TRACE, "mlm-head").entered();
        let x = self.transform.forward(hidden_states);
        D::linear(x, word_embeddings, &self.bias)
    }
}

// modeling_bert.py (v4.44.2): class BertPreTrainingHeads
/// The MLM head and the 2-way next-sentence classifier (HF prefix `cls`).
#[derive(Debug, Clone)]
pub struct BertPreTrainingHeads<D: BertDevice> {
    pub predictions: BertLMPredictionHead<D>,
    pub seq_relationship: Linear<D>,
}

hf_params!(BertPreTrainingHeads {
    "predictions" => predictions,
    "seq_relationship" => seq_relationship,
});

impl<D: BertDevice> BertPreTrainingHeads<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertPreTrainingHeads {
            predictions: BertLMPredictionHead::new(config, init),
            seq_relationship: Linear::new(config.hidden_size, 2, init),
        }
    }
}

pub use crate::shard::MaskedLmBatch;

impl MaskedLmBatch {
    /// Copies `rows` (`(shard, row index)`) into one batch. Every shard must have the same
    /// `seq_len` and `max_predictions`; the first decides.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = (&'a InstanceShard, usize)>) -> Self {
        let mut batch = MaskedLmBatch::default();
        for (shard, row) in rows {
            if batch.batch == 0 {
                batch.seq_len = shard.seq_len;
                batch.max_predictions = shard.max_predictions;
            }
            assert_eq!(
                shard.seq_len, batch.seq_len,
                "shards of one batch differ in seq_len"
            );
            assert_eq!(
                shard.max_predictions, batch.max_predictions,
                "max_predictions differ"
            );
            let (s, p) = (shard.seq_len, shard.max_predictions);
            let tokens = row * s..(row + 1) * s;
            let preds = row * p..(row + 1) * p;
            batch
                .input_ids
                .extend_from_slice(&shard.input_ids[tokens.clone()]);
            batch
                .token_type_ids
                .extend_from_slice(&shard.token_type_ids[tokens.clone()]);
            batch
                .attention_mask
                .extend_from_slice(&shard.attention_mask[tokens]);
            batch
                .masked_lm_positions
                .extend_from_slice(&shard.masked_lm_positions[preds.clone()]);
            batch
                .masked_lm_ids
                .extend_from_slice(&shard.masked_lm_ids[preds.clone()]);
            batch
                .masked_lm_weights
                .extend_from_slice(&shard.masked_lm_weights[preds]);
            batch
                .next_sentence_label
                .push(shard.next_sentence_label[row]);
            batch.batch += 1;
        }
        batch
    }

    /// Rows `range` of this batch (micro-batches for gradient accumulation).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        let (s, p) = (self.seq_len, self.max_predictions);
        let tok = range.start * s..range.end * s;
        let pred = range.start * p..range.end * p;
        MaskedLmBatch {
            batch: range.len(),
            seq_len: s,
            max_predictions: p,
            input_ids: self.input_ids[tok.clone()].to_vec(),
            token_type_ids: self.token_type_ids[tok.clone()].to_vec(),
            attention_mask: self.attention_mask[tok].to_vec(),
            masked_lm_positions: self.masked_lm_positions[pred.clone()].to_vec(),
            masked_lm_ids: self.masked_lm_ids[pred.clone()].to_vec(),
            masked_lm_weights: self.masked_lm_weights[pred].to_vec(),
            next_sentence_label: self.next_sentence_label[range].to_vec(),
        }
    }

    /// The model inputs on `device`.
    pub fn inputs<D: BertDevice>(&self, device: &D) -> BertInputs<D> {
        BertInputs::new(
            device,
            self.batch,
            self.seq_len,
            &self.input_ids,
            &self.token_type_ids,
            &self.attention_mask,
        )
    }

    /// Real tokens in the batch (for tokens/s).
    pub fn num_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }
}

/// The pre-training loss and what the logs report about it.
#[derive(Debug)]
pub struct PretrainingLoss<D: BertDevice, T> {
    /// `mlm_loss + nsp_loss`, carrying the tape.
    pub loss: Scalar<D, T>,
    /// Weighted mean cross-entropy over the masked positions.
    pub mlm_loss: f32,
    /// Mean next-sentence cross-entropy.
    pub nsp_loss: f32,
    /// Sum of weights of masked positions predicted right (argmax).
    pub mlm_correct: f64,
    /// Sum of masked-position weights.
    pub mlm_count: f64,
    /// Next-sentence labels predicted right.
    pub nsp_correct: usize,
    /// Sequences.
    pub nsp_count: usize,
}

// modeling_bert.py (v4.44.2): class BertForPreTraining
/// BERT with the MLM and NSP heads: what `pretrain` trains and saves.
#[derive(Debug, Clone)]
pub struct BertForPreTraining<D: BertDevice> {
    pub bert: BertModel<D>,
    pub cls: BertPreTrainingHeads<D>,
}

hf_params!(BertForPreTraining { "bert" => bert, "cls" => cls });

impl<D: BertDevice> BertForPreTraining<D> {
    /// A freshly initialised model (HF `_init_weights`).
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertForPreTraining {
            bert: BertModel::new(config, init),
            cls: BertPreTrainingHeads::new(config, init),
        }
    }

    /// MLM logits at the masked positions `[batch * max_predictions, vocab]` and NSP logits
    /// `[batch, 2]`. The MLM logits carry the tape; [`Self::loss`] merges both.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        inputs: &BertInputs<D>,
        masked_lm_positions: &[u32],
        mode: &mut Mode,
    ) -> (Matrix<D, T>, Matrix<D, T>) {
        let BertModelOutput {
            sequence_output,
            pooled_output,
        } = self.bert.forward_inputs::<T>(inputs, mode);
        let predictions = masked_lm_positions.len() / inputs.batch.max(1);
        let rows: Vec<usize> = masked_lm_positions
            .iter()
            .enumerate()
            .map(|(i, &pos)| (i / predictions) * inputs.seq_len + pos as usize)
            .collect();
        let idx = sequence_output
            .device()
            .tensor_from_vec(rows, (masked_lm_positions.len(),));
        let masked = sequence_output.gather(idx);
        let mlm_logits = self
            .cls
            .predictions
            .forward(masked, &self.bert.embeddings.word_embeddings.weight);
        let nsp_logits = self.cls.seq_relationship.forward(pooled_output);
        (mlm_logits, nsp_logits)
    }

    /// The pre-training loss of one batch (Google's `get_masked_lm_output` and
    /// `get_next_sentence_output`):
    /// `Σ w·nll / (Σ w + 1e-5)` over masked positions plus the mean NSP cross-entropy.
    pub fn loss<T: Tape<f32, D>>(
        &self,
        batch: &MaskedLmBatch,
        mode: &mut Mode,
    ) -> PretrainingLoss<D, T> {
        let inputs = batch.inputs(&self.bert.embeddings.word_embeddings.weight.device().clone());
        self.loss_on(&inputs, batch, mode)
    }

    /// [`Self::loss`] with the inputs already on the device.
    pub fn loss_on<T: Tape<f32, D>>(
        &self,
        inputs: &BertInputs<D>,
        batch: &MaskedLmBatch,
        mode: &mut Mode,
    ) -> PretrainingLoss<D, T> {
        let (mlm_logits, nsp_logits) = self.forward::<T>(inputs, &batch.masked_lm_positions, mode);
        let device = mlm_logits.device().clone();
        let m = batch.masked_lm_ids.len();
        let labels: Vec<usize> = batch.masked_lm_ids.iter().map(|&i| i as usize).collect();
        let (log_probs, is_max) = D::label_log_probs(mlm_logits, &labels);
        let mlm_count: f64 = batch.masked_lm_weights.iter().map(|&w| w as f64).sum();
        let mlm_correct: f64 = is_max
            .iter()
            .zip(&batch.masked_lm_weights)
            .filter(|(right, _)| **right)
            .map(|(_, &w)| w as f64)
            .sum();
        let nsp_correct = weighted_accuracy(
            &nsp_logits.as_vec(),
            2,
            &batch.next_sentence_label,
            &vec![1.0; batch.batch],
        )
        .0 as usize;

        let weights = device.tensor_from_vec(batch.masked_lm_weights.clone(), (m,));
        // Google: numerator / (denominator + 1e-5), so a batch without predictions is 0.
        let denominator = batch.masked_lm_weights.iter().sum::<f32>() + 1e-5;
        let mlm = (log_probs * weights).sum::<(), Axis<0>>() * (-1.0 / denominator);
        let nsp_labels: Vec<usize> = batch
            .next_sentence_label
            .iter()
            .map(|&l| l as usize)
            .collect();
        let nsp = cross_entropy(nsp_logits, &nsp_labels);
        let mlm_loss = mlm.as_vec()[0];
        let nsp_loss = nsp.as_vec()[0];
        PretrainingLoss {
            loss: mlm + nsp,
            mlm_loss,
            nsp_loss,
            mlm_correct,
            mlm_count,
            nsp_correct,
            nsp_count: batch.batch,
        }
    }
}

/// `(Σ w where argmax == label, Σ w)` over the rows of a row-major `[rows, classes]` array.
pub fn weighted_accuracy(
    logits: &[f32],
    classes: usize,
    labels: &[u32],
    weights: &[f32],
) -> (f64, f64) {
    let mut correct = 0.0;
    let mut total = 0.0;
    for ((row, &label), &w) in logits.chunks(classes).zip(labels).zip(weights) {
        total += w as f64;
        if argmax(row) == label as usize {
            correct += w as f64;
        }
    }
    (correct, total)
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// Mean cross-entropy of `[rows, classes]` logits against class ids
/// (`torch.nn.CrossEntropyLoss()`).
pub fn cross_entropy<D: BertDevice, T: Tape<f32, D>>(
    logits: Matrix<D, T>,
    labels: &[usize],
) -> Scalar<D, T> {
    let idx = logits
        .device()
        .tensor_from_vec(labels.to_vec(), (labels.len(),));
    let log_probs: Vector<D, T> = logits.log_softmax::<Axis<1>>().select(idx);
    mean_of(log_probs) * -1.0
}

/// Mean squared error of a `[rows, 1]` prediction (`torch.nn.MSELoss()` on squeezed logits).
pub fn mse<D: BertDevice, T: Tape<f32, D>>(
    predictions: Matrix<D, T>,
    targets: &[f32],
) -> Scalar<D, T> {
    let n = targets.len();
    let targets = predictions
        .device()
        .tensor_from_vec(targets.to_vec(), (n, 1));
    let diff = predictions - targets;
    diff.square().sum::<(), dfdx::shapes::Axes2<0, 1>>() * (1.0 / n as f32)
}

/// Moves the tape of `donor` into `keep` so nothing recorded on either is lost.
pub fn merge_tape<
    D: BertDevice,
    T: Tape<f32, D>,
    S1: dfdx::shapes::Shape,
    S2: dfdx::shapes::Shape,
>(
    keep: Tensor<S1, f32, D, T>,
    donor: Tensor<S2, f32, D, T>,
) -> Tensor<S1, f32, D, T> {
    let (keep, tape) = keep.split_tape();
    let (_, donor_tape) = donor.split_tape();
    keep.put_tape(tape.merge(donor_tape))
}

/// The logits of a sequence-classification forward pass.
pub type SequenceClassifierOutput<D, T> = Matrix<D, T>;

// modeling_bert.py (v4.44.2): class BertForSequenceClassification
/// GLUE-style head: dropout and a linear layer on the pooled `[CLS]` (BERT §4.1).
/// `num_labels == 1` is regression (STS-B) with a mean-squared-error loss.
#[derive(Debug, Clone)]
pub struct BertForSequenceClassification<D: BertDevice> {
    pub bert: BertModel<D>,
    pub classifier: Linear<D>,
    /// Output classes (1 = regression).
    pub num_labels: usize,
    /// `hidden_dropout_prob` (HF `classifier_dropout` defaults to it).
    pub dropout_prob: f64,
}

hf_params!(BertForSequenceClassification { "bert" => bert, "classifier" => classifier });

impl<D: BertDevice> BertForSequenceClassification<D> {
    pub fn new(config: &BertConfig, num_labels: usize, init: &mut Init<'_, D>) -> Self {
        BertForSequenceClassification {
            bert: BertModel::new(config, init),
            classifier: Linear::new(config.hidden_size, num_labels, init),
            num_labels,
            dropout_prob: config.hidden_dropout_prob,
        }
    }

    /// Logits `[batch, num_labels]` (carrying the whole tape).
    pub fn forward<T: Tape<f32, D>>(
        &self,
        inputs: &BertInputs<D>,
        mode: &mut Mode,
    ) -> SequenceClassifierOutput<D, T> {
        let out = self.bert.forward_inputs::<T>(inputs, mode);
        let pooled = merge_tape(out.pooled_output, out.sequence_output);
        let pooled = mode.dropout(pooled, self.dropout_prob);
        self.classifier.forward(pooled)
    }

    /// Cross-entropy against class ids, or MSE against scores when `num_labels == 1`.
    /// `labels` holds class ids as floats (0.0, 1.0, ...) or regression targets.
    pub fn loss<T: Tape<f32, D>>(&self, logits: Matrix<D, T>, labels: &[f32]) -> Scalar<D, T> {
        if self.num_labels == 1 {
            mse(logits, labels)
        } else {
            let classes: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
            cross_entropy(logits, &classes)
        }
    }
}

/// Start and end logits of a span-extraction forward pass, each `[batch, seq]`.
/// `start_logits` carries the tape; [`BertForQuestionAnswering::loss`] merges both.
#[derive(Debug)]
pub struct QuestionAnsweringOutput<D: BertDevice, T> {
    pub start_logits: Matrix<D, T>,
    pub end_logits: Matrix<D, T>,
}

// modeling_bert.py (v4.44.2): class BertForQuestionAnswering
/// SQuAD head (BERT §4.2): a start and an end score for every token.
#[derive(Debug, Clone)]
pub struct BertForQuestionAnswering<D: BertDevice> {
    pub bert: BertModel<D>,
    /// `[2, hidden]`: row 0 scores starts, row 1 ends.
    pub qa_outputs: Linear<D>,
}

hf_params!(BertForQuestionAnswering { "bert" => bert, "qa_outputs" => qa_outputs });

impl<D: BertDevice> BertForQuestionAnswering<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertForQuestionAnswering {
            bert: BertModel::new(config, init),
            qa_outputs: Linear::new(config.hidden_size, 2, init),
        }
    }

    pub fn forward<T: Tape<f32, D>>(
        &self,
        inputs: &BertInputs<D>,
        mode: &mut Mode,
    ) -> QuestionAnsweringOutput<D, T> {
        let (b, s) = (inputs.batch, inputs.seq_len);
        let sequence_output = self.bert.sequence_output::<T>(inputs, mode);
        let logits = self.qa_outputs.forward(sequence_output); // [b*s, 2]
        let device = logits.device().clone();
        let column = |c: usize| device.tensor_from_vec(vec![c; b * s], (b * s,));
        let start: Vector<D, T> = logits.with_empty_tape().select(column(0));
        let end: Vector<D, T> = logits.select(column(1));
        QuestionAnsweringOutput {
            start_logits: start.reshape_like(&(b, s)),
            end_logits: end.reshape_like(&(b, s)),
        }
    }

    /// `(CE(start) + CE(end)) / 2` against token positions (HF's `total_loss`).
    pub fn loss<T: Tape<f32, D>>(
        &self,
        output: QuestionAnsweringOutput<D, T>,
        start_positions: &[usize],
        end_positions: &[usize],
    ) -> Scalar<D, T> {
        let start = cross_entropy(output.start_logits, start_positions);
        let end = cross_entropy(output.end_logits, end_positions);
        (start + end) * 0.5
    }
}
