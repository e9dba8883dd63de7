//! How the metrics history is kept: a service's [`Point`]s in chunks of [`CHUNK_POINTS`] at one
//! resolution, each chunk the points' compact encoding, compressed (deflate) — neighbouring points
//! share most of their buckets and instance names, which compresses well. Ten-second points are
//! kept for [`FINE_KEPT_SECS`], minute points for [`COARSE_KEPT_SECS`].

use std::io::{Read, Write};

use berth_core::metrics::Point;

/// The resolutions, seconds per point.
pub const FINE: u64 = 10;
pub const COARSE: u64 = 60;
/// Points per chunk: ten minutes of ten-second points, an hour of minute points.
pub const CHUNK_POINTS: u64 = 60;
/// How long points are kept at each resolution.
pub const FINE_KEPT_SECS: u64 = 24 * 3600;
pub const COARSE_KEPT_SECS: u64 = 7 * 24 * 3600;

/// The first byte of a chunk: the layout of what follows (3: sketches at 5 % accuracy, CPU in ms and memory in KiB). Chunks of
/// a layout this berth does not know are skipped like damaged ones (and started afresh when
/// written to).
const LAYOUT: u8 = 3;

/// The start of the chunk holding a point at `ts` of `resolution`.
pub fn chunk_start(resolution: u64, ts: u64) -> u64 {
    let span = resolution * CHUNK_POINTS;
    ts - ts % span
}

/// The bytes stored for `points` (in time order).
pub fn encode(points: &[Point]) -> Vec<u8> {
    let mut raw = Vec::new();
    points.iter().for_each(|p| p.encode(&mut raw));
    let mut z = flate2::write::DeflateEncoder::new(vec![LAYOUT], flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = z.write_all(&raw);
    z.finish().unwrap_or_default()
}

/// The points of a chunk; `None` if its bytes are not a chunk (damaged).
pub fn decode(bytes: &[u8]) -> Option<Vec<Point>> {
    let (&LAYOUT, bytes) = bytes.split_first()? else { return None };
    let mut raw = Vec::new();
    // A chunk holds at most CHUNK_POINTS points; anything inflating far beyond is not one.
    flate2::read::DeflateDecoder::new(bytes).take(16 << 20).read_to_end(&mut raw).ok()?;
    let mut input = raw.as_slice();
    let mut points = Vec::new();
    while !input.is_empty() {
        points.push(Point::decode(&mut input)?);
    }
    Some(points)
}

/// Merges `add` into the chunk's `points` at its resolution: into the point of its slot, or as
/// a new one in time order.
pub fn merge_into(points: &mut Vec<Point>, resolution: u64, add: &Point) {
    let ts = add.ts - add.ts % resolution;
    match points.binary_search_by_key(&ts, |p| p.ts) {
        Ok(i) => points[i].merge(add),
        Err(i) => {
            let mut p = Point::new(ts, resolution as u32);
            p.merge(add);
            points.insert(i, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::metrics::{Traffic, Usage};
    use berth_core::sketch::Sketch;

    #[test]
    fn chunks_round_trip_and_merge_into_slots() {
        let mut points = Vec::new();
        for ts in [1_000_020, 1_000_000, 1_000_030, 1_000_050] {
            let mut p = Point::new(ts, 10);
            let mut latency = Sketch::default();
            latency.record(ts % 1000 + 1);
            p.add_traffic(&Traffic { revision: 2, classes: [0, 1, 0, 0, 0], latency });
            p.add_usage(&Usage { instance: "web-2-abc".into(), revision: 2, cpu_micros: 10_000, memory_bytes: 1 << 20 });
            merge_into(&mut points, COARSE, &p);
        }
        assert_eq!(points.iter().map(|p| (p.ts, p.total().requests())).collect::<Vec<_>>(), [(999_960, 1), (1_000_020, 3)]);
        assert_eq!(points[1].usage[0].cpu_micros, 30_000);
        let bytes = encode(&points);
        assert_eq!(decode(&bytes), Some(points));
        assert_eq!(decode(b"not a chunk"), None);
        assert_eq!(decode(&[]), None);
        let mut other_layout = bytes.clone();
        other_layout[0] = LAYOUT + 1;
        assert_eq!(decode(&other_layout), None);
        assert_eq!(chunk_start(FINE, 1_000_599), 1_000_200);
    }
}
