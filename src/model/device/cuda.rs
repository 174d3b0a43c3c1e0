//! dfdx's CUDA device: every kernel is the dfdx composition of [`super::reference`].

impl super::BertDevice for dfdx::tensor::Cuda {}
