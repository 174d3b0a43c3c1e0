//! Counter-based dropout masks: Philox-4x32-10 and the [`Dropout`] description built on it.
//!
//! Philox-4x32-10 (Salmon, Moraes, Dror, Shaw, *Parallel random numbers: as easy as 1, 2, 3*,
//! SC 2011; the Random123 library) maps a 128-bit counter and a 64-bit key to 128 random
//! bits with ten rounds of two 32 x 32 -> 64-bit multiplications. Nothing is carried from one
//! draw to the next, so any element of a mask can be computed on its own, by any thread, on
//! any device: a CPU kernel and a CUDA kernel that evaluate the same function draw the same
//! mask, whatever the thread count or block size.
//!
//! A dropout mask element is a pure function of `(seed, step, site, index)`:
//!
//! - key = `[seed as u32, (seed >> 32) as u32]`;
//! - counter = `[block as u32, (block >> 32) as u32, site, step]` with `block = index / 4`;
//! - word = output word `index % 4` of `philox4x32_10(counter, key)`;
//! - the element is dropped when `word < prob * 2^32` (rounded down), and otherwise scaled by
//!   `1 / (1 - prob)` (inverted dropout).
//!
//! `src/model/device/cuda/philox.cuh` is the same function for the GPU.

use rayon::prelude::*;

/// Philox-4x32's round multipliers (Random123 `PHILOX_M4x32_0`, `PHILOX_M4x32_1`).
pub const PHILOX_M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
/// Philox-4x32's key increments, the golden ratio and sqrt(3) - 1 (Random123 `PHILOX_W32_0`,
/// `PHILOX_W32_1`).
pub const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];

/// One Philox-4x32 round on `ctr` with round key `key`.
#[inline(always)]
fn round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let p0 = PHILOX_M[0] as u64 * c[0] as u64;
    let p1 = PHILOX_M[1] as u64 * c[2] as u64;
    [
        (p1 >> 32) as u32 ^ c[1] ^ k[0],
        p1 as u32,
        (p0 >> 32) as u32 ^ c[3] ^ k[1],
        p0 as u32,
    ]
}

/// Philox-4x32-10: four random words from a counter and a key (Random123's
/// `philox4x32(ctr, key)` with the default ten rounds).
#[inline(always)]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for r in 0..10 {
        if r > 0 {
            k = [
                k[0].wrapping_add(PHILOX_W[0]),
                k[1].wrapping_add(PHILOX_W[1]),
            ];
        }
        c = round(c, k);
    }
    c
}

/// Blocks per batch of [`philox_lanes`]: 8 independent counters, laid out so the compiler
/// turns each round's multiplications into vector instructions.
const LANES: usize = 8;

/// [`philox4x32_10`] on [`LANES`] counters at once, word-major: `ctr[w][l]` is word `w` of
/// counter `l`, and so is the result.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // one lane of four arrays per iteration
fn philox_lanes(ctr: [[u32; LANES]; 4], key: [u32; 2]) -> [[u32; LANES]; 4] {
    let mut c = ctr;
    let mut k = key;
    for r in 0..10 {
        if r > 0 {
            k = [
                k[0].wrapping_add(PHILOX_W[0]),
                k[1].wrapping_add(PHILOX_W[1]),
            ];
        }
        let mut next = [[0u32; LANES]; 4];
        for l in 0..LANES {
            let p0 = PHILOX_M[0] as u64 * c[0][l] as u64;
            let p1 = PHILOX_M[1] as u64 * c[2][l] as u64;
            next[0][l] = (p1 >> 32) as u32 ^ c[1][l] ^ k[0];
            next[1][l] = p1 as u32;
            next[2][l] = (p0 >> 32) as u32 ^ c[3][l] ^ k[1];
            next[3][l] = p0 as u32;
        }
        c = next;
    }
    c
}

/// Elements per parallel task of [`Dropout::mask`].
const MASK_CHUNK: usize = 1 << 15;

/// One dropout mask, described rather than stored: the kernels compute each element's keep
/// scale where they use it (see the module docs for the function).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// The run's (or micro-batch's) dropout seed: the Philox key.
    pub seed: u64,
    /// The training step (counter word 3).
    pub step: u32,
    /// Which dropout in the step, counted in forward order (counter word 2).
    pub site: u32,
    /// Probability of dropping an element, in `[0, 1)`.
    pub prob: f64,
}

