//! The KALE work hash: Keccak-256 (original padding) over a 76-byte preimage
//! `index (u32 BE) | nonce (u64 BE) | entropy (32) | farmer key (32)`.

use crate::keccak::{keccak_f, parities, RC, RHO};

/// Bytes absorbed per Keccak-256 block (17 lanes).
const RATE: usize = 136;
/// Length of the KALE preimage.
pub const PREIMAGE_LEN: usize = 76;

/// What a nonce search is for: one farmer's pail in one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    pub index: u32,
    pub entropy: [u8; 32],
    pub farmer: [u8; 32],
}

impl Work {
    /// The 76-byte preimage for `nonce`.
    pub fn preimage(&self, nonce: u64) -> [u8; PREIMAGE_LEN] {
        let mut p = [0u8; PREIMAGE_LEN];
        p[0..4].copy_from_slice(&self.index.to_be_bytes());
        p[4..12].copy_from_slice(&nonce.to_be_bytes());
        p[12..44].copy_from_slice(&self.entropy);
        p[44..76].copy_from_slice(&self.farmer);
        p
    }

    /// The absorbed state for `nonce`: the padded preimage as lanes, capacity zero.
    fn lanes(&self, nonce: u64) -> [u64; 25] {
        let mut block = [0u8; RATE];
        block[..PREIMAGE_LEN].copy_from_slice(&self.preimage(nonce));
        // Original Keccak padding (pad10*1 with domain byte 0x01), not SHA-3's 0x06.
        block[PREIMAGE_LEN] ^= 0x01;
        block[RATE - 1] ^= 0x80;
        let mut a = [0u64; 25];
        for (lane, bytes) in a.iter_mut().zip(block.chunks_exact(8)) {
            *lane = u64::from_le_bytes(bytes.try_into().expect("8-byte chunk"));
        }
        a
    }

    /// Keccak-256 of the preimage for `nonce`: the hash the contract's `work` checks.
    pub fn hash(&self, nonce: u64) -> [u8; 32] {
        let mut a = self.lanes(nonce);
        keccak_f(&mut a);
        let mut out = [0u8; 32];
        for (bytes, lane) in out.chunks_exact_mut(8).zip(&a) {
            bytes.copy_from_slice(&lane.to_le_bytes());
        }
        out
    }
}

/// Leading zero hex nibbles: a zero byte counts 2, then a byte below 0x10 adds 1.
pub fn leading_zeros(hash: &[u8]) -> u32 {
    let mut zeros = 0;
    for &byte in hash {
        if byte != 0 {
            return zeros + u32::from(byte < 0x10);
        }
        zeros += 2;
    }
    zeros
}

/// Zeros of a hash from its first lane alone (the first 8 bytes, little-endian),
/// or `None` when all 16 nibbles there are zero and later bytes decide.
#[inline]
pub fn lane0_zeros(lane0: u64) -> Option<u32> {
    (lane0 != 0).then(|| lane0.swap_bytes().leading_zeros() / 4)
}

/// Mask over the first lane that is zero exactly when the hash has at least
/// `zeros` leading zero nibbles (for `zeros > 16`: when the whole lane is zero,
/// a necessary condition the caller completes with the full hash).
#[inline]
pub fn lane0_mask(zeros: u32) -> u64 {
    match zeros {
        0 => 0,
        1..=15 => (u64::MAX << (64 - 4 * zeros)).swap_bytes(),
        _ => u64::MAX,
    }
}

/// The per-hash constant part of the state, precomputed once per 2^32 nonces.
///
/// Only preimage bytes 4..12 hold the nonce: its high half sits in lane 0 and
/// its low half in the low 32 bits of lane 1. Within a run that shares the high
/// half, lane 1 alone changes, so after the first theta only columns 0 and 2
/// (through D\[0\] and D\[2\]) and lane 1 itself differ from hash to hash. The
/// other 14 lanes are stored here already rotated by rho; the 11 varying ones
/// are stored after theta for N = 0, to be completed per hash.
#[derive(Clone, Debug)]
pub struct Template {
    /// Indexed like the state (`x + 5y`): post-theta value, rotated when constant.
    pub(crate) t: [u64; 25],
}

impl Template {
    /// Template for the nonces `hi << 32 | lo`, any `lo`.
    pub fn new(work: &Work, hi: u32) -> Self {
        let a = work.lanes(u64::from(hi) << 32);
        let c = parities(&a);
        let d: [u64; 5] = std::array::from_fn(|x| c[(x + 4) % 5] ^ c[(x + 1) % 5].rotate_left(1));
        let t = std::array::from_fn(|i| {
            let x = i % 5;
            let after_theta = a[i] ^ d[x];
            if x == 0 || x == 2 || i == 1 {
                after_theta
            } else {
                after_theta.rotate_left(RHO[i])
            }
        });
        Template { t }
    }
}

/// The nonce's contribution to lane 1: its low 32 bits, big-endian in the byte stream.
#[inline(always)]
pub(crate) fn nonce_lane(lo: u32) -> u64 {
    u64::from(lo.swap_bytes())
}

