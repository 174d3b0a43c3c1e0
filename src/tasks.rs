//! TODO: tasks
