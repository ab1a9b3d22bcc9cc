//! The cost of a wasm filter per request: one phase call plus the request's `context-done`, for
//! a no-op filter and a header-editing one, in each SDK language; and instantiating per request
//! vs reusing instances. The filters are the testbeds (tests/filters/testbed, -go, -as), built
//! from source on first run: Rust for wasm32-wasip2; Go (from `.tools/bin`, see scripts/lib.sh)
//! and AssemblyScript (root `node_modules`) as core modules the runtime componentizes. A
//! language whose toolchain is missing is skipped with a message. Also prints each language's
//! linear memory per instance.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir_filters::{Chain, Exchange, FilterSpec, InstancePool, Props, Runtime, RuntimeOptions};

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

/// The Go testbed as a core module (`go build`, wasip1 reactor), if Go is installed.
fn go_testbed(root: &Path) -> Option<PathBuf> {
    let out = root.join("target/wasm-bench/testbed-go.wasm");
    std::fs::create_dir_all(out.parent()?).ok()?;
    let local = root.join(".tools/bin/go");
    let go = if local.exists() {
        local
    } else {
        PathBuf::from("go")
    };
    let status = std::process::Command::new(go)
        .current_dir(root.join("tests/filters/testbed-go"))
        .args(["build", "-buildmode=c-shared", "-trimpath", "-o"])
        .arg(&out)
        .arg(".")
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm")
        .env("GOTOOLCHAIN", "local")
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        other => {
            eprintln!(
                "skipping Go: go build failed or Go is missing ({other:?}); run scripts/test.sh once"
            );
            None
        }
    }
}

/// The AssemblyScript testbed as a core module (`npm run build`), if the Node packages are in.
fn as_testbed(root: &Path) -> Option<PathBuf> {
    let dir = root.join("tests/filters/testbed-as");
    let status = std::process::Command::new("npm")
        .current_dir(&dir)
        .args(["run", "--silent", "build"])
        .status();
    match status {
        Ok(s) if s.success() => Some(dir.join("build/filter.wasm")),
        other => {
            eprintln!(
                "skipping AssemblyScript: npm run build failed ({other:?}); run scripts/test.sh once"
            );
            None
        }
    }
}

fn spec(config: &str) -> FilterSpec {
    FilterSpec {
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let runtime = Runtime::new(RuntimeOptions::default()).expect("filter runtime");
    let mut modules = vec![
        ("rust", Some(testbed())),
        ("go", go_testbed(&root)),
        ("as", as_testbed(&root)),
    ];
    let modules: Vec<_> = modules
        .drain(..)
        .filter_map(|(lang, path)| {
            let wasm = std::fs::read(path?).expect("testbed wasm");
            Some((lang, runtime.load(lang, &wasm).expect("load testbed")))
        })
        .collect();
    let registry = weir_observe::Registry::new();
    let props = Arc::new(Props {
        route: "bench".into(),
        cluster: "c".into(),
        ..Default::default()
    });

    let mut g = c.benchmark_group("filter_per_request");
    for (lang, module) in &modules {
        for (name, config) in [
            ("noop", r#"{"mode":"noop"}"#),
            (
                "header_edit",
                r#"{"mode":"header-edit","value":"x","tag":"t"}"#,
            ),
        ] {
            let pair = rt
                .block_on(InstancePool::new(&runtime, module.clone(), spec(config)))
                .expect("pair");
            if name == "noop" {
                eprintln!(
                    "{lang}: linear memory per instance: {:?} KiB",
                    pair.instance_memory()
                        .iter()
                        .map(|b| b / 1024)
                        .collect::<Vec<_>>()
                );
            }
            let chain = Chain::new(vec![(pair, registry.filter(name, "bench"))]);
            // The Rust names stay as they were, so earlier results compare.
            let id = match *lang {
                "rust" => format!("{name}_reused_instance"),
                _ => format!("{lang}_{name}_reused_instance"),
            };
            g.bench_function(id, |b| {
                b.to_async(&rt).iter(|| async {
                    let mut ex = exchange(&props);
                    let mut cr = chain.start();
                    let v = chain.request_headers(&mut cr, &mut ex).await;
                    assert!(v.is_ok());
                    if chain
                        .phases()
                        .contains(weir_filters::Phases::RESPONSE_HEADERS)
                    {
                        ex.status = 200;
                        assert!(chain.response_headers(&mut cr, &mut ex).await.is_ok());
                    }
                    chain.finish(&mut cr, &mut ex).await;
                    ex
                })
            });
        }
    }
    // Instance per request: what every request would pay without pooling (instantiate +
    // configure); for Go this includes starting the Go runtime.
    for (lang, module) in &modules {
        let id = match *lang {
            "rust" => "noop_new_instance_per_request".to_string(),
            _ => format!("{lang}_noop_new_instance_per_request"),
        };
        g.bench_function(id, |b| {
            b.to_async(&rt).iter(|| async {
                let pair = InstancePool::new(&runtime, module.clone(), spec(r#"{"mode":"noop"}"#))
                    .await
                    .expect("pair");
                let chain = Chain::new(vec![(pair, registry.filter("noop-fresh", "bench"))]);
                let mut ex = exchange(&props);
                let mut cr = chain.start();
                assert!(chain.request_headers(&mut cr, &mut ex).await.is_ok());
                chain.finish(&mut cr, &mut ex).await;
            })
        });
    }
    g.finish();
}

criterion_group!(benches, filters);
criterion_main!(benches);