/// Rounds 2..=23 run in full; round 1 starts from the template and round 24
/// stops at lane 0.
#[inline(always)]
pub(crate) fn lane0_from_template<V: crate::keccak::Lanes>(tpl: &Template, n: V) -> V {
    use crate::keccak::{chi_iota, last_round_lane0, round};
    macro_rules! rol {
        ($v:expr, $k:literal) => {
            $v.rol::<$k, { 64 - $k }>()
        };
    }
    let t = &tpl.t;
    let s = |i: usize| V::splat(t[i]);
    // Lane 1 varies by N, so C[1] does too: D[0] = .. ^ rol(N, 1), D[2] = .. ^ N.
    let r = rol!(n, 1);
    let b: [V; 25] = [
        s(0).xor(r),
        s(6),
        rol!(s(12).xor(n), 43),
        s(18),
        s(24),
        s(3),
        s(9),
        rol!(s(10).xor(r), 3),
        s(16),
        rol!(s(22).xor(n), 61),
        rol!(s(1).xor(n), 1),
        rol!(s(7).xor(n), 6),
        s(13),
        s(19),
        rol!(s(20).xor(r), 18),
        s(4),
        rol!(s(5).xor(r), 36),
        s(11),
        rol!(s(17).xor(n), 15),
        s(23),
        rol!(s(2).xor(n), 62),
        s(8),
        s(14),
        rol!(s(15).xor(r), 41),
        s(21),
    ];
    let mut a = chi_iota(&b, RC[0]);
    for &rc in &RC[1..23] {
        round(&mut a, rc);
    }
    last_round_lane0(&a, RC[23])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The published example of the KALE protocol notes.
    pub(crate) fn published() -> (Work, u64, &'static str) {
        // entropy = base64 "AAAAAAn66y/43JP7M02rwTmONZoWOmu1OPYz/bmzJ8o="
        let entropy = [
            0x00, 0x00, 0x00, 0x00, 0x09, 0xfa, 0xeb, 0x2f, 0xf8, 0xdc, 0x93, 0xfb, 0x33, 0x4d,
            0xab, 0xc1, 0x39, 0x8e, 0x35, 0x9a, 0x16, 0x3a, 0x6b, 0xb5, 0x38, 0xf6, 0x33, 0xfd,
            0xb9, 0xb3, 0x27, 0xca,
        ];
        // GBQHTQ7NTSKHVTSVM6EHUO3TU4P4BK2TAAII25V2TT2Q6OWXUJWEKALE, StrKey-decoded
        let farmer = [
            0x60, 0x79, 0xc3, 0xed, 0x9c, 0x94, 0x7a, 0xce, 0x55, 0x67, 0x88, 0x7a, 0x3b, 0x73,
            0xa7, 0x1f, 0xc0, 0xab, 0x53, 0x00, 0x10, 0x8d, 0x76, 0xba, 0x9c, 0xf5, 0x0f, 0x3a,
            0xd7, 0xa2, 0x6c, 0x45,
        ];
        let work = Work {
            index: 37,
            entropy,
            farmer,
        };
        (
            work,
            20495217910,
            "0000000099be0037e5a48324959cb9dd10965ae59511cfd1996f9b917aad9980",
        )
    }

    #[test]
    fn published_vector() {
        let (work, nonce, expected) = published();
        let h = work.hash(nonce);
        assert_eq!(hex(&h), expected);
        assert_eq!(leading_zeros(&h), 8);
    }

    #[test]
    fn keccak256_of_empty_input_is_the_original_keccak() {
        // Sanity check of the padding on a known vector: Keccak-256("") (Ethereum).
        let mut a = [0u64; 25];
        a[0] = 0x01;
        a[16] = 0x80 << 56;
        keccak_f(&mut a);
        let bytes: Vec<u8> = a[..4].iter().flat_map(|l| l.to_le_bytes()).collect();
        assert_eq!(
            hex(&bytes),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }

    #[test]
    fn zero_counting_edge_cases() {
        assert_eq!(leading_zeros(&[0u8; 32]), 64);
        assert_eq!(leading_zeros(&[0x0f; 32]), 1);
        assert_eq!(leading_zeros(&[0x10; 32]), 0);
        assert_eq!(leading_zeros(&[0x00, 0x01, 0xff]), 3);
        assert_eq!(leading_zeros(&[0x00, 0x10]), 2);
        assert_eq!(leading_zeros(&[0xff]), 0);
        assert_eq!(leading_zeros(&[]), 0);
    }

    #[test]
    fn lane0_zeros_and_mask_agree_with_byte_counting() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Shift right by a random amount so long zero prefixes occur.
            let be = seed >> (seed % 64);
            let lane = be.swap_bytes();
            let bytes = lane.to_le_bytes();
            let z = leading_zeros(&bytes);
            if lane != 0 {
                assert_eq!(lane0_zeros(lane), Some(z));
            }
            for k in 0..=16 {
                assert_eq!(lane & lane0_mask(k) == 0, z >= k, "lane {lane:#x} k {k}");
            }
        }
        assert_eq!(lane0_zeros(0), None);
    }

    #[test]
    fn template_path_equals_full_hash() {
        let (work, nonce, _) = published();
        for n in [
            nonce,
            0,
            u64::MAX,
            0xffff_ffff,
            0x1_0000_0000,
            0xdead_beef_0000_0001,
        ] {
            let tpl = Template::new(&work, (n >> 32) as u32);
            let lane0: u64 = lane0_from_template(&tpl, nonce_lane(n as u32));
            let full = work.hash(n);
            assert_eq!(lane0.to_le_bytes(), full[..8], "nonce {n}");
        }
    }
}
