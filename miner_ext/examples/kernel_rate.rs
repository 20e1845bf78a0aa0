//! Single-thread rate of each kernel, without Python or the thread pool:
//! `cargo run --release --example kernel_rate [seconds]`.

use std::time::{Duration, Instant};

use miner_ext::scan::{scan, Range};
use miner_ext::{Backend, Work};

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let work = Work {
        index: 37,
        entropy: [7; 32],
        farmer: [9; 32],
    };
    for backend in Backend::available() {
        let budget = Duration::from_secs_f64(seconds);
        let t0 = Instant::now();
        let mut hashed = 0u64;
        while t0.elapsed() < budget {
            let range = Range {
                start: hashed,
                count: 1 << 18,
                offset: hashed,
            };
            hashed += scan(backend, &work, range, 64, None, || false).hashed;
        }
        let rate = hashed as f64 / t0.elapsed().as_secs_f64();
        println!("{:>7}: {:6.2} MH/s", backend.name(), rate / 1e6);
    }
}
