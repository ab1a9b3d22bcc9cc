//! The transform filter (being written).
