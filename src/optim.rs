//! TODO: optim
