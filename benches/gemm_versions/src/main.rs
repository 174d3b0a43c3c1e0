//! Best-of-15 GFLOP/s of `gemm` 0.15 (dfdx's) and 0.19 with AVX-512 kernels, alternating
//! calls in one process, 2 rayon threads, row-major f32 `m x n x k` products of BERT-mini.

use std::time::Instant;

const SHAPES: [(usize, usize, usize, &str); 4] = [
    (4096, 1024, 256, "FFN in"),
    (4096, 256, 1024, "FFN out"),
    (4096, 256, 256, "Q, K, V, output"),
    (256, 1024, 4096, "a weight gradient"),
];

fn main() {
    println!(
        "{:<38} {:>9} {:>18}   (GFLOP/s, best of 15)",
        "shape (m x n x k)", "gemm 0.15", "gemm 0.19 x86-v4"
    );
    for (m, n, k, what) in SHAPES {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        let (mut old, mut new) = (f64::MAX, f64::MAX);
        for _ in 0..15 {
            let t = Instant::now();
            // SAFETY: a is m×k, b is k×n, c is m×n, all row-major and contiguous.
            unsafe {
                gemm15::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm15::Parallelism::Rayon(2),
                )
            };
            old = old.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            // SAFETY: as above.
            unsafe {
                gemm19::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm19::Parallelism::Rayon(2),
                )
            };
            new = new.min(t.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (m * n * k) as f64 / 1e9;
        let shape = format!("{m} x {n} x {k} ({what})");
        println!("{shape:<38} {:>9.0} {:>18.0}", flops / old, flops / new);
    }
}
