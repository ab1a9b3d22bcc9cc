//! The cors filter (being written).
