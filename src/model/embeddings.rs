//! BERT's input layer (§3.2): word + token type + position embeddings, LayerNorm, dropout,
//! and [`BertInputs`], one batch of token ids already on the device.

use super::BertDevice;
use dfdx::shapes::{Axis, HasShape};
use dfdx::tensor::{PutTape, SplitTape, Tape, Tensor};
use dfdx::tensor_ops::BroadcastTo;

use super::{hf_params, BertConfig, Embedding, IdMatrix, Init, LayerNorm, Matrix, Mode};
use crate::error::{Error, Result};

/// Added to attention scores of padding keys (Google's BERT and HF's classic value).
pub const MASKED_SCORE: f32 = -10000.0;

/// One batch of model inputs on the device, flattened to `batch * seq_len` rows.
#[derive(Debug, Clone)]
pub struct BertInputs<D: BertDevice> {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence (padded).
    pub seq_len: usize,
    /// `input_ids`, row-major `(batch, seq)` flattened.
    pub input_ids: Tensor<(usize,), usize, D>,
    /// `token_type_ids` (segment A = 0, B = 1), flattened.
    pub token_type_ids: Tensor<(usize,), usize, D>,
    /// `0, 1, .., seq_len - 1` for every sequence, flattened.
    pub position_ids: Tensor<(usize,), usize, D>,
    /// `(batch, seq)`: 0 for real tokens, [`MASKED_SCORE`] for padding.
    pub attention_bias: Matrix<D>,
    /// The token ids on the host (for the padding-row gradient rule).
    pub host_input_ids: Vec<usize>,
}

impl<D: BertDevice> BertInputs<D> {
    /// Builds the device tensors from row-major host arrays of `batch * seq_len` values.
    /// `attention_mask` is 1 for real tokens and 0 for padding.
    pub fn new(
        device: &D,
        batch: usize,
        seq_len: usize,
        input_ids: &[u32],
        token_type_ids: &[u32],
        attention_mask: &[u32],
    ) -> Self {
        let n = batch * seq_len;
        assert_eq!(input_ids.len(), n, "input_ids length");
        assert_eq!(token_type_ids.len(), n, "token_type_ids length");
        assert_eq!(attention_mask.len(), n, "attention_mask length");
        let ids: Vec<usize> = input_ids.iter().map(|&i| i as usize).collect();
        let types: Vec<usize> = token_type_ids.iter().map(|&i| i as usize).collect();
        let positions: Vec<usize> = (0..n).map(|i| i % seq_len).collect();
        let bias: Vec<f32> = attention_mask
            .iter()
            .map(|&m| if m == 0 { MASKED_SCORE } else { 0.0 })
            .collect();
        BertInputs {
            batch,
            seq_len,
            input_ids: device.tensor_from_vec(ids.clone(), (n,)),
            token_type_ids: device.tensor_from_vec(types, (n,)),
            position_ids: device.tensor_from_vec(positions, (n,)),
            attention_bias: device.tensor_from_vec(bias, (batch, seq_len)),
            host_input_ids: ids,
        }
    }

    /// Builds the inputs from HF-style `(batch, seq)` tensors.
    pub fn from_tensors(
        input_ids: &IdMatrix<D>,
        token_type_ids: &IdMatrix<D>,
        attention_mask: &IdMatrix<D>,
    ) -> Self {
        let (batch, seq_len) = *input_ids.shape();
        let to_u32 =
            |t: &IdMatrix<D>| -> Vec<u32> { t.as_vec().iter().map(|&x| x as u32).collect() };
        Self::new(
            input_ids.device(),
            batch,
            seq_len,
            &to_u32(input_ids),
            &to_u32(token_type_ids),
            &to_u32(attention_mask),
        )
    }

