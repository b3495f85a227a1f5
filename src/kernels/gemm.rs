//! Matrix multiplication: `C = A·B (+ C)` on row-major buffers, either operand optionally transposed.
//!
//! A transposed operand costs nothing: `matrixmultiply` takes a row stride and a column stride for each
//! matrix, and a transpose is the same buffer with the two strides swapped.

use super::Float;

/// One operand: a row-major buffer and whether to read it transposed.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    /// Rows and columns as stored.
    pub rows: usize,
    pub cols: usize,
    pub transposed: bool,
}

impl<'a, T: Float> MatRef<'a, T> {
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "MatRef: buffer of {} for {rows}x{cols}", data.len());
        MatRef { data, rows, cols, transposed: false }
    }

    pub fn t(self) -> Self {
        MatRef { transposed: !self.transposed, ..self }
    }

    /// Logical (rows, cols) after the optional transpose.
    pub fn dims(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// Logical (row stride, column stride) in elements.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// `c = a·b`, or `c += a·b` when `accumulate`; `c` is row-major m×n.
pub fn gemm<T: Float>(a: MatRef<T>, b: MatRef<T>, c: &mut [T], accumulate: bool) {
    let (m, k) = a.dims();
    let (k2, n) = b.dims();
    assert_eq!(k, k2, "gemm: inner dimensions differ ({m}x{k} · {k2}x{n})");
    assert_eq!(c.len(), m * n, "gemm: output buffer of {} for {m}x{n}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    let beta = if accumulate { T::ONE } else { T::ZERO };
    if k == 0 {
        c.iter_mut().for_each(|x| *x *= beta);
        return;
    }
    // SAFETY: MatRef::new checked each buffer holds rows*cols elements and the strides address exactly
    // that range; `c` is a distinct &mut slice of m*n elements, so it cannot alias `a` or `b`.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            T::ONE,
            a.data.as_ptr(),
            a.strides(),
            b.data.as_ptr(),
            b.strides(),
            beta,
            c.as_mut_ptr(),
            (n as isize, 1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        (0..cols).flat_map(|j| (0..rows).map(move |i| x[i * cols + j])).collect()
    }

    #[test]
    fn transposed_operands_match_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let am = if ta { MatRef::new(&at, k, m).t() } else { MatRef::new(&a, m, k) };
            let bm = if tb { MatRef::new(&bt, n, k).t() } else { MatRef::new(&b, k, n) };
            let mut c = vec![1.0; m * n];
            gemm(am, bm, &mut c, true);
            for (got, w) in c.iter().zip(&want) {
                assert!((got - (w + 1.0)).abs() < 1e-12);
            }
        }
    }
}
