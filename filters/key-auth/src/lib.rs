//! The key-auth filter (being written).