    /// Checks every id against the model's table sizes: a one-line error instead of an
    /// out-of-bounds panic inside the gather.
    pub fn check(&self, config: &BertConfig) -> Result<()> {
        if let Some(&bad) = self
            .host_input_ids
            .iter()
            .find(|&&i| i >= config.vocab_size)
        {
            return Err(Error::Model(format!(
                "token id {bad} is outside the vocabulary (vocab_size = {}): the shards were \
                 built with another vocabulary; rebuild them or fix model.vocab_size",
                config.vocab_size
            )));
        }
        if self.seq_len > config.max_position_embeddings {
            return Err(Error::Model(format!(
                "sequence length {} exceeds max_position_embeddings = {}",
                self.seq_len, config.max_position_embeddings
            )));
        }
        let types = self.token_type_ids.as_vec();
        if let Some(&bad) = types.iter().find(|&&t| t >= config.type_vocab_size) {
            return Err(Error::Model(format!(
                "token type id {bad} is outside type_vocab_size = {}",
                config.type_vocab_size
            )));
        }
        Ok(())
    }
}

// modeling_bert.py (v4.44.2): class BertEmbeddings
/// Word, position and token type embeddings, summed, normalised and dropped out.
#[derive(Debug, Clone)]
pub struct BertEmbeddings<D: BertDevice> {
    /// `[vocab_size, hidden]`, tied to the MLM decoder.
    pub word_embeddings: Embedding<D>,
    /// `[max_position_embeddings, hidden]`, learned absolute positions.
    pub position_embeddings: Embedding<D>,
    /// `[type_vocab_size, hidden]`, segments A and B.
    pub token_type_embeddings: Embedding<D>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<D>,
    /// `hidden_dropout_prob`.
    pub dropout_prob: f64,
    /// Rows of this id get no gradient from the lookup (`nn.Embedding(padding_idx=...)`).
    pub pad_token_id: usize,
}

hf_params!(BertEmbeddings {
    "word_embeddings" => word_embeddings,
    "position_embeddings" => position_embeddings,
    "token_type_embeddings" => token_type_embeddings,
    "LayerNorm" => layer_norm,
});

impl<D: BertDevice> BertEmbeddings<D> {
    /// Freshly initialised embeddings.
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        let h = config.hidden_size;
        BertEmbeddings {
            word_embeddings: Embedding::new(config.vocab_size, h, Some(config.pad_token_id), init),
            position_embeddings: Embedding::new(config.max_position_embeddings, h, None, init),
            token_type_embeddings: Embedding::new(config.type_vocab_size, h, None, init),
            layer_norm: LayerNorm::new(h, config.layer_norm_eps, init),
            dropout_prob: config.hidden_dropout_prob,
            pad_token_id: config.pad_token_id,
        }
    }

    /// `[batch * seq, hidden]` embeddings of `inputs`.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        inputs: &BertInputs<D>,
        mode: &mut Mode,
    ) -> Matrix<D, T> {
        let words = self.word_embeddings.forward::<T>(&inputs.input_ids);
        let words = self.stop_padding_gradient(words, inputs);
        let types = self
            .token_type_embeddings
            .forward::<T>(&inputs.token_type_ids);
        let positions = self.position_embeddings.forward::<T>(&inputs.position_ids);
        // HF order: (inputs_embeds + token_type_embeddings) + position_embeddings.
        let embeddings = words + types + positions;
        mode.dropout(self.layer_norm.forward(embeddings), self.dropout_prob)
    }

    /// `nn.Embedding(padding_idx=pad)` never sends gradient to the padding row from the lookup
    /// (the tied decoder still does). Rows looked up for padding keep their value and lose
    /// their tape: `v·keep + stopgrad(v)·(1 − keep)`.
    fn stop_padding_gradient<T: Tape<f32, D>>(
        &self,
        words: Matrix<D, T>,
        inputs: &BertInputs<D>,
    ) -> Matrix<D, T> {
        if !T::OWNS_TAPE || !inputs.host_input_ids.contains(&self.pad_token_id) {
            return words;
        }
        let shape = *words.shape();
        let keep: Vec<f32> = inputs
            .host_input_ids
            .iter()
            .map(|&id| if id == self.pad_token_id { 0.0 } else { 1.0 })
            .collect();
        let drop: Vec<f32> = keep.iter().map(|k| 1.0 - k).collect();
        let device = words.device().clone();
        let keep = device
            .tensor_from_vec(keep, (shape.0,))
            .broadcast_like::<_, Axis<1>>(&shape);
        let drop = device
            .tensor_from_vec(drop, (shape.0,))
            .broadcast_like::<_, Axis<1>>(&shape);
        let (value, tape) = words.split_tape();
        value.clone().put_tape(tape) * keep + value * drop
    }
}
