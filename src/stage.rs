//! TODO: stage
