//! Keccak-f\[1600\] written once, generically over a "bundle of lanes" type, so the
//! scalar path and every SIMD path run literally the same round code.
//!
//! State lanes are indexed `x + 5 * y`, as in the Keccak reference.

/// Round constants for iota.
pub(crate) const RC: [u64; 24] = [
    0x0000_0000_0000_0001,
    0x0000_0000_0000_8082,
    0x8000_0000_0000_808a,
    0x8000_0000_8000_8000,
    0x0000_0000_0000_808b,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8009,
    0x0000_0000_0000_008a,
    0x0000_0000_0000_0088,
    0x0000_0000_8000_8009,
    0x0000_0000_8000_000a,
    0x0000_0000_8000_808b,
    0x8000_0000_0000_008b,
    0x8000_0000_0000_8089,
    0x8000_0000_0000_8003,
    0x8000_0000_0000_8002,
    0x8000_0000_0000_0080,
    0x0000_0000_0000_800a,
    0x8000_0000_8000_000a,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8080,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8008,
];

/// Rho rotation of lane `x + 5 * y`.
pub(crate) const RHO: [u32; 25] = [
    0, 1, 62, 28, 27, 36, 44, 6, 55, 20, 3, 10, 43, 25, 39, 41, 45, 15, 21, 8, 18, 2, 61, 56, 14,
];

/// A bundle of independent 64-bit lanes: one per hash computed side by side.
///
/// Every method must be inlined into a kernel compiled with the matching
/// `#[target_feature]`; implementations for SIMD types are only ever created
/// inside such kernels, after the CPU feature was detected.
pub(crate) trait Lanes: Copy {
    /// Hashes per bundle.
    const LANES: usize;
    /// Whether a three-input XOR is one instruction (AVX-512 `vpternlogq`).
    const TERNLOG: bool;

    fn splat(x: u64) -> Self;
    /// Reads `LANES` words.
    fn load(src: &[u64]) -> Self;
    /// Writes `LANES` words.
    fn store(self, dst: &mut [u64]);
    fn xor(self, b: Self) -> Self;
    fn xor3(self, b: Self, c: Self) -> Self;
    /// Rotate left by `L`; `R` is always `64 - L` (shift-based paths need both
    /// as constants, and stable Rust cannot compute one from the other).
    fn rol<const L: i32, const R: i32>(self) -> Self;
    /// `self ^ (!b & c)`: the chi step.
    fn chi(self, b: Self, c: Self) -> Self;
}

/// Rotate by a literal, supplying both shift counts.
macro_rules! rol {
    ($v:expr, $n:literal) => {
        $v.rol::<$n, { 64 - $n }>()
    };
}

impl Lanes for u64 {
    const LANES: usize = 1;
    const TERNLOG: bool = false;

    #[inline(always)]
    fn splat(x: u64) -> Self {
        x
    }
    #[inline(always)]
    fn load(src: &[u64]) -> Self {
        src[0]
    }
    #[inline(always)]
    fn store(self, dst: &mut [u64]) {
        dst[0] = self;
    }
    #[inline(always)]
    fn xor(self, b: Self) -> Self {
        self ^ b
    }
    #[inline(always)]
    fn xor3(self, b: Self, c: Self) -> Self {
        self ^ b ^ c
    }
    #[inline(always)]
    fn rol<const L: i32, const R: i32>(self) -> Self {
        self.rotate_left(L as u32)
    }
    #[inline(always)]
    fn chi(self, b: Self, c: Self) -> Self {
        self ^ (!b & c)
    }
}

/// Column parities of theta.
#[inline(always)]
pub(crate) fn parities<V: Lanes>(a: &[V; 25]) -> [V; 5] {
    let col = |x: usize| a[x].xor3(a[x + 5], a[x + 10]).xor3(a[x + 15], a[x + 20]);
    [col(0), col(1), col(2), col(3), col(4)]
}

