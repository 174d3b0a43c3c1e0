//! TODO: pairs
