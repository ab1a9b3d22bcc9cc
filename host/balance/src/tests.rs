use std::collections::HashMap;
use std::sync::Arc;
use std::thread;

use proptest::prelude::*;

use super::*;

const ALL_POLICIES: [Policy; 6] = [
    Policy::RoundRobin,
    Policy::WeightedRoundRobin,
    Policy::LeastRequest,
    Policy::Random,
    Policy::RingHash,
    Policy::Maglev,
];

fn balancer(policy: Policy, weights: &[u32]) -> Balancer {
    Balancer::new(policy, weights).expect("valid weights")
}

/// Picks `picks` times and counts the picks per endpoint.
fn counts(b: &Balancer, picks: usize, hash: impl Fn(usize) -> Option<u64>) -> Vec<usize> {
    let mut counts = vec![0; b.len()];
    for i in 0..picks {
        counts[b.pick(hash(i))] += 1;
    }
    counts
}

fn key_hash(i: usize) -> u64 {
    hash_key(format!("key-{i}").as_bytes())
}

fn share(count: usize, total: usize) -> f64 {
    count as f64 / total as f64
}

// ---------------------------------------------------------------------------------------------
// Round robin

#[test]
fn round_robin_is_exact() {
    let b = balancer(Policy::RoundRobin, &[1, 7, 3]);
    let first: Vec<usize> = (0..6).map(|_| b.pick(None)).collect();
    assert_eq!(first, [0, 1, 2, 0, 1, 2], "weights are ignored");
    assert_eq!(counts(&b, 300, |_| None), [100, 100, 100]);
}

