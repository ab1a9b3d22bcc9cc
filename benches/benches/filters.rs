//! The cost of a wasm filter per request: one phase call plus the request's `context-done`, for
//! a no-op filter and a header-editing one; and instantiating per request vs reusing instances.
//! The filter is tests/filters/testbed, built from source for wasm32-wasip2 on first run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir_filters::{Chain, Exchange, Pair, PairSpec, Props, Runtime, RuntimeOptions, Verdict};

fn testbed() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target").join("wasm-bench");
    let ok = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "weir-testbed",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .expect("cargo")
        .success();
    assert!(ok, "building the testbed filter failed");
    target.join("wasm32-wasip2/release/weir_testbed.wasm")
}

fn spec(config: &str) -> PairSpec {
    PairSpec {
        filter: "bench".into(),
        config: config.to_string(),
        memory: 16 << 20,
        time_per_phase: std::time::Duration::from_millis(50),
        max_body: 1 << 20,
        max_instances: 4,
        on_error: weir_config::FailurePolicy::FailClosed,
        grants: Default::default(),
    }
}

fn exchange(props: &Arc<Props>) -> Exchange {
    let mut ex = Exchange {
        method: http::Method::GET,
        path: "/v1/users/42".into(),
        props: props.clone(),
        ..Default::default()
    };
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench"),
        ("accept", "*/*"),
    ] {
        ex.request_headers
            .insert(k, http::HeaderValue::from_static(v));
    }
    ex
}

fn filters(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let wasm = std::fs::read(testbed()).expect("testbed wasm");
    let runtime = Runtime::new(RuntimeOptions::default()).expect("filter runtime");
    let module = runtime.load("testbed", &wasm).expect("load testbed");
    let registry = weir_observe::Registry::new();
    let props = Arc::new(Props {
        route: "bench".into(),
        cluster: "c".into(),
        ..Default::default()
    });

    let mut g = c.benchmark_group("filter_per_request");
    for (name, config) in [
        ("noop", r#"{"mode":"noop"}"#),
        (
            "header_edit",
            r#"{"mode":"header-edit","value":"x","tag":"t"}"#,
        ),
    ] {
        let pair = rt
            .block_on(Pair::new(&runtime, module.clone(), spec(config)))
            .expect("pair");
        let chain = Chain::new(vec![(pair, registry.filter(name, "bench"))]);
        g.bench_function(format!("{name}_reused_instance"), |b| {
            b.to_async(&rt).iter(|| async {
                let mut ex = exchange(&props);
                let mut cr = chain.start();
                let v = chain.request_headers(&mut cr, &mut ex).await;
                assert!(matches!(v, Verdict::Continue));
                if chain
                    .phases()
                    .contains(weir_filters::Phases::RESPONSE_HEADERS)
                {
                    ex.status = 200;
                    chain.response_headers(&mut cr, &mut ex).await;
                }
                chain.finish(&mut cr, &mut ex).await;
                ex
            })
        });
    }
    // Instance per request: what every request would pay without pooling (instantiate + configure).
    g.bench_function("noop_new_instance_per_request", |b| {
        b.to_async(&rt).iter(|| async {
            let pair = Pair::new(&runtime, module.clone(), spec(r#"{"mode":"noop"}"#))
                .await
                .expect("pair");
            let chain = Chain::new(vec![(pair, registry.filter("noop-fresh", "bench"))]);
            let mut ex = exchange(&props);
            let mut cr = chain.start();
            chain.request_headers(&mut cr, &mut ex).await;
            chain.finish(&mut cr, &mut ex).await;
        })
    });
    g.finish();
}

criterion_group!(benches, filters);
criterion_main!(benches);
