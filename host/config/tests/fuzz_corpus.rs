//! Replays the fuzz corpus of the `config` target (fuzz/corpus/config, the hand-written
//! fuzz/seeds/config and any fuzz/regressions/config) through the check the fuzz target runs, so
//! the normal test suite catches a regression without nightly or libFuzzer.

#[path = "../../../fuzz/checks/config.rs"]
mod config;
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn config_corpus() {
    replay::replay(
        &["corpus/config", "seeds/config"],
        &["regressions/config"],
        config::check,
    );
}