/// Theta + rho + pi, from the column parities: the 25 lanes `b` that chi reads.
#[inline(always)]
fn theta_rho_pi<V: Lanes>(a: &[V; 25], c: &[V; 5]) -> [V; 25] {
    let r = [
        rol!(c[0], 1),
        rol!(c[1], 1),
        rol!(c[2], 1),
        rol!(c[3], 1),
        rol!(c[4], 1),
    ];
    // Lane i of column x after theta: a[i] ^ c[x-1] ^ rol(c[x+1], 1). With a
    // ternary-logic instruction that is one operation; otherwise D[x] is
    // formed once and reused by the five lanes of its column.
    let d = if V::TERNLOG {
        [c[0]; 5] // unused
    } else {
        [
            c[4].xor(r[1]),
            c[0].xor(r[2]),
            c[1].xor(r[3]),
            c[2].xor(r[4]),
            c[3].xor(r[0]),
        ]
    };
    let t = |i: usize| -> V {
        let x = i % 5;
        if V::TERNLOG {
            a[i].xor3(c[(x + 4) % 5], r[(x + 1) % 5])
        } else {
            a[i].xor(d[x])
        }
    };
    // b[X + 5Y] = rol(t[x + 5y], RHO[x + 5y]) with X = y, Y = 2x + 3y (pi).
    [
        t(0),
        rol!(t(6), 44),
        rol!(t(12), 43),
        rol!(t(18), 21),
        rol!(t(24), 14),
        rol!(t(3), 28),
        rol!(t(9), 20),
        rol!(t(10), 3),
        rol!(t(16), 45),
        rol!(t(22), 61),
        rol!(t(1), 1),
        rol!(t(7), 6),
        rol!(t(13), 25),
        rol!(t(19), 8),
        rol!(t(20), 18),
        rol!(t(4), 27),
        rol!(t(5), 36),
        rol!(t(11), 10),
        rol!(t(17), 15),
        rol!(t(23), 56),
        rol!(t(2), 62),
        rol!(t(8), 55),
        rol!(t(14), 39),
        rol!(t(15), 41),
        rol!(t(21), 2),
    ]
}

/// Chi + iota over the lanes produced by theta/rho/pi.
#[inline(always)]
pub(crate) fn chi_iota<V: Lanes>(b: &[V; 25], rc: u64) -> [V; 25] {
    let mut out = [b[0]; 25];
    for y in 0..5 {
        for x in 0..5 {
            out[x + 5 * y] = b[x + 5 * y].chi(b[(x + 1) % 5 + 5 * y], b[(x + 2) % 5 + 5 * y]);
        }
    }
    out[0] = out[0].xor(V::splat(rc));
    out
}

/// One full Keccak-f\[1600\] round.
#[inline(always)]
pub(crate) fn round<V: Lanes>(a: &mut [V; 25], rc: u64) {
    let c = parities(a);
    let b = theta_rho_pi(a, &c);
    *a = chi_iota(&b, rc);
}

/// Lane 0 after the last round: only what chi needs for output lane (0, 0).
///
/// The zero count lives in the first bytes of the hash, so a candidate is
/// recognised from this one lane; the rest of the last round is skipped.
#[inline(always)]
pub(crate) fn last_round_lane0<V: Lanes>(a: &[V; 25], rc: u64) -> V {
    let c = parities(a);
    let b0 = a[0].xor3(c[4], rol!(c[1], 1));
    let b1 = rol!(a[6].xor3(c[0], rol!(c[2], 1)), 44);
    let b2 = rol!(a[12].xor3(c[1], rol!(c[3], 1)), 43);
    b0.chi(b1, b2).xor(V::splat(rc))
}

/// The full permutation on one state (the reference the fast paths are tested against).
pub fn keccak_f(a: &mut [u64; 25]) {
    for rc in RC {
        round(a, rc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_of_zero_state_matches_published_vector() {
        // First lanes of Keccak-f[1600] applied once to the all-zero state
        // (the Keccak team's KeccakF-1600 intermediate values).
        let mut a = [0u64; 25];
        keccak_f(&mut a);
        assert_eq!(a[0], 0xF1258F7940E1DDE7);
        assert_eq!(a[1], 0x84D5CCF933C0478A);
        assert_eq!(a[24], 0xEAF1FF7B5CECA249);
    }

    #[test]
    fn last_round_shortcut_equals_full_round() {
        let mut a = [0u64; 25];
        for (i, lane) in a.iter_mut().enumerate() {
            *lane = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        let lane0 = last_round_lane0(&a, RC[23]);
        round(&mut a, RC[23]);
        assert_eq!(lane0, a[0]);
    }
}
