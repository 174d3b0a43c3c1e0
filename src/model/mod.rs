//! BERT in dfdx, on run-time shaped tensors, with Hugging Face parameter names.
//!
//! The structs mirror `transformers`' `modeling_bert.py` one for one, so every parameter is
//! reachable by its HF name ([`HfParams`]) and [`export`] reads and writes HF checkpoints.
//! Sizes come from [`BertConfig`] at run time: weights are `Tensor<(usize, usize), f32, D>`.
//! Activations are flattened to `(batch * seq, hidden)` matrices, so each linear layer is one
//! matmul over the whole batch.
//!
//! References:
//! - Devlin et al. 2018, *BERT* §3 (model, MLM + NSP), §A.2 (pre-training procedure).
//! - `transformers/models/bert/modeling_bert.py` (pinned: v4.44.2,
//!   <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/models/bert/modeling_bert.py>).
//! - candle's `candle-transformers/src/models/bert.rs` (struct layout and naming).
//!
//! Notes on dfdx 0.13 that shape this code:
//! - Every parameter is `.retaped::<T>()` before use, so its gradient reaches the tape.
//! - `accurate_gelu`'s value is exact but its gradient is wrong; [`gelu`] corrects it.
//! - Dropout masks are not drawn from the device rng: each is a [`Dropout`] description, a
//!   counter-based Philox function of (seed, step, site, element) that the kernels evaluate
//!   where they use it ([`device::philox`]), so a resumed run draws the same masks, on any
//!   device and thread count.

pub mod device;
pub mod embeddings;
pub mod encoder;
pub mod export;
pub mod heads;

use dfdx::shapes::{Axis, HasShape, Shape};
use dfdx::tensor::{Gradients, NoneTape, PutTape, SplitTape, Tape, Tensor, WithEmptyTape};
use dfdx::tensor_ops::MeanTo;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

pub use crate::config::BertConfig;
/// The device module's former name, kept for callers.
pub use device as kernels;
pub use device::{BertDevice, Dropout};
pub use embeddings::{BertEmbeddings, BertInputs};
pub use encoder::{
    BertAttention, BertEncoder, BertIntermediate, BertLayer, BertModel, BertOutput, BertPooler,
    BertSelfAttention, BertSelfOutput,
};
pub use heads::{
    BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
    BertLMPredictionHead, BertPreTrainingHeads, BertPredictionHeadTransform, MaskedLmBatch,
    PretrainingLoss, QuestionAnsweringOutput, SequenceClassifierOutput,
};

/// A run-time shaped matrix: weights `[out, in]` and activations `[rows, hidden]`.
pub type Matrix<D, T = NoneTape> = Tensor<(usize, usize), f32, D, T>;
/// A run-time shaped vector: biases, LayerNorm weights, per-row values.
pub type Vector<D, T = NoneTape> = Tensor<(usize,), f32, D, T>;
/// A scalar (losses).
pub type Scalar<D, T = NoneTape> = Tensor<(), f32, D, T>;
/// Token ids, token type ids or attention mask, `(batch, seq)`, as HF's `LongTensor` inputs.
pub type IdMatrix<D> = Tensor<(usize, usize), usize, D>;
/// The tape of a training forward pass.
pub type TrainTape<D> = dfdx::tensor::OwnedTape<f32, D>;

/// Whether dropout is active. In training, each dropout in forward order is the next *site*
/// of the mode's (seed, step), and its mask is the [`Dropout`] of that site: a pure function
/// of the seed, the step and the order of the calls, so a resumed run reproduces it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Dropout off (evaluation, inference).
    Eval,
    /// Dropout on.
    Train {
        /// The Philox key of every mask.
        seed: u64,
        /// The step (one counter word of every mask).
        step: u32,
        /// The site the next dropout takes.
        next_site: u32,
    },
}

impl Mode {
    /// Training mode with masks keyed by `seed`, step 0.
    pub fn train(seed: u64) -> Self {
        Self::train_step(seed, 0)
    }

