//! Run-time CPU dispatch among the hashing kernels.
//!
//! Each kernel computes the first lane (first 8 bytes) of the hash for a run
//! of consecutive nonces sharing their high 32 bits. All of them run the same
//! generic round code (`keccak.rs`), instantiated for a lane type and compiled
//! with that type's target features, so they are bit-identical by construction
//! and by test.

use crate::keccak::Lanes;
use crate::work::{lane0_from_template, nonce_lane, Template, Work};

/// A hashing kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Portable 64-bit code, one hash at a time.
    Scalar,
    /// Four hashes per 256-bit register (x86-64 AVX2).
    Avx2,
    /// Eight hashes per 512-bit register, with `vprolq` and `vpternlogq` (x86-64 AVX-512F).
    Avx512,
}

impl Backend {
    /// Every kernel this build knows, slowest first.
    pub const ALL: [Backend; 3] = [Backend::Scalar, Backend::Avx2, Backend::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Hashes computed side by side.
    pub fn lanes(self) -> usize {
        match self {
            Backend::Scalar => 1,
            Backend::Avx2 => 4,
            Backend::Avx512 => 8,
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernels this CPU can run, slowest first.
    pub fn available() -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| b.is_available())
            .collect()
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Backend {
        *Backend::available()
            .last()
            .expect("scalar is always available")
    }

    /// First hash lane for nonces `hi << 32 | lo.wrapping_add(k)`, k in `0..out.len()`.
    ///
    /// `out.len()` must be a multiple of [`Backend::lanes`].
    ///
    /// # Panics
    /// If the CPU lacks the kernel's features (never silently falls back: a
    /// test that forces a path must really run it).
    pub fn lane0s(self, tpl: &Template, lo: u32, out: &mut [u64]) {
        assert!(
            out.len().is_multiple_of(self.lanes()),
            "output length must be a multiple of the lanes"
        );
        assert!(
            self.is_available(),
            "{} is not supported by this CPU",
            self.name()
        );
        match self {
            Backend::Scalar => lane0s::<u64>(tpl, lo, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the feature was detected just above.
            Backend::Avx2 => unsafe { x86::lane0s_avx2(tpl, lo, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the feature was detected just above.
            Backend::Avx512 => unsafe { x86::lane0s_avx512(tpl, lo, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("checked by is_available"),
        }
    }
}

/// First hash lanes (the first 8 bytes of each hash, little-endian) of `count`
/// nonces from `start`, wrapping at 2^64, computed by `backend`'s kernel: a
/// window onto each kernel's raw output, for comparing them.
pub fn first_lanes(backend: Backend, work: &Work, start: u64, count: usize) -> Vec<u64> {
    let lanes = backend.lanes();
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0u64; 256];
    while out.len() < count {
        let nonce = start.wrapping_add(out.len() as u64);
        let lo = nonce as u32;
        // Stay within one high half (one template) per kernel call.
        let n = (count - out.len())
            .min(buf.len())
            .min(((1u64 << 32) - u64::from(lo)).min(usize::MAX as u64) as usize);
        let tpl = Template::new(work, (nonce >> 32) as u32);
        let padded = n.div_ceil(lanes) * lanes;
        backend.lane0s(&tpl, lo, &mut buf[..padded]);
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// The kernel body shared by every lane type.
#[inline(always)]
fn lane0s<V: Lanes>(tpl: &Template, lo: u32, out: &mut [u64]) {
    // The 25-lane state does not fit in AVX2's 16 registers, so the compiler
    // spills to the stack, with unaligned moves into a frame whose alignment
    // depends on the caller: spills straddling cache lines cost up to a fifth
    // of the AVX2 rate. A cache-line-aligned local that must live in memory
    // makes the compiler align the frame, and with it the spill slots.
    #[repr(align(64))]
    struct Aligned([u64; 8]);
    let mut nonces = Aligned([0u64; 8]);
    let n = &mut std::hint::black_box(&mut nonces).0;
    for (k, dst) in out.chunks_exact_mut(V::LANES).enumerate() {
        let base = lo.wrapping_add((k * V::LANES) as u32);
        for (j, slot) in n[..V::LANES].iter_mut().enumerate() {
            *slot = nonce_lane(base.wrapping_add(j as u32));
        }
        lane0_from_template(tpl, V::load(n)).store(dst);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::lane0s;
    use crate::keccak::Lanes;
    use crate::work::Template;
    use std::arch::x86_64::*;

    /// Four lanes in a 256-bit register. Only created inside `lane0s_avx2`.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256i);

    // SAFETY (all methods): values of this type exist only inside
    // `lane0s_avx2`, which runs after AVX2 was detected; every method is
    // inlined into it.
    impl Lanes for Avx2 {
        const LANES: usize = 4;
        const TERNLOG: bool = false;

        #[inline(always)]
        fn splat(x: u64) -> Self {
            Avx2(unsafe { _mm256_set1_epi64x(x as i64) })
        }
        #[inline(always)]
        fn load(src: &[u64]) -> Self {
            assert!(src.len() >= 4);
            Avx2(unsafe { _mm256_loadu_si256(src.as_ptr().cast()) })
        }
        #[inline(always)]
        fn store(self, dst: &mut [u64]) {
            assert!(dst.len() >= 4);
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), self.0) }
        }
        #[inline(always)]
        fn xor(self, b: Self) -> Self {
            Avx2(unsafe { _mm256_xor_si256(self.0, b.0) })
        }
        #[inline(always)]
        fn xor3(self, b: Self, c: Self) -> Self {
            self.xor(b).xor(c)
        }
        #[inline(always)]
        fn rol<const L: i32, const R: i32>(self) -> Self {
            unsafe {
                let x = self.0;
                Avx2(if L == 8 {
                    // Byte rotations are one shuffle instead of two shifts and an OR.
                    let m = _mm256_setr_epi8(
                        7, 0, 1, 2, 3, 4, 5, 6, 15, 8, 9, 10, 11, 12, 13, 14, 7, 0, 1, 2, 3, 4, 5,
                        6, 15, 8, 9, 10, 11, 12, 13, 14,
                    );
                    _mm256_shuffle_epi8(x, m)
                } else if L == 56 {
                    let m = _mm256_setr_epi8(
                        1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12, 13, 14, 15, 8, 1, 2, 3, 4, 5, 6, 7,
                        0, 9, 10, 11, 12, 13, 14, 15, 8,
                    );
                    _mm256_shuffle_epi8(x, m)
                } else if L == 1 {
                    // x + x runs on more ports than a shift.
                    _mm256_or_si256(_mm256_add_epi64(x, x), _mm256_srli_epi64::<63>(x))
                } else {
                    _mm256_or_si256(_mm256_slli_epi64::<L>(x), _mm256_srli_epi64::<R>(x))
                })
            }
        }
        #[inline(always)]
        fn chi(self, b: Self, c: Self) -> Self {
            Avx2(unsafe { _mm256_xor_si256(self.0, _mm256_andnot_si256(b.0, c.0)) })
        }
    }

    /// Eight lanes in a 512-bit register. Only created inside `lane0s_avx512`.
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512i);

    // SAFETY (all methods): as for `Avx2`, with AVX-512F detected.
    impl Lanes for Avx512 {
        const LANES: usize = 8;
        const TERNLOG: bool = true;

        #[inline(always)]
        fn splat(x: u64) -> Self {
            Avx512(unsafe { _mm512_set1_epi64(x as i64) })
        }
        #[inline(always)]
        fn load(src: &[u64]) -> Self {
            assert!(src.len() >= 8);
            Avx512(unsafe { _mm512_loadu_si512(src.as_ptr().cast()) })
        }
        #[inline(always)]
        fn store(self, dst: &mut [u64]) {
            assert!(dst.len() >= 8);
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), self.0) }
        }
        #[inline(always)]
        fn xor(self, b: Self) -> Self {
            Avx512(unsafe { _mm512_xor_si512(self.0, b.0) })
        }
        #[inline(always)]
        fn xor3(self, b: Self, c: Self) -> Self {
            // 0x96: a ^ b ^ c
            Avx512(unsafe { _mm512_ternarylogic_epi64::<0x96>(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn rol<const L: i32, const R: i32>(self) -> Self {
            Avx512(unsafe { _mm512_rol_epi64::<L>(self.0) })
        }
        #[inline(always)]
        fn chi(self, b: Self, c: Self) -> Self {
            // 0xD2: a ^ (!b & c)
            Avx512(unsafe { _mm512_ternarylogic_epi64::<0xD2>(self.0, b.0, c.0) })
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn lane0s_avx2(tpl: &Template, lo: u32, out: &mut [u64]) {
        lane0s::<Avx2>(tpl, lo, out)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn lane0s_avx512(tpl: &Template, lo: u32, out: &mut [u64]) {
        lane0s::<Avx512>(tpl, lo, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(seed: u8) -> Work {
        Work {
            index: 0xA1B2_C3D4 ^ u32::from(seed),
            entropy: std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(seed)),
            farmer: std::array::from_fn(|i| (i as u8).wrapping_mul(101) ^ seed),
        }
    }

    #[test]
    fn every_backend_equals_the_full_hash() {
        for seed in 0..3u8 {
            let w = work(seed);
            for hi in [0u32, 1, 0x8000_0000, u32::MAX] {
                let tpl = Template::new(&w, hi);
                // Runs that wrap the low half and that start at zero.
                for lo in [0u32, u32::MAX - 20, 0x1234_5678] {
                    let mut expected = vec![0u64; 64];
                    for (k, e) in expected.iter_mut().enumerate() {
                        let nonce = u64::from(hi) << 32 | u64::from(lo.wrapping_add(k as u32));
                        let h = w.hash(nonce);
                        *e = u64::from_le_bytes(h[..8].try_into().unwrap());
                    }
                    for b in Backend::available() {
                        let mut got = vec![0u64; 64];
                        b.lane0s(&tpl, lo, &mut got);
                        assert_eq!(got, expected, "backend {} hi {hi:#x} lo {lo:#x}", b.name());
                    }
                }
            }
        }
    }

    #[test]
    fn first_lanes_cross_the_high_half_and_wrap() {
        let w = work(9);
        for start in [u64::MAX - 100, (5u64 << 32) - 37] {
            let expected: Vec<u64> = (0..300u64)
                .map(|k| {
                    let h = w.hash(start.wrapping_add(k));
                    u64::from_le_bytes(h[..8].try_into().unwrap())
                })
                .collect();
            for b in Backend::available() {
                assert_eq!(first_lanes(b, &w, start, 300), expected, "{}", b.name());
            }
        }
    }

    #[test]
    fn names_round_trip_and_best_is_available() {
        for b in Backend::ALL {
            assert_eq!(Backend::from_name(b.name()), Some(b));
        }
        assert_eq!(Backend::from_name("sse9"), None);
        assert!(Backend::best().is_available());
        assert_eq!(Backend::available()[0], Backend::Scalar);
    }
}
