//! The Transformer encoder (BERT §3, Vaswani et al. 2017): post-LayerNorm layers of
//! multi-head self-attention with a padding mask and an exact-GELU feed-forward block,
//! the `[CLS]` pooler, and [`BertModel`] which ties them to the embeddings.

use super::BertDevice;
use dfdx::tensor::{Tape, WithEmptyTape};
use dfdx::tensor_ops::GatherTo;

use super::{
    hf_params, BertConfig, BertEmbeddings, BertInputs, IdMatrix, Init, LayerNorm, Linear, Matrix,
    Mode,
};

// modeling_bert.py (v4.44.2): class BertSelfAttention
/// Scaled dot-product attention over `num_attention_heads` heads, padding keys masked.
#[derive(Debug, Clone)]
pub struct BertSelfAttention<D: BertDevice> {
    pub query: Linear<D>,
    pub key: Linear<D>,
    pub value: Linear<D>,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `attention_probs_dropout_prob`.
    pub dropout_prob: f64,
}

hf_params!(BertSelfAttention { "query" => query, "key" => key, "value" => value });

impl<D: BertDevice> BertSelfAttention<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        let h = config.hidden_size;
        BertSelfAttention {
            query: Linear::new(h, h, init),
            key: Linear::new(h, h, init),
            value: Linear::new(h, h, init),
            num_attention_heads: config.num_attention_heads,
            dropout_prob: config.attention_probs_dropout_prob,
        }
    }

    /// Context vectors `[batch * seq, hidden]`:
    /// `softmax(Q Kᵀ / sqrt(d) + mask) V` per head, heads concatenated.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        hidden_states: Matrix<D, T>,
        inputs: &BertInputs<D>,
        mode: &mut Mode,
    ) -> Matrix<D, T> {
        let _span = tracing::span!(tracing::Level::TRACE, "self-attn").entered();
        let heads = self.num_attention_heads;
        let dropout = mode.next_dropout(self.dropout_prob);
        let (q, k, v) = (&self.query, &self.key, &self.value);
        D::self_attention(
            hidden_states,
            [&q.weight, &k.weight, &v.weight],
            [&q.bias, &k.bias, &v.bias],
            &inputs.attention_bias,
            heads,
            dropout,
        )
    }
}

// modeling_bert.py (v4.44.2): class BertSelfOutput
/// Projection of the attention context, dropout, residual, LayerNorm.
#[derive(Debug, Clone)]
pub struct BertSelfOutput<D: BertDevice> {
    pub dense: Linear<D>,
    pub layer_norm: LayerNorm<D>,
    pub dropout_prob: f64,
}

hf_params!(BertSelfOutput { "dense" => dense, "LayerNorm" => layer_norm });

impl<D: BertDevice> BertSelfOutput<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        let h = config.hidden_size;
        BertSelfOutput {
            dense: Linear::new(h, h, init),
            layer_norm: LayerNorm::new(h, config.layer_norm_eps, init),
            dropout_prob: config.hidden_dropout_prob,
        }
    }

    /// `LayerNorm(dropout(dense(x)) + input)`.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        hidden_states: Matrix<D, T>,
        input_tensor: Matrix<D, T>,
        mode: &mut Mode,
    ) -> Matrix<D, T> {
        let x = self.dense.forward(hidden_states);
        self.layer_norm
            .forward_residual(x, input_tensor, self.dropout_prob, mode)
    }
}

// modeling_bert.py (v4.44.2): class BertAttention
/// Self-attention plus its output block.
#[derive(Debug, Clone)]
pub struct BertAttention<D: BertDevice> {
    /// HF segment `self`.
    pub self_attention: BertSelfAttention<D>,
    pub output: BertSelfOutput<D>,
}

hf_params!(BertAttention { "self" => self_attention, "output" => output });