    /// Training mode for `step` of a run keyed by `seed`.
    pub fn train_step(seed: u64, step: u32) -> Self {
        Mode::Train {
            seed,
            step,
            next_site: 0,
        }
    }

    /// True in training mode.
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train { .. })
    }

    /// The mask of the next dropout site, which it takes: `None` in evaluation mode or when
    /// `prob` is 0 (no site is taken then).
    pub fn next_dropout(&mut self, prob: f64) -> Option<Dropout> {
        let Mode::Train {
            seed,
            step,
            next_site,
        } = self
        else {
            return None;
        };
        if prob <= 0.0 {
            return None;
        }
        let site = *next_site;
        *next_site = next_site
            .checked_add(1)
            .expect("more than 2^32 dropout sites in one step");
        Some(Dropout::new(*seed, *step, site, prob))
    }

    /// The inverted-dropout mask for `n` values of the next site, materialised: each is 0 with
    /// probability `prob` and `1 / (1 - prob)` otherwise; `None` in evaluation mode or when
    /// `prob` is 0. The kernels take the [`Dropout`] description instead.
    pub fn dropout_mask(&mut self, n: usize, prob: f64) -> Option<Vec<f32>> {
        self.next_dropout(prob).map(|d| d.mask(n))
    }

    /// Inverted dropout on a matrix: zeroes each element with probability `prob` and scales
    /// the rest by `1 / (1 - prob)` in training mode; the identity in evaluation mode.
    pub fn dropout<D: BertDevice, T: Tape<f32, D>>(
        &mut self,
        x: Matrix<D, T>,
        prob: f64,
    ) -> Matrix<D, T> {
        match self.next_dropout(prob) {
            Some(d) => D::dropout(x, d),
            None => x,
        }
    }
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (HF `"gelu"`), with a correct gradient.
///
/// dfdx 0.13's `accurate_gelu` computes the exact value, but its derivative's `x·φ(x)` term is
/// `sqrt 2` times too large. We add `c·(e − stopgrad(e))` with `e = exp(−x²/2)` and
/// `c = (sqrt 2 − 1)/sqrt(2π)`: its value is exactly 0 and its derivative is
/// `−c·x·e = −(sqrt 2 − 1)·x·φ(x)`, which cancels the excess.
pub fn gelu<S: Shape, D: dfdx::tensor_ops::Device<f32>, T: Tape<f32, D>>(
    x: Tensor<S, f32, D, T>,
) -> Tensor<S, f32, D, T> {
    if !T::OWNS_TAPE {
        return x.accurate_gelu();
    }
    const C: f32 = (std::f64::consts::SQRT_2 - 1.0) as f32 * 0.398_942_3; // 1/sqrt(2π)
    let e = (x.with_empty_tape().square() * -0.5f32).exp();
    let (e_value, e_tape) = e.split_tape();
    // Two products of the same values: bitwise equal, so their difference is exactly 0.
    let zero = e_value.clone().put_tape(e_tape) * C - e_value * C;
    x.accurate_gelu() + zero
}

/// `torch.nn.Linear`: `y = x Wᵀ + b` with HF's weight layout `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear<D: BertDevice> {
    /// `[out_features, in_features]`.
    pub weight: Matrix<D>,
    /// `[out_features]`.
    pub bias: Vector<D>,
}

impl<D: BertDevice> Linear<D> {
    /// Weights `N(0, initializer_range)`, bias 0 (HF `BertPreTrainedModel._init_weights`).
    pub fn new(in_features: usize, out_features: usize, init: &mut Init<'_, D>) -> Self {
        Linear {
            weight: init.normal((out_features, in_features)),
            bias: init.zeros(out_features),
        }
    }

    /// `x Wᵀ + b` for `x: [rows, in]`.
    pub fn forward<T: Tape<f32, D>>(&self, x: Matrix<D, T>) -> Matrix<D, T> {
        D::linear(x, &self.weight, &self.bias)
    }
}

