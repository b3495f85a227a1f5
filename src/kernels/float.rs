//! The element type of every tensor: `f32` for training, `f64` for gradient checks.
//!
//! The engine is generic over [`Float`] so that the very same forward and backward code can run in double
//! precision, where central finite differences are accurate to ~1e-8 and a wrong backward cannot hide
//! behind rounding noise (see [`crate::gradcheck`]). Each type also names its SIMD vector from `wide`
//! (16 lanes of f32 or 8 of f64: one AVX-512 register) and its GEMM (`matrixmultiply`'s, or for f32 the
//! crate's own where that is faster), so kernels written once over `Float` compile to the right
//! instructions for both.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use super::MatRef;

/// The widest SIMD vector of any [`Float`] (f32x16), in lanes: a stack buffer this long holds one
/// vector's lanes.
pub(crate) const MAX_LANES: usize = 16;

/// Plain arithmetic, shared by a [`Float`] and its SIMD vector.
pub trait Arith:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + Neg<Output = Self>
{
}

impl<V> Arith for V where
    V: Copy + Add<Output = V> + Sub<Output = V> + Mul<Output = V> + Div<Output = V> + Neg<Output = V>
{
}

/// What a formula needs from a value that is either one float `T` or a SIMD vector of them: a formula
/// written once over `V: Lanes<T>` serves both the SIMD body of a loop and its scalar tail.
pub trait Lanes<T>: Arith {
    /// The value with every lane `x`.
    fn splat(x: T) -> Self;
    /// `self * a + b`: one fused instruction on a SIMD vector (where the CPU has FMA); on a scalar a
    /// multiply, then an add (how the scalar tails have always computed it: a fused scalar multiply-add
    /// is a slow library call without FMA code generation).
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn max(self, other: Self) -> Self;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    /// `f` on every lane, for a function with no SIMD form (`ln`, `erf`).
    fn map_lanes(self, f: impl Fn(T) -> T) -> Self;
    /// `f` on every pair of lanes of `self` and `other` (a comparison, say).
    fn zip_lanes(self, other: Self, f: impl Fn(T, T) -> T) -> Self;
}

/// A SIMD vector of [`Float`]s; implemented by `wide::f32x16` and `wide::f64x8`.
pub trait SimdVec<T>: Lanes<T> + Send + Sync {
    /// Loads the first `LANES` elements of `src` (panics if shorter).
    fn load(src: &[T]) -> Self;
    /// Stores into the first `LANES` elements of `dst` (panics if shorter).
    fn store(self, dst: &mut [T]);
    /// Sum of the lanes.
    fn reduce_add(self) -> T;
    /// Largest lane.
    fn reduce_max(self) -> T;
    /// Bit i set where lane i of `self` is greater than lane i of `other` (false whenever either is NaN).
    fn gt_mask(self, other: Self) -> u32;
}

/// A floating-point element type: `f32` or `f64`.
pub trait Float:
    Copy
    + Default
    + PartialOrd
    + Debug
    + Display
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + Lanes<Self>
{
    /// The SIMD vector holding `LANES` of these.
    type Simd: SimdVec<Self>;
    const LANES: usize;
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    /// Name used in error messages and file headers ("f32", "f64").
    const NAME: &'static str;

    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn from_usize(n: usize) -> Self {
        Self::from_f64(n as f64)
    }
    fn ln(self) -> Self;
    fn erf(self) -> Self;
    fn abs(self) -> Self;
    fn is_finite(self) -> bool;

    /// `C = a·b`, or `C += a·b` when `accumulate`, for the row-major m×n matrix at `c`, on the threads:
    /// f32 runs the crate's own GEMM (`kernels/sgemm.rs`) where the CPU has AVX2 and FMA, everything else
    /// `matrixmultiply` in blocks ([`crate::kernels::gemm`]'s `split_multiply`).
    ///
    /// # Safety
    /// As `split_multiply`: `c` holds m×n elements of the caller's own, apart from `a` and `b`,
    /// initialised when accumulating; the inner dimension is not 0.
    unsafe fn multiply(a: MatRef<Self>, b: MatRef<Self>, c: *mut Self, accumulate: bool);

    /// `c = alpha * a·b + beta * c` for an m×k `a` and k×n `b`, each given by its row and column strides
    /// (in elements), so a transposed operand is just swapped strides.
    ///
    /// # Safety
    /// Every index `i*rs + j*cs` in range of each matrix's shape must be inside its slice; `c` must not
    /// alias `a` or `b`. [`crate::kernels::gemm`] checks this and is the safe entry point.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        a_strides: (isize, isize),
        b: *const Self,
        b_strides: (isize, isize),
        beta: Self,
        c: *mut Self,
        c_strides: (isize, isize),
    );
}