impl<D: BertDevice> BertAttention<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertAttention {
            self_attention: BertSelfAttention::new(config, init),
            output: BertSelfOutput::new(config, init),
        }
    }

    pub fn forward<T: Tape<f32, D>>(
        &self,
        hidden_states: Matrix<D, T>,
        inputs: &BertInputs<D>,
        mode: &mut Mode,
    ) -> Matrix<D, T> {
        let context = self
            .self_attention
            .forward(hidden_states.with_empty_tape(), inputs, mode);
        self.output.forward(context, hidden_states, mode)
    }
}

// modeling_bert.py (v4.44.2): class BertIntermediate
/// The feed-forward expansion: `gelu(dense(x))`, hidden -> intermediate.
#[derive(Debug, Clone)]
pub struct BertIntermediate<D: BertDevice> {
    pub dense: Linear<D>,
}

hf_params!(BertIntermediate { "dense" => dense });

impl<D: BertDevice> BertIntermediate<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertIntermediate {
            dense: Linear::new(config.hidden_size, config.intermediate_size, init),
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, hidden_states: Matrix<D, T>) -> Matrix<D, T> {
        D::gelu(self.dense.forward(hidden_states))
    }
}

// modeling_bert.py (v4.44.2): class BertOutput
/// The feed-forward contraction, dropout, residual, LayerNorm.
#[derive(Debug, Clone)]
pub struct BertOutput<D: BertDevice> {
    pub dense: Linear<D>,
    pub layer_norm: LayerNorm<D>,
    pub dropout_prob: f64,
}

hf_params!(BertOutput { "dense" => dense, "LayerNorm" => layer_norm });

impl<D: BertDevice> BertOutput<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertOutput {
            dense: Linear::new(config.intermediate_size, config.hidden_size, init),
            layer_norm: LayerNorm::new(config.hidden_size, config.layer_norm_eps, init),
            dropout_prob: config.hidden_dropout_prob,
        }
    }

    pub fn forward<T: Tape<f32, D>>(
        &self,
        intermediate: Matrix<D, T>,
        input_tensor: Matrix<D, T>,
        mode: &mut Mode,
    ) -> Matrix<D, T> {
        let x = self.dense.forward(intermediate);
        self.layer_norm
            .forward_residual(x, input_tensor, self.dropout_prob, mode)
    }
}

// modeling_bert.py (v4.44.2): class BertLayer
/// One Transformer block.
#[derive(Debug, Clone)]
pub struct BertLayer<D: BertDevice> {
    pub attention: BertAttention<D>,
    pub intermediate: BertIntermediate<D>,
    pub output: BertOutput<D>,
}

hf_params!(BertLayer {
    "attention" => attention,
    "intermediate" => intermediate,
    "output" => output,
});

impl<D: BertDevice> BertLayer<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertLayer {
            attention: BertAttention::new(config, init),
            intermediate: BertIntermediate::new(config, init),
            output: BertOutput::new(config, init),
        }
    }

    pub fn forward<T: Tape<f32, D>>(
        &self,
        hidden_states: Matrix<D, T>,
        inputs: &BertInputs<D>,
        mode: &mut Mode,
    ) -> Matrix<D, T> {
        let attention_output = self.attention.forward(hidden_states, inputs, mode);
        let _span = tracing::span!(tracing::Level::TRACE, "feed-forward").entered();
        let intermediate = self
            .intermediate
            .forward(attention_output.with_empty_tape());
        self.output.forward(intermediate, attention_output, mode)
    }
}

// modeling_bert.py (v4.44.2): class BertEncoder
/// `num_hidden_layers` blocks in sequence; HF segment `layer.{i}`.
#[derive(Debug, Clone)]
pub struct BertEncoder<D: BertDevice> {
    pub layer: Vec<BertLayer<D>>,
}

hf_params!(BertEncoder { "layer" => layer });

