//! The pre-training loop (MLM + NSP, BERT §3.1, §A.2). Filled in once the stage framework
//! lands; see `stages/pretrain`.
