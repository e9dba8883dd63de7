//! A mergeable latency sketch: counts in logarithmic buckets of a fixed relative accuracy, as
//! DDSketch keeps them. Any number of sketches (instances, revisions, intervals) merge by adding
//! their counts, and a quantile of the merge is as accurate as one of a single sketch — unlike an
//! average of percentiles.
//!
//! Values are durations in microseconds. Bucket `i` holds values in `(γ^(i-1), γ^i]` with
//! `γ = (1+α)/(1-α)`; a quantile is answered with the value that is within `α` of every value of
//! its bucket. Values of 1 µs or less fall in bucket 0, values beyond [`MAX_MICROS`] in the last.

use serde::{Deserialize, Serialize};

/// The relative accuracy of a quantile: 5 %.
pub const ACCURACY: f64 = 0.05;
/// γ, the ratio between bucket bounds.
const GAMMA: f64 = (1.0 + ACCURACY) / (1.0 - ACCURACY);
/// The largest value told apart from larger ones: 1,000 s.
pub const MAX_MICROS: u64 = 1_000_000_000;
/// How many buckets there are: enough for [`MAX_MICROS`].
pub const BUCKETS: usize = 209;

/// The bucket that counts a value of `micros`.
pub fn bucket(micros: u64) -> usize {
    if micros <= 1 {
        return 0;
    }
    let i = ((micros as f64).ln() / GAMMA.ln()).ceil();
    (i as usize).min(BUCKETS - 1)
}

/// The value bucket `i` stands for, in microseconds: within [`ACCURACY`] of all it holds.
pub fn value(i: usize) -> f64 {
    if i == 0 {
        return 1.0;
    }
    2.0 * GAMMA.powi(i as i32) / (GAMMA + 1.0)
}

/// Counts by bucket, sparse: `(bucket, count)` in bucket order, no zero counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sketch {
    counts: Vec<(u16, u64)>,
}

impl Sketch {
    /// A sketch of `counts` indexed by bucket (as a recorder holds them).
    pub fn from_dense(counts: &[u64]) -> Sketch {
        let counts = counts.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (i as u16, *n)).collect();
        Sketch { counts }
    }

    /// Counts one value.
    pub fn record(&mut self, micros: u64) {
        self.add(bucket(micros), 1);
    }

    /// Adds `n` to bucket `i`.
    pub fn add(&mut self, i: usize, n: u64) {
        if n == 0 {
            return;
        }
        let i = i.min(BUCKETS - 1) as u16;
        match self.counts.binary_search_by_key(&i, |(b, _)| *b) {
            Ok(at) => self.counts[at].1 += n,
            Err(at) => self.counts.insert(at, (i, n)),
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Sketch) {
        if self.counts.is_empty() {
            self.counts = other.counts.clone();
            return;
        }
        let (a, b) = (&self.counts, &other.counts);
        let mut merged = Vec::with_capacity(a.len().max(b.len()));
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    merged.push((x.0, x.1 + y.1));
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    merged.push(*x);
                    i += 1;
                }
                (Some(x), None) => {
                    merged.push(*x);
                    i += 1;
                }
                (_, Some(y)) => {
                    merged.push(*y);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        self.counts = merged;
    }

    /// The number of values counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) in microseconds, within [`ACCURACY`]; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The smallest value with at least q of all values at or below it (1-based rank ⌈q·n⌉),
        // as HDR histograms answer.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in &self.counts {
            seen += n;
            if seen >= rank {
                return Some(value(usize::from(*i)));
            }
        }
        self.counts.last().map(|(i, _)| value(usize::from(*i)))
    }

    /// The buckets and counts, in bucket order.
    pub fn buckets(&self) -> &[(u16, u64)] {
        &self.counts
    }

    /// Appends the sketch in a compact form: the number of buckets, then each bucket as the
    /// distance from the previous one and its count, all LEB128 varints.
    pub fn encode(&self, out: &mut Vec<u8>) {
        varint::put(out, self.counts.len() as u64);
        let mut prev = 0u64;
        for (i, n) in &self.counts {
            varint::put(out, u64::from(*i) - prev);
            varint::put(out, *n);
            prev = u64::from(*i);
        }
    }

    /// Reads one sketch written by [`Sketch::encode`] from the front of `input`.
    pub fn decode(input: &mut &[u8]) -> Option<Sketch> {
        let len = varint::get(input)?;
        let mut counts = Vec::with_capacity(usize::try_from(len).ok()?.min(BUCKETS));
        let mut at = 0u64;
        for k in 0..len {
            let step = varint::get(input)?;
            if k > 0 && step == 0 {
                return None;
            }
            at = at.checked_add(step)?;
            if at >= BUCKETS as u64 {
                return None;
            }
            counts.push((at as u16, varint::get(input)?));
        }
        Some(Sketch { counts })
    }
}

/// LEB128 varints, as the compact encodings use them.
pub mod varint {
    /// Appends `v`.
    pub fn put(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Takes one from the front of `input`; `None` when it is cut short or too long.
    pub fn get(input: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = input.split_first()?;
            *input = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_last_bucket_holds_the_largest_values() {
        assert_eq!(bucket(MAX_MICROS), BUCKETS - 1);
        assert!(bucket(MAX_MICROS - MAX_MICROS / 20) < BUCKETS - 1);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(0), 0);
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut s = Sketch::default();
        for v in 1..=10_000u64 {
            s.record(v * 100);
        }
        for (q, want) in [(0.5, 500_000.0), (0.95, 950_000.0), (0.99, 990_000.0), (0.0, 100.0), (1.0, 1_000_000.0)] {
            let got = s.quantile(q).unwrap_or_default();
            assert!((got - want).abs() <= want * ACCURACY + 100.0, "q{q}: {got} vs {want}");
        }
        assert_eq!(Sketch::default().quantile(0.5), None);
    }

    proptest! {
        #[test]
        fn every_value_is_within_the_accuracy_of_its_bucket(v in 2u64..MAX_MICROS) {
            let got = value(bucket(v));
            prop_assert!((got - v as f64).abs() <= v as f64 * ACCURACY * 1.000_001, "{v} → {got}");
        }

        #[test]
        fn a_merge_is_the_sketch_of_all_values(a in proptest::collection::vec(0u64..10_000_000, 0..200), b in proptest::collection::vec(0u64..10_000_000, 0..200)) {
            let (mut x, mut y, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
            a.iter().for_each(|v| { x.record(*v); all.record(*v) });
            b.iter().for_each(|v| { y.record(*v); all.record(*v) });
            x.merge(&y);
            prop_assert_eq!(&x, &all);
            let mut bytes = Vec::new();
            x.encode(&mut bytes);
            let mut input = bytes.as_slice();
            prop_assert_eq!(Sketch::decode(&mut input), Some(all));
            prop_assert!(input.is_empty());
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut input = bytes.as_slice();
            let _ = Sketch::decode(&mut input);
        }
    }
}