impl Dropout {
    /// The mask of `site` in `step` for `seed`.
    pub fn new(seed: u64, step: u32, site: u32, prob: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&prob),
            "dropout probability {prob} must be within 0..1"
        );
        Dropout {
            seed,
            step,
            site,
            prob,
        }
    }

    /// Words below this are dropped: `prob * 2^32`, rounded down.
    pub fn threshold(&self) -> u64 {
        (self.prob * 4294967296.0) as u64
    }

    /// The scale of a kept element, `1 / (1 - prob)`.
    pub fn keep_scale(&self) -> f32 {
        (1.0 / (1.0 - self.prob)) as f32
    }

    /// The Philox key.
    pub fn key(&self) -> [u32; 2] {
        [self.seed as u32, (self.seed >> 32) as u32]
    }

    /// The Philox counter of elements `4 block .. 4 block + 4`.
    pub fn counter(&self, block: u64) -> [u32; 4] {
        [block as u32, (block >> 32) as u32, self.site, self.step]
    }

    /// The random word of element `index`.
    pub fn word(&self, index: u64) -> u32 {
        philox4x32_10(self.counter(index / 4), self.key())[(index % 4) as usize]
    }

    /// Element `index` of the mask: 0 (dropped) or [`Dropout::keep_scale`].
    pub fn scale_at(&self, index: u64) -> f32 {
        if (self.word(index) as u64) < self.threshold() {
            0.0
        } else {
            self.keep_scale()
        }
    }

    /// `out[j] = self.scale_at(start + j)`, a batch of counters at a time.
    #[allow(clippy::needless_range_loop)] // lanes and words index two arrays at once
    pub fn fill(&self, start: u64, out: &mut [f32]) {
        let (threshold, scale, key) = (self.threshold(), self.keep_scale(), self.key());
        let pick = |w: u32| if (w as u64) < threshold { 0.0 } else { scale };
        let end = start + out.len() as u64;
        let mut i = start;
        // Up to the first element of a block, one element at a time.
        while i < end && !i.is_multiple_of(4) {
            out[(i - start) as usize] = pick(self.word(i));
            i += 1;
        }
        // Whole batches of LANES blocks.
        while i + 4 * LANES as u64 <= end {
            let first = i / 4;
            let mut ctr = [[0u32; LANES]; 4];
            for l in 0..LANES {
                let c = self.counter(first + l as u64);
                for w in 0..4 {
                    ctr[w][l] = c[w];
                }
            }
            let words = philox_lanes(ctr, key);
            let at = (i - start) as usize;
            let dst = &mut out[at..at + 4 * LANES];
            for l in 0..LANES {
                for w in 0..4 {
                    dst[4 * l + w] = pick(words[w][l]);
                }
            }
            i += 4 * LANES as u64;
        }
        // The rest, one block at a time.
        while i < end {
            let words = philox4x32_10(self.counter(i / 4), key);
            for w in words.iter().take(((end - i) as usize).min(4)) {
                out[(i - start) as usize] = pick(*w);
                i += 1;
            }
        }
    }

    /// The whole mask of `n` elements, computed in parallel (the reference kernels use it; the
    /// CPU kernels compute the parts they need in their own loops).
    pub fn mask(&self, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; n];
        out.par_chunks_mut(MASK_CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| self.fill((c * MASK_CHUNK) as u64, chunk));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123 1.14's `tests/kat_vectors`, the three `philox4x32 10` lines: counter, key,
    /// expected output.
    const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0, 0, 0, 0],
            [0, 0],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];

    #[test]
    fn philox_matches_the_random123_known_answers() {
        for (ctr, key, want) in KAT {
            assert_eq!(
                philox4x32_10(ctr, key),
                want,
                "ctr {ctr:08x?} key {key:08x?}"
            );
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // lanes and words index two arrays at once
    fn the_lane_batch_matches_one_block_at_a_time() {
        let mut ctr = [[0u32; LANES]; 4];
        for l in 0..LANES {
            let c = KAT[l % 3].0;
            for w in 0..4 {
                ctr[w][l] = c[w].wrapping_add(l as u32);
            }
        }
        let key = KAT[2].1;
        let words = philox_lanes(ctr, key);
        for l in 0..LANES {
            let one = philox4x32_10([ctr[0][l], ctr[1][l], ctr[2][l], ctr[3][l]], key);
            assert_eq!([words[0][l], words[1][l], words[2][l], words[3][l]], one);
        }
        // The KAT vectors through the lane path too.
        let mut ctr = [[0u32; LANES]; 4];
        for w in 0..4 {
            ctr[w][0] = KAT[2].0[w];
        }
        let words = philox_lanes(ctr, KAT[2].1);
        assert_eq!(
            [words[0][0], words[1][0], words[2][0], words[3][0]],
            KAT[2].2
        );
    }

    #[test]
    fn mask_elements_are_the_published_function_of_seed_step_site_index() {
        // All-zero seed, step, site: elements 0..4 are the all-zero known answer.
        let zero = Dropout::new(0, 0, 0, 0.5);
        for (w, want) in KAT[0].2.iter().enumerate() {
            assert_eq!(zero.word(w as u64), *want);
            let scale = if (*want as u64) < (1u64 << 31) {
                0.0
            } else {
                2.0
            };
            assert_eq!(zero.scale_at(w as u64), scale);
        }
        // Key from the seed's halves; counter from the block's halves, the site, the step.
        let d = Dropout::new(0x299f_31d0_a409_3822, 0x0370_7344, 0x1319_8a2e, 0.1);
        assert_eq!(d.key(), KAT[2].1);
        assert_eq!(d.counter(0x85a3_08d3_243f_6a88), KAT[2].0);
        // Element 4·block + w is word w of the block: block 2^32 + 1 crosses both halves.
        let block = (1u64 << 32) + 1;
        let words = philox4x32_10([1, 1, 0x1319_8a2e, 0x0370_7344], KAT[2].1);
        for (w, want) in words.iter().enumerate() {
            assert_eq!(d.word(4 * block + w as u64), *want);
        }
        assert_ne!(d.word(4 * block), d.word(4 * (block + 1)));
    }

    #[test]
    fn fill_is_elementwise_whatever_the_start_and_length() {
        let d = Dropout::new(42, 7, 3, 0.3);
        let want: Vec<f32> = (0..300).map(|i| d.scale_at(i)).collect();
        for start in [0usize, 1, 2, 3, 4, 5, 33, 64] {
            for len in [0usize, 1, 3, 4, 31, 32, 33, 100, 236 - start] {
                let mut out = vec![-1.0; len];
                d.fill(start as u64, &mut out);
                assert_eq!(out, want[start..start + len], "start {start} len {len}");
            }
        }
        // Parallel chunks or one pass: the same mask.
        let n = 3 * MASK_CHUNK + 17;
        let mut serial = vec![0.0; n];
        d.fill(0, &mut serial);
        assert_eq!(d.mask(n), serial);
    }

    #[test]
    fn masks_drop_at_the_rate_independently() {
        let n = 1 << 20;
        for prob in [0.1, 0.5] {
            let d = Dropout::new(5, 1, 2, prob);
            let mask = d.mask(n);
            let dropped = mask.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
            // Binomial(2^20, p): sd <= 0.0005; 6 sd.
            assert!(
                (dropped - prob).abs() < 0.003,
                "p {prob}: dropped {dropped}"
            );
            assert!(mask.iter().all(|&v| v == 0.0 || v == d.keep_scale()));
            // Neighbours are independent: P(both dropped) = p² within 6 sd.
            let pairs = mask
                .chunks(2)
                .filter(|p| p[0] == 0.0 && p[1] == 0.0)
                .count() as f64
                / (n / 2) as f64;
            let sd = (prob * prob * (1.0 - prob * prob) / (n / 2) as f64).sqrt();
            assert!(
                (pairs - prob * prob).abs() < 6.0 * sd,
                "p {prob}: pairs {pairs}"
            );
        }
        // Every argument changes the mask.
        let base = Dropout::new(5, 1, 2, 0.1);
        let m = base.mask(4096);
        for other in [
            Dropout::new(6, 1, 2, 0.1),
            Dropout::new(5, 2, 2, 0.1),
            Dropout::new(5, 1, 3, 0.1),
            Dropout::new(5 << 32, 1, 2, 0.1),
        ] {
            let o = other.mask(4096);
            let same = m.iter().zip(&o).filter(|(a, b)| a == b).count();
            // Independent masks agree on 0.82 of the elements (0.9² + 0.1²), not all.
            assert!(
                same < 3600,
                "{other:?} agrees with {base:?} on {same} of 4096"
            );
        }
    }

    #[test]
    fn probability_zero_keeps_everything_and_the_threshold_rounds_down() {
        let d = Dropout::new(1, 0, 0, 0.0);
        assert!(d.mask(1000).iter().all(|&v| v == 1.0));
        assert_eq!(Dropout::new(1, 0, 0, 0.1).threshold(), 429_496_729);
        assert_eq!(Dropout::new(1, 0, 0, 0.5).threshold(), 1 << 31);
    }
}
