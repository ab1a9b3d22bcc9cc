//! Micro-benchmarks of the native data path's decisions: route lookup and balancer picks.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir_balance::{Balancer, Policy};
use weir_router::{PathMatch, RouteSpec, Router};

fn router(c: &mut Criterion) {
    // 200 routes: 50 hosts x (exact, 2 prefixes, regex), plus wildcards and a catch-all.
    let mut specs = Vec::new();
    for h in 0..50 {
        let host = Some(format!("svc{h}.example.com"));
        specs.push(RouteSpec {
            host: host.clone(),
            path: PathMatch::Exact("/health".into()),
            ..Default::default()
        });
        specs.push(RouteSpec {
            host: host.clone(),
            path: PathMatch::Prefix("/v1/".into()),
            ..Default::default()
        });
        specs.push(RouteSpec {
            host: host.clone(),
            path: PathMatch::Prefix("/v1/users/".into()),
            ..Default::default()
        });
        specs.push(RouteSpec {
            host,
            path: PathMatch::Regex("/v1/items/[0-9]+".into()),
            ..Default::default()
        });
    }
    specs.push(RouteSpec {
        host: Some("*.example.com".into()),
        ..Default::default()
    });
    specs.push(RouteSpec {
        path: PathMatch::Prefix("/".into()),
        ..Default::default()
    });
    let r = Router::new(specs).expect("router");
    let headers = http::HeaderMap::new();
    let get = http::Method::GET;
    let mut g = c.benchmark_group("router");
    g.bench_function("exact_host_prefix", |b| {
        b.iter(|| {
            r.find(
                &get,
                black_box(Some("svc37.example.com")),
                black_box("/v1/users/42"),
                None,
                &headers,
            )
        })
    });
    g.bench_function("exact_host_regex", |b| {
        b.iter(|| {
            r.find(
                &get,
                black_box(Some("svc37.example.com")),
                black_box("/v1/items/42"),
                None,
                &headers,
            )
        })
    });
    g.bench_function("wildcard_host", |b| {
        b.iter(|| {
            r.find(
                &get,
                black_box(Some("other.example.com")),
                black_box("/x"),
                None,
                &headers,
            )
        })
    });
    g.bench_function("normalize_clean_path", |b| {
        b.iter(|| {
            weir_router::normalize_path(
                black_box("/v1/users/42/profile"),
                weir_router::PathOptions::default(),
            )
        })
    });
    g.bench_function("normalize_encoded_path", |b| {
        b.iter(|| {
            weir_router::normalize_path(
                black_box("/v1/users/%34%32/./profile%3Fx"),
                weir_router::PathOptions::default(),
            )
        })
    });
    g.finish();
}

fn balancers(c: &mut Criterion) {
    let weights = [3, 1, 2, 1, 1, 2, 1, 1];
    let mut g = c.benchmark_group("balancer_pick");
    for (name, policy) in [
        ("round_robin", Policy::RoundRobin),
        ("weighted_round_robin", Policy::WeightedRoundRobin),
        ("least_request", Policy::LeastRequest),
        ("random", Policy::Random),
        ("ring_hash", Policy::RingHash),
        ("maglev", Policy::Maglev),
    ] {
        let bal = Arc::new(Balancer::new(policy, &weights).expect("balancer"));
        let mut key = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let i = bal.pick(Some(key));
                black_box(bal.begin(i))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, router, balancers);
criterion_main!(benches);
