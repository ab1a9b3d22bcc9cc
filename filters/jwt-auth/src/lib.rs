//! The jwt-auth filter (being written).