#[test]
fn round_robin_is_exact_across_threads() {
    let b = Arc::new(balancer(Policy::RoundRobin, &[1, 1, 1]));
    let per_thread: Vec<Vec<usize>> = (0..4)
        .map(|_| {
            let b = Arc::clone(&b);
            thread::spawn(move || counts(&b, 3_000, |_| None))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let total: Vec<usize> = (0..3)
        .map(|i| per_thread.iter().map(|c| c[i]).sum())
        .collect();
    // Every cursor value is handed out once, so the split is exact even under contention.
    assert_eq!(total, [4_000, 4_000, 4_000]);
}

// ---------------------------------------------------------------------------------------------
// Weighted round robin

#[test]
fn weighted_round_robin_5_1_1_is_smooth() {
    let b = balancer(Policy::WeightedRoundRobin, &[5, 1, 1]);
    let picks: Vec<usize> = (0..70).map(|_| b.pick(None)).collect();
    // nginx's interleaving, not 0 0 0 0 0 1 2.
    assert_eq!(picks[..7], [0, 0, 1, 0, 2, 0, 0]);
    for cycle in picks.chunks(7) {
        let mut c = [0; 3];
        cycle.iter().for_each(|&i| c[i] += 1);
        assert_eq!(c, [5, 1, 1], "cycle {cycle:?}");
        let longest_run = cycle
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap();
        assert!(longest_run <= 2, "run of {longest_run} in {cycle:?}");
    }
}

#[test]
fn weighted_round_robin_2_1_is_exact() {
    let b = balancer(Policy::WeightedRoundRobin, &[2, 1]);
    let first: Vec<usize> = (0..3).map(|_| b.pick(None)).collect();
    assert_eq!(first, [0, 1, 0]);
    assert_eq!(counts(&b, 2_997, |_| None), [2_000 - 2, 1_000 - 1]);
    assert_eq!(counts(&b, 3_000, |_| None), [2_000, 1_000]);
}

#[test]
fn weighted_round_robin_reduces_by_gcd() {
    let Picker::Weighted(s) = &balancer(Policy::WeightedRoundRobin, &[10, 5, 5]).picker else {
        unreachable!()
    };
    assert_eq!(s[..], [0, 1, 2, 0]);
}

#[test]
fn weighted_round_robin_scales_huge_weights_down() {
    let weights = [4_000_000_000, 1, 3, 2_000_000_000];
    let Picker::Weighted(s) = &balancer(Policy::WeightedRoundRobin, &weights).picker else {
        unreachable!()
    };
    assert!(s.len() as u64 <= schedule::MAX_SCHEDULE, "{}", s.len());
    let mut c = [0usize; 4];
    s.iter().for_each(|&i| c[i as usize] += 1);
    assert!(c[1] >= 1 && c[2] >= 1, "tiny weights keep a turn: {c:?}");
    let ratio = c[0] as f64 / c[3] as f64;
    assert!(
        (1.99..2.01).contains(&ratio),
        "big weights keep their ratio: {c:?}"
    );
}

#[test]
fn weighted_round_robin_with_many_endpoints_builds_fast() {
    // O(turns × distinct weights), not O(turns × endpoints): this would be ~4e9 steps naively.
    let mut weights = vec![1u32; MAX_ENDPOINTS];
    weights[0] = 2;
    let start = std::time::Instant::now();
    let b = balancer(Policy::WeightedRoundRobin, &weights);
    assert!(start.elapsed().as_secs() < 5, "took {:?}", start.elapsed());
    let Picker::Weighted(s) = &b.picker else {
        unreachable!()
    };
    assert!(s.len() as u64 <= schedule::MAX_SCHEDULE);
}

// ---------------------------------------------------------------------------------------------
// Random

#[test]
fn random_follows_weights() {
    let b = balancer(Policy::Random, &[3, 1]);
    let c = counts(&b, 40_000, |_| None);
    let s = share(c[0], 40_000);
    assert!((0.72..0.78).contains(&s), "share of endpoint 0: {s}");
}

#[test]
fn random_reaches_every_endpoint() {
    let b = balancer(Policy::Random, &[1, 1, 1, 1, 1]);
    let c = counts(&b, 10_000, |_| None);
    assert!(c.iter().all(|&n| (1_600..2_400).contains(&n)), "{c:?}");
}

// ---------------------------------------------------------------------------------------------
// Least request

#[test]
fn least_request_avoids_the_busy_endpoint() {
    let b = Arc::new(balancer(Policy::LeastRequest, &[1, 1]));
    let guards: Vec<InFlight> = (0..5).map(|_| b.begin(0)).collect();
    assert_eq!(b.in_flight(0), 5);
    assert_eq!(counts(&b, 100, |_| None), [0, 100]);
    drop(guards);
    assert_eq!(b.in_flight(0), 0);
    let c = counts(&b, 1_000, |_| None);
    assert!(c[0] > 300 && c[1] > 300, "idle endpoints share: {c:?}");
}

#[test]
fn least_request_compares_load_per_weight() {
    let b = Arc::new(balancer(Policy::LeastRequest, &[4, 1]));
    // 2 requests on weight 4 is a lighter load than 1 request on weight 1.
    let _g = [b.begin(0), b.begin(0), b.begin(1)];
    assert_eq!(counts(&b, 100, |_| None), [100, 0]);
}

#[test]
fn least_request_honours_weights_when_idle() {
    // Idle endpoints tie; the tie-break coin is weighted, so weights still matter at low load.
    let b = balancer(Policy::LeastRequest, &[3, 1]);
    let s = share(counts(&b, 20_000, |_| None)[0], 20_000);
    assert!((0.72..0.78).contains(&s), "share of endpoint 0: {s}");
}

#[test]
fn least_request_single_endpoint() {
    let b = balancer(Policy::LeastRequest, &[5]);
    assert_eq!(counts(&b, 10, |_| None), [10]);
}

// ---------------------------------------------------------------------------------------------
// Ring hash and Maglev

const HASH_POLICIES: [Policy; 2] = [Policy::RingHash, Policy::Maglev];

#[test]
fn hash_policies_are_deterministic() {
    for policy in HASH_POLICIES {
        let a = balancer(policy, &[1, 2, 3, 4]);
        let b = balancer(policy, &[1, 2, 3, 4]);
        for i in 0..2_000 {
            let h = key_hash(i);
            let first = a.pick(Some(h));
            assert_eq!(
                a.pick(Some(h)),
                first,
                "{policy:?}: same hash, same endpoint"
            );
            assert_eq!(b.pick(Some(h)), first, "{policy:?}: every build agrees");
        }
    }
}

#[test]
fn hash_policies_pin_known_picks() {
    // A change in the ring or table construction silently remaps every sticky session in a
    // rolling upgrade; this notices it.
    let picks = |policy| -> Vec<usize> {
        let b = balancer(policy, &[1, 1, 1, 1, 1]);
        (0..12).map(|i| b.pick(Some(key_hash(i)))).collect()
    };
    assert_eq!(picks(Policy::RingHash), PINNED_RING);
    assert_eq!(picks(Policy::Maglev), PINNED_MAGLEV);
}
const PINNED_RING: [usize; 12] = [0, 3, 4, 2, 0, 4, 1, 1, 1, 0, 1, 3];
const PINNED_MAGLEV: [usize; 12] = [1, 1, 4, 3, 3, 2, 2, 3, 1, 1, 2, 0];

#[test]
fn hash_policies_spread_keys_evenly() {
    for policy in HASH_POLICIES {
        let b = balancer(policy, &[1, 1, 1, 1]);
        let c = counts(&b, 10_000, |i| Some(key_hash(i)));
        for (i, &n) in c.iter().enumerate() {
            let s = share(n, 10_000);
            assert!(
                (0.15..0.35).contains(&s),
                "{policy:?}: endpoint {i} got {s}"
            );
        }
    }
}

#[test]
fn hash_policies_follow_weights() {
    for policy in HASH_POLICIES {
        let b = balancer(policy, &[3, 1]);
        let s = share(counts(&b, 10_000, |i| Some(key_hash(i)))[0], 10_000);
        assert!((0.68..0.82).contains(&s), "{policy:?}: endpoint 0 got {s}");
    }
}

#[test]
fn maglev_table_shares_follow_weights() {
    let Picker::Maglev(m) = &balancer(Policy::Maglev, &[3, 1, 2, 2]).picker else {
        unreachable!()
    };
    let mut c = [0usize; 4];
    m.table().iter().for_each(|&i| c[usize::from(i)] += 1);
    let expected = [3.0 / 8.0, 1.0 / 8.0, 2.0 / 8.0, 2.0 / 8.0];
    for i in 0..4 {
        let s = share(c[i], maglev::TABLE_SIZE);
        assert!(
            (s - expected[i]).abs() < 0.005,
            "endpoint {i}: {s} vs {}",
            expected[i]
        );
    }
}

#[test]
fn hash_policies_without_a_key_pick_weighted_random() {
    for policy in HASH_POLICIES {
        let b = balancer(policy, &[3, 1]);
        let s = share(counts(&b, 40_000, |_| None)[0], 40_000);
        assert!((0.72..0.78).contains(&s), "{policy:?}: endpoint 0 got {s}");
    }
}

/// Of the keys that five endpoints map to endpoints 0–3, the share that the first four alone
/// map to the same endpoint.
fn kept_share(five: &Balancer, four: &Balancer, same: impl Fn(usize, usize) -> bool) -> f64 {
    let (mut stayed, mut eligible) = (0, 0);
    for i in 0..10_000 {
        let h = key_hash(i);
        let before = five.pick(Some(h));
        if before == 4 {
            continue;
        }
        eligible += 1;
        if same(before, four.pick(Some(h))) {
            stayed += 1;
        }
    }
    share(stayed, eligible)
}

#[test]
fn ring_hash_moves_only_the_removed_endpoints_keys() {
    let five = balancer(Policy::RingHash, &[1, 1, 1, 1, 1]);
    let four = balancer(Policy::RingHash, &[1, 1, 1, 1]);
    let kept = kept_share(&five, &four, |a, b| a == b);
    // Each endpoint's points do not depend on the others, so in fact every such key stays.
    assert!(kept >= 0.90, "kept {kept}");
    assert_eq!(kept, 1.0);
}

#[test]
fn maglev_moves_few_other_keys_on_removal() {
    let five = balancer(Policy::Maglev, &[1, 1, 1, 1, 1]);
    let four = balancer(Policy::Maglev, &[1, 1, 1, 1]);
    let kept = kept_share(&five, &four, |a, b| a == b);
    // The paper's bound is "minimal disruption"; in practice about 0.1% of the keys move here.
    assert!(kept >= 0.95, "kept {kept}");
}

#[test]
fn keyed_endpoints_survive_removal_from_the_middle() {
    let addrs: Vec<String> = (0..5).map(|i| format!("10.0.0.{i}:8080")).collect();
    // Remove endpoint 2: with index-derived placement the last two would be renumbered.
    let remaining: Vec<&String> = addrs
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 2)
        .map(|p| p.1)
        .collect();
    for (policy, min) in [(Policy::RingHash, 0.90), (Policy::Maglev, 0.95)] {
        let five = Balancer::with_keys(policy, &[1; 5], &addrs).unwrap();
        let four = Balancer::with_keys(policy, &[1; 4], &remaining).unwrap();
        let (mut stayed, mut eligible) = (0, 0);
        for i in 0..10_000 {
            let h = key_hash(i);
            let before = &addrs[five.pick(Some(h))];
            if before == &addrs[2] {
                continue;
            }
            eligible += 1;
            if before == remaining[four.pick(Some(h))] {
                stayed += 1;
            }
        }
        let kept = share(stayed, eligible);
        assert!(kept >= min, "{policy:?}: kept {kept}");
    }
}

#[test]
fn ring_point_counts() {
    assert_eq!(ring::point_counts(&[1, 1]), [512, 512]);
    assert_eq!(ring::point_counts(&[2, 6, 3]), [512, 1536, 768]);
    let huge = ring::point_counts(&[1, 1_000_000, 7]);
    assert!(
        huge.iter().sum::<u64>() <= ring::MAX_RING_POINTS,
        "{huge:?}"
    );
    assert!(huge.iter().all(|&c| c >= 1), "{huge:?}");
}

// ---------------------------------------------------------------------------------------------
// Health

#[test]
fn unhealthy_endpoints_are_never_picked() {
    for policy in ALL_POLICIES {
        let b = balancer(policy, &[1, 2, 3, 4]);
        b.set_healthy(1, false);
        b.set_healthy(3, false);
        assert!(!b.is_healthy(1) && b.is_healthy(2));
        let keyed = counts(&b, 4_000, |i| Some(key_hash(i)));
        let unkeyed = counts(&b, 4_000, |_| None);
        for c in [&keyed, &unkeyed] {
            assert!(c[1] == 0 && c[3] == 0, "{policy:?}: {c:?}");
            assert!(
                c[0] > 0 && c[2] > 0,
                "{policy:?}: healthy ones share: {c:?}"
            );
        }
        // Only one healthy endpoint left.
        b.set_healthy(2, false);
        assert_eq!(
            counts(&b, 500, |i| Some(key_hash(i))),
            [500, 0, 0, 0],
            "{policy:?}"
        );
        assert_eq!(counts(&b, 500, |_| None), [500, 0, 0, 0], "{policy:?}");
        // Recovery brings them back.
        (1..4).for_each(|i| b.set_healthy(i, true));
        let c = counts(&b, 4_000, |i| Some(key_hash(i)));
        assert!(c.iter().all(|&n| n > 0), "{policy:?}: {c:?}");
    }
}

#[test]
fn all_unhealthy_picks_as_if_all_were_healthy() {
    for policy in ALL_POLICIES {
        let healthy = balancer(policy, &[1, 1, 1]);
        let panicked = balancer(policy, &[1, 1, 1]);
        (0..3).for_each(|i| panicked.set_healthy(i, false));
        let c = counts(&panicked, 3_000, |_| None);
        assert!(
            c.iter().all(|&n| n > 600),
            "{policy:?}: still spread: {c:?}"
        );
        if policy == Policy::RoundRobin || policy == Policy::WeightedRoundRobin {
            assert_eq!(c, [1_000; 3], "{policy:?}");
        }
        for i in 0..1_000 {
            let h = Some(key_hash(i));
            let p = panicked.pick(h);
            assert!(p < 3);
            if HASH_POLICIES.contains(&policy) {
                assert_eq!(
                    p,
                    healthy.pick(h),
                    "{policy:?}: keys stay put in panic mode"
                );
            }
        }
    }
}

#[test]
fn ring_hash_unhealthy_endpoint_acts_as_removed() {
    let five = balancer(Policy::RingHash, &[1, 1, 1, 1, 1]);
    let four = balancer(Policy::RingHash, &[1, 1, 1, 1]);
    five.set_healthy(4, false);
    for i in 0..10_000 {
        let h = Some(key_hash(i));
        assert_eq!(five.pick(h), four.pick(h));
    }
}

#[test]
fn maglev_unhealthy_fallback_is_deterministic_and_spread() {
    let a = balancer(Policy::Maglev, &[1, 1, 1, 1]);
    let b = balancer(Policy::Maglev, &[1, 1, 1, 1]);
    let before: Vec<usize> = (0..10_000).map(|i| a.pick(Some(key_hash(i)))).collect();
    a.set_healthy(2, false);
    b.set_healthy(2, false);
    let mut moved_to = [0usize; 4];
    for (i, &was) in before.iter().enumerate() {
        let h = Some(key_hash(i));
        let now = a.pick(h);
        assert_eq!(now, b.pick(h), "every proxy moves a key the same way");
        if was == 2 {
            moved_to[now] += 1;
        } else {
            assert_eq!(now, was, "keys of healthy endpoints stay");
        }
    }
    let moved: usize = moved_to.iter().sum();
    for i in [0, 1, 3] {
        let s = share(moved_to[i], moved);
        assert!(
            (0.2..0.47).contains(&s),
            "endpoint {i} took {s} of the moved keys"
        );
    }
}

#[test]
fn health_count_follows_transitions_not_calls() {
    let b = balancer(Policy::RoundRobin, &[1, 1]);
    b.set_healthy(0, false);
    b.set_healthy(0, false);
    b.set_healthy(1, true);
    assert_eq!(b.unhealthy.load(Relaxed), 1);
    b.set_healthy(0, true);
    assert_eq!(b.unhealthy.load(Relaxed), 0);
}

// ---------------------------------------------------------------------------------------------
// In-flight tracking

#[test]
fn guards_count_in_flight_requests() {
    for policy in ALL_POLICIES {
        let b = Arc::new(balancer(policy, &[1, 1, 1]));
        let g1 = b.begin(2);
        let g2 = b.begin(2);
        let g3 = b.begin(0);
        assert_eq!((g1.index(), g3.index()), (2, 0));
        assert!(Arc::ptr_eq(g1.balancer(), &b));
        assert_eq!([b.in_flight(0), b.in_flight(1), b.in_flight(2)], [1, 0, 2]);
        drop(g2);
        assert_eq!(b.in_flight(2), 1);
        drop((g1, g3));
        assert_eq!([b.in_flight(0), b.in_flight(1), b.in_flight(2)], [0, 0, 0]);
    }
}

#[test]
fn guards_balance_out_across_threads() {
    let b = Arc::new(balancer(Policy::LeastRequest, &[1, 2, 3]));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let b = Arc::clone(&b);
            thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..5_000 {
                    held.push(b.begin(b.pick(None)));
                    if i % 3 == 0 {
                        held.clear();
                    }
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!((0..3).map(|i| b.in_flight(i)).sum::<usize>(), 0);
}

#[test]
fn balancer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Balancer>();
    assert_send_sync::<InFlight>();
}

#[test]
fn policy_and_metadata() {
    for policy in ALL_POLICIES {
        let b = balancer(policy, &[4, 5]);
        assert_eq!(b.policy(), policy);
        assert_eq!((b.len(), b.weight(0), b.weight(1)), (2, 4, 5));
        assert!(format!("{b:?}").contains(&format!("{policy:?}")));
    }
}

// ---------------------------------------------------------------------------------------------
// hash_key

#[test]
fn hash_key_is_pinned() {
    // Every proxy instance, and every release, must map a key the same way.
    assert_eq!(hash_key(b""), 0xf52a_15e9_a9b5_e89b);
    assert_eq!(hash_key(b"a"), 0x02c0_bdbf_4814_20f8);
    assert_eq!(hash_key(b"foobar"), 0x404d_a9e3_b740_78c2);
    assert_eq!(hash_key(b"10.0.0.1"), 0x7fb1_b600_f0f5_c6d3);
    assert_eq!(hash_key(b"user-42"), 0x7a15_96f0_e94b_5793);
}

#[test]
fn hash_key_parts_match_reference_vectors() {
    // FNV-1a 64 reference values (Fowler, Noll, Vo test suite).
    assert_eq!(hash::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(hash::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(hash::fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    // splitmix64's first output for seed 0.
    assert_eq!(hash::mix64(hash::GOLDEN_GAMMA), 0xe220_a839_7b1d_cdaf);
}

#[test]
fn hash_key_differs_for_different_inputs() {
    assert_ne!(hash_key(b"ab"), hash_key(b"ba"));
    assert_ne!(hash_key(b"a"), hash_key(b"a\0"));
    let mut seen = HashMap::new();
    for i in 0..100_000u32 {
        if let Some(prev) = seen.insert(hash_key(&i.to_le_bytes()), i) {
            panic!("{prev} and {i} collide");
        }
    }
}

#[test]
fn hash_key_spreads_similar_keys() {
    // The finalizer's job: sequential keys must spread over the top bits the lookups use.
    let mut buckets = [0usize; 16];
    for i in 0..16_000 {
        buckets[(hash_key(format!("10.0.0.{i}").as_bytes()) >> 60) as usize] += 1;
    }
    assert!(
        buckets.iter().all(|&n| (800..1_200).contains(&n)),
        "{buckets:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn bad_weights_are_rejected() {
    let err = Balancer::new(Policy::RoundRobin, &[]).unwrap_err();
    assert_eq!(err, BalanceError::NoEndpoints);
    assert_eq!(
        err.to_string(),
        "no endpoints: a balancer needs at least one weight"
    );

    let err = Balancer::new(Policy::Maglev, &[3, 0, 1]).unwrap_err();
    assert_eq!(err, BalanceError::ZeroWeight { index: 1 });
    assert_eq!(
        err.to_string(),
        "endpoint 1 has weight 0: weights must be at least 1"
    );

    let err = Balancer::new(Policy::Random, &vec![1; MAX_ENDPOINTS + 1]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "too many endpoints: 65537, at most 65536 are supported"
    );

    let err = Balancer::with_keys(Policy::RingHash, &[1, 1], &["a"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "2 weights but 1 endpoint keys: each endpoint needs one key"
    );

    let _: &dyn std::error::Error = &err;
}

#[test]
fn max_endpoints_work_for_every_policy() {
    for policy in ALL_POLICIES {
        let b = balancer(policy, &vec![1; MAX_ENDPOINTS]);
        assert!(b.pick(Some(u64::MAX)) < MAX_ENDPOINTS);
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

fn any_policy() -> impl Strategy<Value = Policy> {
    proptest::sample::select(ALL_POLICIES.to_vec())
}

proptest! {
    #[test]
    fn picks_are_in_range_and_guards_balance(
        policy in any_policy(),
        weights in proptest::collection::vec(1u32..=100, 1..20),
        hashes in proptest::collection::vec(any::<Option<u64>>(), 1..50),
        unhealthy in proptest::collection::vec(any::<bool>(), 20),
    ) {
        let b = Arc::new(Balancer::new(policy, &weights).unwrap());
        for (i, &down) in unhealthy.iter().take(weights.len()).enumerate() {
            b.set_healthy(i, !down);
        }
        let any_healthy = (0..b.len()).any(|i| b.is_healthy(i));
        let mut guards = Vec::new();
        for &hash in &hashes {
            let idx = b.pick(hash);
            prop_assert!(idx < b.len());
            prop_assert!(!any_healthy || b.is_healthy(idx), "picked unhealthy {}", idx);
            if hash.is_some() && matches!(policy, Policy::RingHash | Policy::Maglev) {
                prop_assert_eq!(b.pick(hash), idx);
            }
            guards.push(b.begin(idx));
        }
        prop_assert_eq!((0..b.len()).map(|i| b.in_flight(i)).sum::<usize>(), hashes.len());
        drop(guards);
        prop_assert!((0..b.len()).all(|i| b.in_flight(i) == 0));
    }

    #[test]
    fn smooth_schedule_matches_nginx(weights in proptest::collection::vec(1u64..=30, 1..12)) {
        prop_assert_eq!(schedule::smooth(&weights), schedule::smooth_naive(&weights));
    }

    #[test]
    fn schedule_gives_each_endpoint_its_reduced_weight(
        weights in proptest::collection::vec(1u32..=1_000, 1..20),
    ) {
        let g = weights.iter().fold(0u32, |a, &b| {
            let (mut a, mut b) = (a, b);
            while b != 0 { (a, b) = (b, a % b); }
            a
        });
        let s = schedule::schedule(&weights);
        for (i, &w) in weights.iter().enumerate() {
            prop_assert_eq!(s.iter().filter(|&&e| e as usize == i).count(), (w / g) as usize);
        }
    }

    #[test]
    fn maglev_population_matches_envoy(
        weights in proptest::collection::vec(1u32..=10, 1..12),
        seeds in proptest::collection::vec(any::<u64>(), 12),
        size in proptest::sample::select(vec![13usize, 101, 251]),
    ) {
        let perms: Vec<(u64, u64)> =
            seeds[..weights.len()].iter().map(|&s| maglev::permutation(s, size as u64)).collect();
        prop_assert_eq!(
            maglev::populate(&perms, &weights, size),
            maglev::populate_naive(&perms, &weights, size)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Slow start

/// A two-endpoint balancer with a 10 s slow start, endpoint 1 back in rotation `ago` ago.
fn warming(policy: Policy, ago: Duration) -> Balancer {
    let mut b = balancer(policy, &[1, 1]).with_slow_start(Duration::from_secs(10));
    let slow = b.slow_start.as_mut().expect("slow start on");
    // Times before the balancer was built are `since` 0: move its epoch back to allow them.
    slow.epoch = slow
        .epoch
        .checked_sub(Duration::from_secs(60))
        .expect("clock");
    b.set_healthy(1, false);
    b.set_healthy(1, true);
    let slow = b.slow_start.as_ref().expect("slow start on");
    slow.start(1, Instant::now().checked_sub(ago).expect("clock"));
    b
}

#[test]
fn slow_start_grows_a_revived_endpoints_share_with_time() {
    for policy in [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin,
        Policy::LeastRequest,
        Policy::Random,
        Policy::RingHash, // without a hash key: weighted random
        Policy::Maglev,
    ] {
        let picks = 20_000;
        let at = |secs| {
            let b = warming(policy, Duration::from_secs(secs));
            share(counts(&b, picks, |_| None)[1], picks)
        };
        let (start, half, done) = (at(0), at(5), at(11));
        assert!(start < 0.15, "{policy:?}: share at the start {start}");
        assert!(
            (0.25..0.42).contains(&half),
            "{policy:?}: share halfway {half}"
        );
        assert!(
            (0.45..0.55).contains(&done),
            "{policy:?}: share after {done}"
        );
        let b = warming(policy, Duration::from_secs(11));
        b.pick(None);
        assert!(!b.is_warming(1), "{policy:?}: the window ends");
        assert_eq!(b.slow_start.as_ref().unwrap().warming.load(Relaxed), 0);
    }
}

#[test]
fn slow_start_leaves_hash_keys_where_they_are() {
    for policy in [Policy::RingHash, Policy::Maglev] {
        let cold = balancer(policy, &[1, 1]);
        let b = warming(policy, Duration::ZERO);
        assert!(b.is_warming(1));
        for i in 0..2_000 {
            let key = Some(key_hash(i));
            assert_eq!(b.pick(key), cold.pick(key), "{policy:?}: key {i} moved");
        }
    }
}

#[test]
fn slow_start_only_follows_a_return_to_rotation() {
    let b = balancer(Policy::RoundRobin, &[1, 1]).with_slow_start(Duration::from_secs(10));
    assert!(!b.is_warming(0) && !b.is_warming(1), "endpoints start warm");
    b.set_healthy(1, true); // already healthy: no transition
    assert!(!b.is_warming(1));
    b.set_healthy(1, false);
    assert!(!b.is_warming(1), "out of rotation is not warming");
    b.set_healthy(1, true);
    assert!(b.is_warming(1));

    let off = balancer(Policy::RoundRobin, &[1, 1]).with_slow_start(Duration::ZERO);
    off.set_healthy(1, false);
    off.set_healthy(1, true);
    assert!(!off.is_warming(1), "a zero window is off");
    assert_eq!(counts(&off, 1000, |_| None), [500, 500]);
}

#[test]
fn slow_start_with_every_endpoint_warming_keeps_shares_equal() {
    let b = balancer(Policy::RoundRobin, &[1, 1, 1]).with_slow_start(Duration::from_secs(10));
    for i in 0..3 {
        b.set_healthy(i, false);
    }
    for i in 0..3 {
        b.set_healthy(i, true);
    }
    let c = counts(&b, 30_000, |_| None);
    for &n in &c {
        assert!((0.28..0.39).contains(&share(n, 30_000)), "{c:?}");
    }
}
