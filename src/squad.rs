//! TODO: squad
