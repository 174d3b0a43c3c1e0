//! TODO: pretrain
