//! Consistent hash ring (ketama-style), built once per balancer.

use std::io::Write as _;

use crate::hash::hash_key;

/// Ring points given to the lightest endpoint. A fixed count (not one derived from the cluster
/// size) keeps each endpoint's points identical when others join or leave, so only keys of the
/// changed endpoint move; 512 makes any ring of two or more endpoints at least 1,024 points.
pub(crate) const POINTS_PER_UNIT: u64 = 512;

/// Upper bound on ring points (about 1.2 MB); larger rings are scaled down proportionally.
pub(crate) const MAX_RING_POINTS: u64 = 100_000;

/// A sorted ring of `(point, owner)` pairs, stored as two arrays so the binary search only
/// touches the points.
pub(crate) struct Ring {
    points: Box<[u64]>,
    owners: Box<[u32]>,
}

impl Ring {
    /// Builds the ring; endpoint `i`'s points are `hash_key("{key_i}-{vnode}")`, where `key`
    /// appends endpoint `i`'s identity bytes to the buffer.
    pub(crate) fn new(weights: &[u32], key: &dyn Fn(usize, &mut Vec<u8>)) -> Ring {
        let counts = point_counts(weights);
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        let mut buf = Vec::new();
        for (i, &count) in counts.iter().enumerate() {
            buf.clear();
            key(i, &mut buf);
            buf.push(b'-');
            let prefix = buf.len();
            for vnode in 0..count {
                buf.truncate(prefix);
                write!(buf, "{vnode}").expect("writing to a Vec cannot fail");
                entries.push((hash_key(&buf), i as u32));
            }
        }
        // Sorting by owner too makes colliding points resolve the same way in every process.
        entries.sort_unstable();
        let (points, owners) = entries.into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
        Ring {
            points: points.into(),
            owners: owners.into(),
        }
    }

    /// Number of points on the ring.
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    /// The first point at or after `hash`, wrapping past the end to the start.
    pub(crate) fn position(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|&p| p < hash);
        if i == self.points.len() { 0 } else { i }
    }

    /// The endpoint owning ring point `position`.
    pub(crate) fn owner(&self, position: usize) -> usize {
        self.owners[position] as usize
    }
}

/// Points per endpoint: [`POINTS_PER_UNIT`] per multiple of the smallest weight, scaled down
/// (each keeping at least one) if the ring would exceed [`MAX_RING_POINTS`].
pub(crate) fn point_counts(weights: &[u32]) -> Vec<u64> {
    let min = u64::from(*weights.iter().min().expect("at least one endpoint"));
    // Rounded to nearest; u64 holds it: at most 512 * 2^32 per endpoint times 65,536 endpoints.
    let counts: Vec<u64> = weights
        .iter()
        .map(|&w| (u64::from(w) * POINTS_PER_UNIT + min / 2) / min)
        .collect();
    let total: u64 = counts.iter().sum();
    if total <= MAX_RING_POINTS {
        return counts;
    }
    // Reserve one point per endpoint for the rounding up to 1, so the result stays within bounds.
    let budget = MAX_RING_POINTS.saturating_sub(weights.len() as u64);
    counts
        .iter()
        .map(|&c| (u128::from(c) * u128::from(budget) / u128::from(total)).max(1) as u64)
        .collect()
}