/// `torch.nn.LayerNorm` over the last axis, HF names `weight` (gamma) and `bias` (beta).
#[derive(Debug, Clone)]
pub struct LayerNorm<D: BertDevice> {
    /// Gamma, initialised to 1.
    pub weight: Vector<D>,
    /// Beta, initialised to 0.
    pub bias: Vector<D>,
    /// `layer_norm_eps` (1e-12 in BERT).
    pub eps: f64,
}

impl<D: BertDevice> LayerNorm<D> {
    /// Gamma 1, beta 0.
    pub fn new(size: usize, eps: f64, init: &mut Init<'_, D>) -> Self {
        LayerNorm {
            weight: init.ones(size),
            bias: init.zeros(size),
            eps,
        }
    }

    /// `(x − mean) / sqrt(var + eps) · weight + bias` along each row.
    pub fn forward<T: Tape<f32, D>>(&self, x: Matrix<D, T>) -> Matrix<D, T> {
        D::layer_norm(x, &self.weight, &self.bias, self.eps)
    }

    /// `LayerNorm(dropout(x) + residual)`: the end of a BERT sub-layer, as one op.
    pub fn forward_residual<T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        residual: Matrix<D, T>,
        dropout_prob: f64,
        mode: &mut Mode,
    ) -> Matrix<D, T> {
        let dropout = mode.next_dropout(dropout_prob);
        D::residual_layer_norm(x, residual, dropout, &self.weight, &self.bias, self.eps)
    }
}

/// `torch.nn.Embedding`: a `[num_embeddings, dim]` table.
#[derive(Debug, Clone)]
pub struct Embedding<D: BertDevice> {
    /// `[num_embeddings, embedding_dim]`.
    pub weight: Matrix<D>,
}

impl<D: BertDevice> Embedding<D> {
    /// `N(0, initializer_range)`; the `padding_idx` row, if any, is zero (as HF).
    pub fn new(num: usize, dim: usize, padding_idx: Option<usize>, init: &mut Init<'_, D>) -> Self {
        let mut values = init.normal_values(num * dim);
        if let Some(pad) = padding_idx.filter(|&p| p < num) {
            values[pad * dim..(pad + 1) * dim].fill(0.0);
        }
        Embedding {
            weight: init.device.tensor_from_vec(values, (num, dim)),
        }
    }

    /// Rows of the table at `ids`, `[ids.len(), dim]`.
    pub fn forward<T: Tape<f32, D>>(&self, ids: &Tensor<(usize,), usize, D>) -> Matrix<D, T> {
        use dfdx::tensor_ops::GatherTo;
        self.weight.retaped::<T>().gather(ids.clone())
    }
}

/// Parameter initialisation: the device plus a seeded rng, HF's `_init_weights`.
pub struct Init<'a, D: BertDevice> {
    /// Where the tensors are created.
    pub device: &'a D,
    /// Draws the weights.
    pub rng: &'a mut ChaCha8Rng,
    /// Standard deviation of the normal init (`initializer_range`, 0.02).
    pub std: f64,
}

impl<D: BertDevice> Init<'_, D> {
    fn normal_values(&mut self, n: usize) -> Vec<f32> {
        let normal = Normal::new(0.0f32, self.std as f32).expect("initializer_range is finite");
        (0..n).map(|_| normal.sample(&mut *self.rng)).collect()
    }

    /// A `N(0, std)` matrix.
    pub fn normal(&mut self, shape: (usize, usize)) -> Matrix<D> {
        let values = self.normal_values(shape.0 * shape.1);
        self.device.tensor_from_vec(values, shape)
    }

    /// A zero vector.
    pub fn zeros(&mut self, n: usize) -> Vector<D> {
        self.device.zeros_like(&(n,))
    }

    /// A vector of ones.
    pub fn ones(&mut self, n: usize) -> Vector<D> {
        self.device.tensor_from_vec(vec![1.0; n], (n,))
    }
}

