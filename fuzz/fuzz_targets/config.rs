//! `weir_config::LoadedConfig::from_str` on arbitrary text: never panics, and every error names
//! the file.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/config.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
