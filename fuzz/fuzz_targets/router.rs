//! `weir_router::Router::find` on a fixed route table with arbitrary host, path, query and
//! headers: never panics, and host matching ignores case and one trailing dot.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use weir_router::Router;

#[path = "../checks/router.rs"]
mod checks;

static ROUTER: LazyLock<Router> = LazyLock::new(checks::router);

fuzz_target!(|data: &[u8]| checks::check(&ROUTER, data));
