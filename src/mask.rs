//! TODO: mask