/// Builds an [`Init`] for a model from `config.initializer_range`.
pub fn init<'a, D: BertDevice>(
    config: &BertConfig,
    device: &'a D,
    rng: &'a mut ChaCha8Rng,
) -> Init<'a, D> {
    Init {
        device,
        rng,
        std: config.initializer_range,
    }
}

/// Read access to one parameter, whatever its rank.
#[derive(Debug)]
pub enum ParamRef<'a, D: BertDevice> {
    /// A weight matrix or embedding table.
    Matrix(&'a Matrix<D>),
    /// A bias or LayerNorm vector.
    Vector(&'a Vector<D>),
}

/// Write access to one parameter, whatever its rank.
#[derive(Debug)]
pub enum ParamMut<'a, D: BertDevice> {
    /// A weight matrix or embedding table.
    Matrix(&'a mut Matrix<D>),
    /// A bias or LayerNorm vector.
    Vector(&'a mut Vector<D>),
}

impl<D: BertDevice> ParamRef<'_, D> {
    /// The shape, HF order (`[out, in]` for linear weights).
    pub fn shape(&self) -> Vec<usize> {
        match self {
            ParamRef::Matrix(t) => vec![t.shape().0, t.shape().1],
            ParamRef::Vector(t) => vec![t.shape().0],
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    /// True for an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values, row-major, copied to the host.
    pub fn to_vec(&self) -> Vec<f32> {
        match self {
            ParamRef::Matrix(t) => t.as_vec(),
            ParamRef::Vector(t) => t.as_vec(),
        }
    }

    /// Copies the values into `dst` (its length must be [`ParamRef::len`]).
    pub fn copy_into(&self, dst: &mut [f32]) {
        match self {
            ParamRef::Matrix(t) => t.copy_into(dst),
            ParamRef::Vector(t) => t.copy_into(dst),
        }
    }

    /// Copies this parameter's gradient in `grads` into `dst`; zeros if the tape never
    /// reached it.
    pub fn grad_into(&self, grads: &mut Gradients<f32, D>, dst: &mut [f32]) {
        match self {
            ParamRef::Matrix(t) => {
                grads.try_alloc_for(*t).expect("gradient allocation");
                grads.get(*t).copy_into(dst)
            }
            ParamRef::Vector(t) => {
                grads.try_alloc_for(*t).expect("gradient allocation");
                grads.get(*t).copy_into(dst)
            }
        }
    }

    /// This parameter's gradient in `grads`, row-major; zeros if the tape never reached it.
    pub fn grad(&self, grads: &mut Gradients<f32, D>) -> Vec<f32> {
        match self {
            ParamRef::Matrix(t) => {
                grads.try_alloc_for(*t).expect("gradient allocation");
                grads.get(*t).as_vec()
            }
            ParamRef::Vector(t) => {
                grads.try_alloc_for(*t).expect("gradient allocation");
                grads.get(*t).as_vec()
            }
        }
    }
}

impl<D: BertDevice> ParamMut<'_, D> {
    /// Read access.
    pub fn as_ref(&self) -> ParamRef<'_, D> {
        match self {
            ParamMut::Matrix(t) => ParamRef::Matrix(t),
            ParamMut::Vector(t) => ParamRef::Vector(t),
        }
    }

    /// Overwrites the values (row-major). Panics if `values` has the wrong length.
    pub fn copy_from(&mut self, values: &[f32]) {
        assert_eq!(values.len(), self.as_ref().len(), "parameter length");
        match self {
            ParamMut::Matrix(t) => t.copy_from(values),
            ParamMut::Vector(t) => t.copy_from(values),
        }
    }
}

/// Every parameter of a module by its Hugging Face name (`bert.encoder.layer.0...`).
pub trait HfParams<D: BertDevice> {
    /// Appends `(name, parameter)` for each parameter, names prefixed with `prefix`.
    fn collect_params<'a>(&'a self, prefix: &str, out: &mut Vec<(String, ParamRef<'a, D>)>);
    /// Mutable twin of [`HfParams::collect_params`], same order.
    fn collect_params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a, D>)>);

    /// All parameters, in a fixed order, by HF name.
    fn named_parameters(&self) -> Vec<(String, ParamRef<'_, D>)> {
        let mut out = Vec::new();
        self.collect_params("", &mut out);
        out
    }

    /// All parameters, mutable, same order as [`HfParams::named_parameters`].
    fn named_parameters_mut(&mut self) -> Vec<(String, ParamMut<'_, D>)> {
        let mut out = Vec::new();
        self.collect_params_mut("", &mut out);
        out
    }

    /// Total number of scalars.
    fn num_parameters(&self) -> usize {
        self.named_parameters().iter().map(|(_, p)| p.len()).sum()
    }
}

