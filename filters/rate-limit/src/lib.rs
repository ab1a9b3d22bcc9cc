//! The rate-limit filter (being written).
