//! A service's metrics history: one [`Point`] per interval (10 s, or 1 min once rolled up), with
//! the router's traffic per revision, the load it saw, and each instance's CPU and memory. Every
//! field merges exactly — counts add, latency sketches merge, maxima take the larger — so ten-second
//! points roll up into minutes, and points into any step a chart asks for, with true percentiles.

use crate::sketch::{varint, Sketch};

/// Responses by status class, 1xx … 5xx.
pub type Classes = [u64; 5];

/// The index in [`Classes`] of a status code.
pub fn class_of(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5)) - 1
}

/// One revision's traffic in an interval, as the router saw it. Revision 0: requests answered
/// without reaching an instance (refused, timed out waiting for one).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    pub revision: u32,
    pub classes: Classes,
    /// Time from a request's arrival to its response head.
    pub latency: Sketch,
}

impl Traffic {
    pub fn requests(&self) -> u64 {
        self.classes.iter().sum()
    }

    fn merge(&mut self, other: &Traffic) {
        for (a, b) in self.classes.iter_mut().zip(other.classes) {
            *a += b;
        }
        self.latency.merge(&other.latency);
    }
}

/// One instance's use of its limits over an interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub instance: String,
    pub revision: u32,
    /// CPU time used in the interval, microseconds.
    pub cpu_micros: u64,
    /// The most memory seen in use, bytes.
    pub memory_bytes: u64,
}

/// Everything known of a service over one interval.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Point {
    /// The interval's start, seconds since the Unix epoch.
    pub ts: u64,
    /// Its length in seconds.
    pub secs: u32,
    /// By revision, in revision order.
    pub traffic: Vec<Traffic>,
    /// Requests in flight and queued, summed over once-a-second samples, and the samples taken.
    pub concurrency_sum: u64,
    pub samples: u32,
    pub concurrency_max: u32,
    /// The most ready instances seen.
    pub instances_max: u32,
    /// By instance, in instance order.
    pub usage: Vec<Usage>,
}

impl Point {
    pub fn new(ts: u64, secs: u32) -> Point {
        Point { ts, secs, ..Point::default() }
    }

    /// Adds `t` to its revision's traffic.
    pub fn add_traffic(&mut self, t: &Traffic) {
        match self.traffic.binary_search_by_key(&t.revision, |x| x.revision) {
            Ok(i) => self.traffic[i].merge(t),
            Err(i) => self.traffic.insert(i, t.clone()),
        }
    }

    /// Adds `u` to its instance's usage.
    pub fn add_usage(&mut self, u: &Usage) {
        match self.usage.binary_search_by(|x| x.instance.as_str().cmp(&u.instance)) {
            Ok(i) => {
                let x = &mut self.usage[i];
                x.cpu_micros += u.cpu_micros;
                x.memory_bytes = x.memory_bytes.max(u.memory_bytes);
            }
            Err(i) => self.usage.insert(i, u.clone()),
        }
    }

    /// Adds everything of `other`, an interval of the same span or within it; `ts` and `secs`
    /// stay this point's.
    pub fn merge(&mut self, other: &Point) {
        other.traffic.iter().for_each(|t| self.add_traffic(t));
        other.usage.iter().for_each(|u| self.add_usage(u));
        self.concurrency_sum += other.concurrency_sum;
        self.samples += other.samples;
        self.concurrency_max = self.concurrency_max.max(other.concurrency_max);
        self.instances_max = self.instances_max.max(other.instances_max);
    }

    /// The traffic of every revision together.
    pub fn total(&self) -> Traffic {
        let mut all = Traffic::default();
        self.traffic.iter().for_each(|t| all.merge(t));
        all
    }

