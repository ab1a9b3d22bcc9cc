//! The basic-auth filter (being written).
