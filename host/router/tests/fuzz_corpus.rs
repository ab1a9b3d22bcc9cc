//! Replays the fuzz corpora of the `normalize` and `router` targets (fuzz/corpus, the
//! hand-written fuzz/seeds and any fuzz/regressions) through the checks the fuzz targets run, so
//! the normal test suite catches a regression without nightly or libFuzzer.

#[path = "../../../fuzz/checks/normalize.rs"]
mod normalize;
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;
#[path = "../../../fuzz/checks/router.rs"]
mod router;

#[test]
fn normalize_corpus() {
    replay::replay(
        &["corpus/normalize", "seeds/normalize"],
        &["regressions/normalize"],
        normalize::check,
    );
}

#[test]
fn router_corpus() {
    let router = router::router();
    replay::replay(
        &["corpus/router", "seeds/router"],
        &["regressions/router"],
        |data| router::check(&router, data),
    );
}
