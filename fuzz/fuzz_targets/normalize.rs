//! `weir_router::normalize_path` under all nine path policies: the output is normal, a fixed
//! point, and (under the default policy) keeps its meaning however often an upstream decodes it.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/normalize.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
