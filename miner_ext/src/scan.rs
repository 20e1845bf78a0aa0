//! Scanning a run of nonces for the best hash, with one kernel on one thread.

use crate::backend::Backend;
use crate::work::{lane0_mask, lane0_zeros, leading_zeros, Template, Work};

/// Nonces handed to a kernel per call: large enough to amortise the call,
/// small enough to stay in L1.
const BATCH: usize = 256;

/// A hash found by a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub nonce: u64,
    /// Position in scan order (from the search's first nonce), for tie-breaking.
    pub offset: u64,
    pub zeros: u32,
    pub hash: [u8; 32],
}

impl Hit {
    /// Whether `self` beats `other`: more zeros, or as many and scanned earlier.
    pub fn beats(&self, other: &Hit) -> bool {
        self.zeros > other.zeros || (self.zeros == other.zeros && self.offset < other.offset)
    }
}

/// What a scan did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Nonces covered, in scan order (fewer than asked only when stopped early).
    pub hashed: u64,
    /// The best hash with at least `min_zeros` zeros, ties to the earliest nonce.
    pub best: Option<Hit>,
}

/// One run of nonces to scan.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    /// First nonce; the run wraps from `u64::MAX` to 0.
    pub start: u64,
    /// Nonces to scan.
    pub count: u64,
    /// Scan-order offset of `start` within the whole search (reported in hits).
    pub offset: u64,
}

/// Scan `range` and return its best hash with at least `min_zeros` zeros,
/// stopping early once a hash has `stop_zeros` or more, or when `abort`
/// answers true (asked every few microseconds, between batches).
pub fn scan(
    backend: Backend,
    work: &Work,
    range: Range,
    min_zeros: u32,
    stop_zeros: Option<u32>,
    abort: impl Fn() -> bool,
) -> ScanOutcome {
    let mut buf = [0u64; BATCH];
    let mut best: Option<Hit> = None;
    let mut threshold = min_zeros;
    let mut mask = lane0_mask(threshold);
    let mut done = 0u64;
    let lanes = backend.lanes();

    while done < range.count {
        let nonce = range.start.wrapping_add(done);
        let (hi, lo) = ((nonce >> 32) as u32, nonce as u32);
        // A run sharing the high half (one template); never crosses 2^32 or wraps.
        let run = (range.count - done).min((1u64 << 32) - u64::from(lo));
        let tpl = Template::new(work, hi);
        let mut pos = 0u64;
        while pos < run {
            if abort() {
                return ScanOutcome {
                    hashed: done + pos,
                    best,
                };
            }
            let n = (run - pos).min(BATCH as u64) as usize;
            let padded = n.div_ceil(lanes) * lanes;
            // Lanes past `n` hash nonces outside the run; they are ignored.
            backend.lane0s(&tpl, lo.wrapping_add(pos as u32), &mut buf[..padded]);
            for (i, &lane0) in buf[..n].iter().enumerate() {
                if lane0 & mask != 0 {
                    continue;
                }
                let k = done + pos + i as u64;
                let nonce = range.start.wrapping_add(k);
                let hash = work.hash(nonce);
                let zeros = match lane0_zeros(lane0) {
                    Some(z) => z,
                    None => leading_zeros(&hash),
                };
                if zeros < threshold {
                    continue;
                }
                best = Some(Hit {
                    nonce,
                    offset: range.offset + k,
                    zeros,
                    hash,
                });
                if stop_zeros.is_some_and(|s| zeros >= s) {
                    return ScanOutcome {
                        hashed: k + 1,
                        best,
                    };
                }
                // Later nonces in this scan lose ties to this one.
                threshold = zeros + 1;
                mask = lane0_mask(threshold);
            }
            pos += n as u64;
        }
        done += run;
    }
    ScanOutcome {
        hashed: range.count,
        best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work() -> Work {
        Work {
            index: 7,
            entropy: [0x11; 32],
            farmer: std::array::from_fn(|i| i as u8),
        }
    }

    /// The straightforward answer: hash every nonce, keep strictly better ones.
    fn reference(work: &Work, range: Range, min_zeros: u32) -> Option<Hit> {
        let mut best: Option<Hit> = None;
        for k in 0..range.count {
            let nonce = range.start.wrapping_add(k);
            let hash = work.hash(nonce);
            let zeros = leading_zeros(&hash);
            if zeros >= min_zeros && best.is_none_or(|b| zeros > b.zeros) {
                best = Some(Hit {
                    nonce,
                    offset: range.offset + k,
                    zeros,
                    hash,
                });
            }
        }
        best
    }

    #[test]
    fn every_backend_finds_the_reference_best() {
        let w = work();
        let ranges = [
            Range {
                start: 0,
                count: 5000,
                offset: 0,
            },
            // Crosses a change of the high half.
            Range {
                start: (3u64 << 32) - 1234,
                count: 3001,
                offset: 9,
            },
            // Wraps from 2^64 - 1 to 0.
            Range {
                start: u64::MAX - 700,
                count: 1500,
                offset: 0,
            },
            Range {
                start: 42,
                count: 1,
                offset: 0,
            },
            Range {
                start: 42,
                count: 0,
                offset: 0,
            },
        ];
        for range in ranges {
            for min in [0, 2, 3, 40] {
                let expected = reference(&w, range, min);
                for b in Backend::available() {
                    let got = scan(b, &w, range, min, None, || false);
                    assert_eq!(got.best, expected, "{} {range:?} min {min}", b.name());
                    assert_eq!(got.hashed, range.count);
                }
            }
        }
    }

    #[test]
    fn stops_at_the_first_hash_reaching_the_stop_count() {
        let w = work();
        let range = Range {
            start: 1000,
            count: 200_000,
            offset: 0,
        };
        let first = (0..range.count)
            .find(|k| leading_zeros(&w.hash(range.start + k)) >= 3)
            .expect("a 3-zero hash within 200k nonces");
        for b in Backend::available() {
            let got = scan(b, &w, range, 0, Some(3), || false);
            let hit = got.best.expect("found");
            assert_eq!(hit.nonce, range.start + first, "{}", b.name());
            assert_eq!(got.hashed, first + 1);
        }
    }

    #[test]
    fn abort_stops_between_batches() {
        let w = work();
        let range = Range {
            start: 0,
            count: 1 << 20,
            offset: 0,
        };
        let calls = std::cell::Cell::new(0);
        let got = scan(Backend::best(), &w, range, 0, None, || {
            calls.set(calls.get() + 1);
            calls.get() > 3
        });
        assert_eq!(got.hashed, 3 * BATCH as u64);
        assert!(got.best.is_some());
    }

    #[test]
    fn ties_go_to_the_earlier_offset() {
        let a = Hit {
            nonce: 5,
            offset: 1,
            zeros: 3,
            hash: [0; 32],
        };
        let b = Hit {
            nonce: 0,
            offset: 2,
            zeros: 3,
            hash: [0; 32],
        };
        assert!(a.beats(&b));
        assert!(!b.beats(&a));
        let c = Hit { zeros: 4, ..b };
        assert!(c.beats(&a));
    }
}
