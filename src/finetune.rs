//! TODO: finetune
