//! Replays fuzz inputs through a check, for the corpus replay tests on stable Rust
//! (host/router/tests/fuzz_corpus.rs, host/config/tests/fuzz_corpus.rs).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The files of `dir` (a path under fuzz/), sorted; hidden files are skipped. `None` when the
/// directory does not exist.
fn inputs(dir: &Path) -> Option<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| {
            path.is_file()
                && !path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    Some(files)
}

/// Runs `check` on every file of the `required` directories, which must exist and not be empty,
/// and of the `optional` ones that exist (all relative to fuzz/). Fails naming every input whose
/// check panicked.
pub fn replay(required: &[&str], optional: &[&str], check: impl Fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for dir in required {
        let found = inputs(&fuzz.join(dir))
            .unwrap_or_else(|| panic!("fuzz/{dir} is missing: the corpus must be committed"));
        assert!(!found.is_empty(), "fuzz/{dir} is empty");
        files.extend(found);
    }
    for dir in optional {
        files.extend(inputs(&fuzz.join(dir)).unwrap_or_default());
    }
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs failed (messages above):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
    println!("replayed {} inputs", files.len());
}
