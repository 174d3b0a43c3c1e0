//! TODO: model