    /// The average of the concurrency samples, if any were taken.
    pub fn concurrency_avg(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.concurrency_sum as f64 / f64::from(self.samples))
    }

    /// Appends the point in a compact form (varints; the caller compresses runs of them). CPU
    /// time is kept to the millisecond and memory to the KiB.
    pub fn encode(&self, out: &mut Vec<u8>) {
        varint::put(out, self.ts);
        varint::put(out, u64::from(self.secs));
        varint::put(out, self.traffic.len() as u64);
        for t in &self.traffic {
            varint::put(out, u64::from(t.revision));
            t.classes.iter().for_each(|c| varint::put(out, *c));
            t.latency.encode(out);
        }
        varint::put(out, self.concurrency_sum);
        varint::put(out, u64::from(self.samples));
        varint::put(out, u64::from(self.concurrency_max));
        varint::put(out, u64::from(self.instances_max));
        varint::put(out, self.usage.len() as u64);
        for u in &self.usage {
            varint::put(out, u.instance.len() as u64);
            out.extend_from_slice(u.instance.as_bytes());
            varint::put(out, u64::from(u.revision));
            // Kept to the millisecond and the KiB: finer digits are noise that does not compress.
            varint::put(out, (u.cpu_micros + 500) / 1000);
            varint::put(out, (u.memory_bytes + 512) / 1024);
        }
    }

    /// Reads one point written by [`Point::encode`] from the front of `input`.
    pub fn decode(input: &mut &[u8]) -> Option<Point> {
        let small = |input: &mut &[u8]| varint::get(input).and_then(|v| u32::try_from(v).ok());
        let mut p = Point { ts: varint::get(input)?, secs: small(input)?, ..Point::default() };
        for _ in 0..varint::get(input)? {
            let revision = small(input)?;
            let mut classes = Classes::default();
            for c in &mut classes {
                *c = varint::get(input)?;
            }
            p.traffic.push(Traffic { revision, classes, latency: Sketch::decode(input)? });
        }
        p.concurrency_sum = varint::get(input)?;
        p.samples = small(input)?;
        p.concurrency_max = small(input)?;
        p.instances_max = small(input)?;
        for _ in 0..varint::get(input)? {
            let len = usize::try_from(varint::get(input)?).ok()?;
            if len > input.len() {
                return None;
            }
            let (name, rest) = input.split_at(len);
            *input = rest;
            let instance = String::from_utf8(name.to_vec()).ok()?;
            let revision = small(input)?;
            let cpu_micros = varint::get(input)?.checked_mul(1000)?;
            let memory_bytes = varint::get(input)?.checked_mul(1024)?;
            p.usage.push(Usage { instance, revision, cpu_micros, memory_bytes });
        }
        Some(p)
    }
}

/// Merges `points` (in time order) into slots of `step` seconds, aligned to multiples of `step`;
/// a slot no point falls in is left out (a gap in the history, not a zero).
pub fn resample(points: &[Point], step: u64) -> Vec<Point> {
    let step = step.max(1);
    let mut out: Vec<Point> = Vec::new();
    for p in points {
        let slot = p.ts - p.ts % step;
        match out.last_mut() {
            Some(last) if last.ts == slot => last.merge(p),
            _ => {
                let mut q = Point::new(slot, u32::try_from(step).unwrap_or(u32::MAX));
                q.merge(p);
                out.push(q);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(ts: u64, revision: u32, latencies: &[u64]) -> Point {
        let mut p = Point::new(ts, 10);
        let mut latency = Sketch::default();
        latencies.iter().for_each(|v| latency.record(*v));
        p.add_traffic(&Traffic { revision, classes: [0, latencies.len() as u64, 0, 0, 1], latency });
        p.add_usage(&Usage { instance: format!("i{revision}"), revision, cpu_micros: 1000, memory_bytes: 5 << 20 });
        p.concurrency_sum = 30;
        p.samples = 10;
        p.concurrency_max = 7;
        p.instances_max = 2;
        p
    }

    #[test]
    fn points_merge_exactly_and_round_trip() {
        let mut a = point(60, 1, &[100, 200, 300]);
        let b = point(70, 2, &[5_000]);
        let c = point(80, 1, &[400]);
        a.merge(&b);
        a.merge(&c);
        assert_eq!(a.ts, 60);
        assert_eq!(a.traffic.iter().map(|t| (t.revision, t.requests())).collect::<Vec<_>>(), [(1, 6), (2, 2)]);
        assert_eq!(a.total().requests(), 8);
        assert_eq!(a.total().latency.count(), 5);
        assert_eq!(a.usage.len(), 2);
        assert_eq!(a.usage[0].cpu_micros, 2000);
        assert_eq!(a.concurrency_avg(), Some(3.0));
        let mut bytes = Vec::new();
        a.encode(&mut bytes);
        b.encode(&mut bytes);
        let mut input = bytes.as_slice();
        assert_eq!(Point::decode(&mut input), Some(a));
        assert_eq!(Point::decode(&mut input), Some(b));
        assert!(input.is_empty());
        assert_eq!(Point::decode(&mut input), None);
    }

    #[test]
    fn resampling_merges_into_aligned_slots_and_leaves_gaps() {
        let points = [point(60, 1, &[100]), point(70, 1, &[200]), point(130, 2, &[300]), point(300, 1, &[400])];
        let slots = resample(&points, 60);
        assert_eq!(
            slots.iter().map(|p| (p.ts, p.secs, p.total().requests())).collect::<Vec<_>>(),
            [(60, 60, 4), (120, 60, 2), (300, 60, 2)]
        );
        assert_eq!(slots[0].total().latency.count(), 2);
    }

    #[test]
    fn a_cut_short_point_is_refused() {
        let mut bytes = Vec::new();
        point(60, 1, &[100]).encode(&mut bytes);
        for n in 0..bytes.len() {
            assert_eq!(Point::decode(&mut &bytes[..n]), None, "{n} bytes");
        }
    }
}
