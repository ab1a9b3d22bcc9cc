//! weir-observe