macro_rules! impl_float {
    ($t:ident, $simd:ident, $lanes:expr, $multiply:path, $gemm:ident, $erf:path) => {
        impl Lanes<$t> for wide::$simd {
            #[inline(always)]
            fn splat(x: $t) -> Self {
                wide::$simd::splat(x)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                wide::$simd::mul_add(self, a, b)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                wide::$simd::max(self, other)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                wide::$simd::sqrt(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                wide::$simd::exp(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                wide::$simd::tanh(self)
            }
            #[inline(always)]
            fn map_lanes(self, f: impl Fn($t) -> $t) -> Self {
                wide::$simd::new(self.to_array().map(f))
            }
            #[inline(always)]
            fn zip_lanes(self, other: Self, f: impl Fn($t, $t) -> $t) -> Self {
                let (a, b) = (self.to_array(), other.to_array());
                wide::$simd::new(std::array::from_fn(|i| f(a[i], b[i])))
            }
        }

        impl SimdVec<$t> for wide::$simd {
            #[inline(always)]
            fn load(src: &[$t]) -> Self {
                let lanes: [$t; $lanes] = src[..$lanes].try_into().unwrap();
                wide::$simd::new(lanes)
            }
            #[inline(always)]
            fn store(self, dst: &mut [$t]) {
                dst[..$lanes].copy_from_slice(self.as_array());
            }
            #[inline(always)]
            fn reduce_add(self) -> $t {
                wide::$simd::reduce_add(self)
            }
            #[inline(always)]
            fn reduce_max(self) -> $t {
                self.as_array().iter().copied().fold($t::NEG_INFINITY, $t::max)
            }
            #[inline(always)]
            fn gt_mask(self, other: Self) -> u32 {
                wide::$simd::simd_gt(self, other).to_bitmask()
            }
        }

        impl Lanes<$t> for $t {
            #[inline(always)]
            fn splat(x: $t) -> Self {
                x
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                self * a + b
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                $t::max(self, other)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                $t::sqrt(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $t::exp(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $t::tanh(self)
            }
            #[inline(always)]
            fn map_lanes(self, f: impl Fn($t) -> $t) -> Self {
                f(self)
            }
            #[inline(always)]
            fn zip_lanes(self, other: Self, f: impl Fn($t, $t) -> $t) -> Self {
                f(self, other)
            }
        }

        impl Float for $t {
            type Simd = wide::$simd;
            const LANES: usize = $lanes;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            const NAME: &'static str = stringify!($t);

            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn ln(self) -> Self {
                $t::ln(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                $t::abs(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                $t::is_finite(self)
            }
            unsafe fn multiply(a: MatRef<Self>, b: MatRef<Self>, c: *mut Self, accumulate: bool) {
                // SAFETY: forwarded from this function's contract.
                unsafe { $multiply(a, b, c, accumulate) }
            }

            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                (rsa, csa): (isize, isize),
                b: *const Self,
                (rsb, csb): (isize, isize),
                beta: Self,
                c: *mut Self,
                (rsc, csc): (isize, isize),
            ) {
                // SAFETY: forwarded from this function's contract (bounds and no aliasing of `c`).
                unsafe { matrixmultiply::$gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
impl_float!(f32, f32x16, 16, super::sgemm::multiply, sgemm, libm::erff);
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
impl_float!(f32, f32x16, 16, super::gemm::split_multiply, sgemm, libm::erff);
impl_float!(f64, f64x8, 8, super::gemm::split_multiply, dgemm, libm::erf);

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes_roundtrip<T: Float>() {
        let xs: Vec<T> = (0..T::LANES).map(|i| T::from_usize(i) - T::from_f64(3.5)).collect();
        let v = T::Simd::load(&xs);
        let mut back = vec![T::ZERO; T::LANES];
        v.store(&mut back);
        assert_eq!(xs, back);
        let expected: f64 = xs.iter().map(|x| x.to_f64()).sum();
        assert!((v.reduce_add().to_f64() - expected).abs() < 1e-5);
        assert_eq!(v.reduce_max(), xs[T::LANES - 1]);
    }

    #[test]
    fn simd_load_store_reduce() {
        lanes_roundtrip::<f32>();
        lanes_roundtrip::<f64>();
    }

    fn gt_mask_lanes<T: Float>() {
        let xs: Vec<T> = (0..T::LANES).map(|i| T::from_usize(i % 3)).collect();
        let mut with_nan = xs.clone();
        with_nan[1] = T::from_f64(f64::NAN);
        let want = |row: &[T]| (0..T::LANES).filter(|&i| row[i] > T::ONE).fold(0u32, |m, i| m | 1 << i);
        let one = T::Simd::splat(T::ONE);
        assert_eq!(T::Simd::load(&xs).gt_mask(one), want(&xs));
        assert_eq!(T::Simd::load(&with_nan).gt_mask(one), want(&with_nan));
        assert_eq!(one.gt_mask(T::Simd::splat(T::from_f64(f64::NAN))), 0);
    }

    #[test]
    fn simd_gt_mask_per_lane_and_false_on_nan() {
        gt_mask_lanes::<f32>();
        gt_mask_lanes::<f64>();
    }

    #[test]
    fn simd_exp_matches_scalar() {
        for i in -40..40 {
            let x = i as f32 * 0.5;
            let v = <f32 as Float>::Simd::splat(x).exp();
            let rel = (v.reduce_max() - x.exp()).abs() / x.exp();
            assert!(rel < 1e-6, "exp({x}): relative error {rel}");
            let y = i as f64 * 0.5;
            let w = <f64 as Float>::Simd::splat(y).exp();
            assert!((w.reduce_max() - y.exp()).abs() / y.exp() < 1e-14);
        }
    }
}
