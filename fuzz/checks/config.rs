//! The `config` checks, shared by the fuzz target (fuzz/fuzz_targets/config.rs) and the corpus
//! replay test (host/config/tests/fuzz_corpus.rs).

use std::path::Path;

use weir_config::LoadedConfig;

/// Loads `data` (when it is UTF-8) as a config; errors are fine, panics are not, and every error
/// message names the file.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match LoadedConfig::from_str(Path::new("fuzz.yaml"), text) {
        Ok(loaded) => {
            // Formatting walks the whole config.
            let _ = format!("{loaded:?}");
        }
        Err(error) => {
            assert!(
                !error.issues().is_empty(),
                "an error without issues: {error:?}"
            );
            let message = error.to_string();
            assert!(
                message.starts_with("fuzz.yaml"),
                "the message does not name the file: {message:?}"
            );
        }
    }
}