/// `prefix.segment`, or `segment` at the top.
pub(crate) fn join_name(prefix: &str, segment: &str) -> String {
    if prefix.is_empty() {
        segment.to_string()
    } else {
        format!("{prefix}.{segment}")
    }
}

impl<D: BertDevice> HfParams<D> for Matrix<D> {
    fn collect_params<'a>(&'a self, prefix: &str, out: &mut Vec<(String, ParamRef<'a, D>)>) {
        out.push((prefix.to_string(), ParamRef::Matrix(self)));
    }
    fn collect_params_mut<'a>(
        &'a mut self,
        prefix: &str,
        out: &mut Vec<(String, ParamMut<'a, D>)>,
    ) {
        out.push((prefix.to_string(), ParamMut::Matrix(self)));
    }
}

impl<D: BertDevice> HfParams<D> for Vector<D> {
    fn collect_params<'a>(&'a self, prefix: &str, out: &mut Vec<(String, ParamRef<'a, D>)>) {
        out.push((prefix.to_string(), ParamRef::Vector(self)));
    }
    fn collect_params_mut<'a>(
        &'a mut self,
        prefix: &str,
        out: &mut Vec<(String, ParamMut<'a, D>)>,
    ) {
        out.push((prefix.to_string(), ParamMut::Vector(self)));
    }
}

impl<D: BertDevice, M: HfParams<D>> HfParams<D> for Vec<M> {
    fn collect_params<'a>(&'a self, prefix: &str, out: &mut Vec<(String, ParamRef<'a, D>)>) {
        for (i, m) in self.iter().enumerate() {
            m.collect_params(&join_name(prefix, &i.to_string()), out);
        }
    }
    fn collect_params_mut<'a>(
        &'a mut self,
        prefix: &str,
        out: &mut Vec<(String, ParamMut<'a, D>)>,
    ) {
        for (i, m) in self.iter_mut().enumerate() {
            m.collect_params_mut(&join_name(prefix, &i.to_string()), out);
        }
    }
}

/// Implements [`HfParams`] for a struct from its list of `"HF segment" => field`.
macro_rules! hf_params {
    ($ty:ident { $($segment:literal => $field:ident),* $(,)? }) => {
        impl<D: $crate::model::BertDevice> $crate::model::HfParams<D> for $ty<D> {
            fn collect_params<'a>(
                &'a self,
                prefix: &str,
                out: &mut Vec<(String, $crate::model::ParamRef<'a, D>)>,
            ) {
                $( self.$field.collect_params(&$crate::model::join_name(prefix, $segment), out); )*
            }
            fn collect_params_mut<'a>(
                &'a mut self,
                prefix: &str,
                out: &mut Vec<(String, $crate::model::ParamMut<'a, D>)>,
            ) {
                $( self.$field.collect_params_mut(&$crate::model::join_name(prefix, $segment), out); )*
            }
        }
    };
}
pub(crate) use hf_params;

hf_params!(Linear { "weight" => weight, "bias" => bias });
hf_params!(LayerNorm { "weight" => weight, "bias" => bias });
hf_params!(Embedding { "weight" => weight });

/// Mean of a vector (a convenience for losses).
pub(crate) fn mean_of<D: BertDevice, T: Tape<f32, D>>(x: Vector<D, T>) -> Scalar<D, T> {
    x.mean::<(), Axis<0>>()
}