impl<D: BertDevice> BertEncoder<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertEncoder {
            layer: (0..config.num_hidden_layers)
                .map(|_| BertLayer::new(config, init))
                .collect(),
        }
    }

    pub fn forward<T: Tape<f32, D>>(
        &self,
        mut hidden_states: Matrix<D, T>,
        inputs: &BertInputs<D>,
        mode: &mut Mode,
    ) -> Matrix<D, T> {
        for layer in &self.layer {
            hidden_states = layer.forward(hidden_states, inputs, mode);
        }
        hidden_states
    }
}

// modeling_bert.py (v4.44.2): class BertPooler
/// `tanh(dense(h_[CLS]))`: the sentence representation for NSP and classification.
#[derive(Debug, Clone)]
pub struct BertPooler<D: BertDevice> {
    pub dense: Linear<D>,
}

hf_params!(BertPooler { "dense" => dense });

impl<D: BertDevice> BertPooler<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertPooler {
            dense: Linear::new(config.hidden_size, config.hidden_size, init),
        }
    }

    /// `[batch, hidden]` from the `[batch * seq, hidden]` sequence output.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        sequence_output: Matrix<D, T>,
        inputs: &BertInputs<D>,
    ) -> Matrix<D, T> {
        let first_tokens: Vec<usize> = (0..inputs.batch).map(|b| b * inputs.seq_len).collect();
        let idx = sequence_output
            .device()
            .tensor_from_vec(first_tokens, (inputs.batch,));
        self.dense.forward(sequence_output.gather(idx)).tanh()
    }
}

/// What [`BertModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct BertModelOutput<D: BertDevice, T> {
    /// Last layer's hidden states, `[batch * seq, hidden]`.
    pub sequence_output: Matrix<D, T>,
    /// Pooled `[CLS]`, `[batch, hidden]`.
    pub pooled_output: Matrix<D, T>,
}

// modeling_bert.py (v4.44.2): class BertModel
/// Embeddings, encoder and pooler: the body every head shares (HF prefix `bert`).
#[derive(Debug, Clone)]
pub struct BertModel<D: BertDevice> {
    pub embeddings: BertEmbeddings<D>,
    pub encoder: BertEncoder<D>,
    pub pooler: BertPooler<D>,
}

hf_params!(BertModel {
    "embeddings" => embeddings,
    "encoder" => encoder,
    "pooler" => pooler,
});

impl<D: BertDevice> BertModel<D> {
    pub fn new(config: &BertConfig, init: &mut Init<'_, D>) -> Self {
        BertModel {
            embeddings: BertEmbeddings::new(config, init),
            encoder: BertEncoder::new(config, init),
            pooler: BertPooler::new(config, init),
        }
    }

    /// Runs the body on HF-style `(batch, seq)` inputs.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        input_ids: &IdMatrix<D>,
        token_type_ids: &IdMatrix<D>,
        attention_mask: &IdMatrix<D>,
        mode: &mut Mode,
    ) -> BertModelOutput<D, T> {
        let inputs = BertInputs::from_tensors(input_ids, token_type_ids, attention_mask);
        self.forward_inputs(&inputs, mode)
    }

    /// Runs the body on prepared inputs. `sequence_output` carries the tape; the pooled
    /// output's own ops sit on a separate tape that the heads merge back.
    pub fn forward_inputs<T: Tape<f32, D>>(
        &self,
        inputs: &BertInputs<D>,
        mode: &mut Mode,
    ) -> BertModelOutput<D, T> {
        let sequence_output = self.sequence_output::<T>(inputs, mode);
        let pooled_output = self
            .pooler
            .forward(sequence_output.with_empty_tape(), inputs);
        BertModelOutput {
            sequence_output,
            pooled_output,
        }
    }

    /// The last layer's hidden states only (no pooler), `[batch * seq, hidden]`.
    pub fn sequence_output<T: Tape<f32, D>>(
        &self,
        inputs: &BertInputs<D>,
        mode: &mut Mode,
    ) -> Matrix<D, T> {
        let embeddings = self.embeddings.forward::<T>(inputs, mode);
        self.encoder.forward(embeddings, inputs, mode)
    }
}
