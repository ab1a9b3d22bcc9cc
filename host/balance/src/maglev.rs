//! Google's Maglev lookup table (Eisenbud et al., NSDI 2016), with Envoy's weighted population.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::hash::{GOLDEN_GAMMA, hash_key, mix64};

/// Lookup table size: a prime, so every skip is coprime with it and each endpoint's permutation
/// visits every slot. 65,537 slots keep the imbalance small up to a few hundred endpoints.
pub(crate) const TABLE_SIZE: usize = 65_537;

/// The Maglev lookup table: slot `hash % TABLE_SIZE` names the endpoint. `u16` entries halve
/// the memory (128 KiB per balancer); the balancer caps endpoints at 65,536 so they fit.
pub(crate) struct Maglev {
    table: Box<[u16]>,
}

impl Maglev {
    /// Builds the table; endpoint `i`'s permutation derives from the bytes `key` appends for it.
    pub(crate) fn new(weights: &[u32], key: &dyn Fn(usize, &mut Vec<u8>)) -> Maglev {
        let mut buf = Vec::new();
        let permutations: Vec<(u64, u64)> = (0..weights.len())
            .map(|i| {
                buf.clear();
                key(i, &mut buf);
                permutation(hash_key(&buf), TABLE_SIZE as u64)
            })
            .collect();
        Maglev {
            table: populate(&permutations, weights, TABLE_SIZE).into(),
        }
    }

    /// The endpoint for `hash`.
    pub(crate) fn lookup(&self, hash: u64) -> usize {
        usize::from(self.table[(hash % TABLE_SIZE as u64) as usize])
    }

    /// The raw table, for tests.
    #[cfg(test)]
    pub(crate) fn table(&self) -> &[u16] {
        &self.table
    }
}

/// `(offset, skip)` of an endpoint's permutation `offset + j * skip (mod size)`.
pub(crate) fn permutation(key_hash: u64, size: u64) -> (u64, u64) {
    // A second, independent hash for the skip, as the paper uses two hash functions.
    let skip_hash = mix64(key_hash.wrapping_add(GOLDEN_GAMMA));
    (key_hash % size, skip_hash % (size - 1) + 1)
}

/// Fills a table of `size` slots (a prime larger than the endpoint count).
///
/// The paper's population gives every endpoint one slot per round, each taking the next free slot
/// of its own permutation. Envoy's weighted variant lets endpoint `i` take a turn in round `r`
/// only while `r * w_i >= target_i`, where `target_i` grows by the largest weight per slot taken,
/// so the heaviest endpoint takes one slot per round and the others proportionally fewer. Here the
/// rounds are replayed from a min-heap of `(next round with a turn, endpoint)`, which visits the
/// turns in exactly the same order but costs O(size · log n) even when one weight dwarfs the rest.
pub(crate) fn populate(permutations: &[(u64, u64)], weights: &[u32], size: usize) -> Vec<u16> {
    debug_assert!(permutations.len() == weights.len() && weights.len() < size);
    let max_weight = u64::from(*weights.iter().max().expect("at least one endpoint"));
    let mut next = vec![0u64; weights.len()];
    let mut target = vec![0u64; weights.len()];
    let mut turns: BinaryHeap<Reverse<(u64, usize)>> =
        (0..weights.len()).map(|i| Reverse((1, i))).collect();
    let mut table: Vec<Option<u16>> = vec![None; size];
    for _ in 0..size {
        let Reverse((round, i)) = turns.pop().expect("every endpoint always has a next turn");
        let (offset, skip) = permutations[i];
        // The permutation visits every slot within `size` steps, and a free slot remains.
        let slot = loop {
            let slot = ((offset + next[i] * skip) % size as u64) as usize;
            next[i] += 1;
            if table[slot].is_none() {
                break slot;
            }
        };
        table[slot] = Some(u16::try_from(i).expect("endpoint count is capped at 65,536"));
        target[i] += max_weight;
        let weight = u64::from(weights[i]);
        turns.push(Reverse(((round + 1).max(target[i].div_ceil(weight)), i)));
    }
    table
        .into_iter()
        .map(|slot| slot.expect("every slot is filled"))
        .collect()
}

/// Envoy's round-by-round loop, to check [`populate`] against.
#[cfg(test)]
pub(crate) fn populate_naive(
    permutations: &[(u64, u64)],
    weights: &[u32],
    size: usize,
) -> Vec<u16> {
    let max_weight = u64::from(*weights.iter().max().unwrap());
    let mut next = vec![0u64; weights.len()];
    let mut target = vec![0u64; weights.len()];
    let mut table: Vec<Option<u16>> = vec![None; size];
    let mut filled = 0;
    let mut round = 1u64;
    while filled < size {
        for i in 0..weights.len() {
            if filled == size {
                break;
            }
            if round * u64::from(weights[i]) < target[i] {
                continue;
            }
            target[i] += max_weight;
            let (offset, skip) = permutations[i];
            loop {
                let slot = ((offset + next[i] * skip) % size as u64) as usize;
                next[i] += 1;
                if table[slot].is_none() {
                    table[slot] = Some(i as u16);
                    break;
                }
            }
            filled += 1;
        }
        round += 1;
    }
    table.into_iter().map(Option::unwrap).collect()
}
