//! weir-router
