//! The smooth weighted round robin schedule (nginx's algorithm), precomputed once per balancer.

use std::collections::BTreeMap;

/// Upper bound on the schedule length (one cycle of picks).
pub(crate) const MAX_SCHEDULE: u64 = 65_536;

/// One full cycle of smooth weighted round robin over `weights`: endpoint `i` appears exactly
/// `w_i` times (after reducing the weights), interleaved as evenly as nginx does it, so weights
/// 5,1,1 give `0 0 1 0 2 0 0` rather than `0 0 0 0 0 1 2`.
pub(crate) fn schedule(weights: &[u32]) -> Box<[u32]> {
    smooth(&reduce(weights)).into_boxed_slice()
}

/// Divides the weights by their gcd (shortest cycle with the same proportions) and, if the cycle
/// is still longer than [`MAX_SCHEDULE`], scales them down proportionally, keeping each at least 1.
pub(crate) fn reduce(weights: &[u32]) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))).max(1);
    let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    let total: u64 = reduced.iter().sum();
    if total <= MAX_SCHEDULE {
        return reduced;
    }
    // Flooring can raise each endpoint by at most 1 (to the minimum of 1): reserve that headroom so
    // the scaled cycle still fits.
    let n = weights.len() as u64;
    let budget = MAX_SCHEDULE.saturating_sub(n);
    reduced
        .iter()
        .map(|&w| (u128::from(w) * u128::from(budget) / u128::from(total)).max(1) as u64)
        .collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Endpoints sharing one weight. Nginx's algorithm always visits them in index order, one per
/// turn, so a cursor replaces their individual `current_weight`s.
struct Group {
    weight: u64,
    /// Endpoint indexes, ascending.
    members: Vec<u32>,
    /// Position of the member that has been picked least (ties: lowest index).
    next: usize,
    /// Members from `next` on have been picked `rounds` times, those before it `rounds + 1`.
    rounds: u64,
}

/// Nginx's smooth weighted round robin, run for one full cycle (`sum(weights)` picks, after
/// which every `current_weight` is back to 0).
///
/// Nginx: each turn every endpoint adds its weight to `current`; the first endpoint with the
/// highest `current` is picked and loses the total. At turn `t` (1-based) endpoint `i` therefore
/// has `current = t * w_i - total * picks_i`. Grouping endpoints by weight makes each turn cost
/// O(distinct weights) rather than O(endpoints): distinct weights summing to at most 65,536 are at
/// most 361, so even 65,536 endpoints build in milliseconds.
pub(crate) fn smooth(weights: &[u64]) -> Vec<u32> {
    let mut by_weight: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (i, &w) in weights.iter().enumerate() {
        by_weight.entry(w).or_default().push(i as u32);
    }
    let mut groups: Vec<Group> = by_weight
        .into_iter()
        .map(|(weight, members)| Group {
            weight,
            members,
            next: 0,
            rounds: 0,
        })
        .collect();
    let total: u64 = weights.iter().sum();
    let mut out = Vec::with_capacity(total as usize);
    for t in 1..=total {
        let current = |g: &Group| i128::from(t * g.weight) - i128::from(total * g.rounds);
        let best = groups
            .iter_mut()
            .max_by(|a, b| {
                // Highest current wins; on a tie the lower endpoint index, as nginx scans in order.
                current(a)
                    .cmp(&current(b))
                    .then_with(|| b.members[b.next].cmp(&a.members[a.next]))
            })
            .expect("at least one endpoint");
        out.push(best.members[best.next]);
        best.next += 1;
        if best.next == best.members.len() {
            best.next = 0;
            best.rounds += 1;
        }
    }
    out
}

/// The textbook O(endpoints) per turn version, to check [`smooth`] against.
#[cfg(test)]
pub(crate) fn smooth_naive(weights: &[u64]) -> Vec<u32> {
    let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
    let mut current = vec![0i128; weights.len()];
    let mut out = Vec::new();
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i128::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}
