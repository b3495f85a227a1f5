//! The tensor: a runtime shape over a contiguous, row-major buffer of [`Float`]s.
//!
//! Storage is reference-counted so that handing a tensor to the tape (which keeps the inputs an op's
//! backward needs) or reshaping it costs no copy. Writes go through [`Tensor::data_mut`], which copies
//! only if the buffer is shared; the optimizer updates parameters after the tape has let go of them, so
//! in practice nothing is copied. Layout is always contiguous row-major: ops that want a transposed view
//! (matmul) take strides instead of asking the tensor for one.

use std::sync::Arc;

use crate::kernels::{memory, Float};
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct Tensor<T: Float = f32> {
    shape: Vec<usize>,
    data: Arc<Vec<T>>,
}

impl<T: Float> Tensor<T> {
    /// A tensor over `data`; panics if the lengths disagree (an engine bug, not user input).
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Self {
        let numel: usize = shape.iter().product();
        assert_eq!(
            numel,
            data.len(),
            "Tensor::from_vec: shape {shape:?} holds {numel} elements, data has {}",
            data.len()
        );
        Tensor { shape: shape.to_vec(), data: Arc::new(data) }
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, T::ZERO)
    }

    pub fn full(shape: &[usize], value: T) -> Self {
        Self::from_vec(shape, memory::vec_from_fn(shape.iter().product(), || value))
    }

    pub fn scalar(value: T) -> Self {
        Self::from_vec(&[], vec![value])
    }

    /// Independent normal entries with the given standard deviation.
    pub fn randn(shape: &[usize], std: f64, rng: &mut Rng) -> Self {
        Self::from_vec(shape, memory::vec_from_fn(shape.iter().product(), || T::from_f64(std * rng.normal())))
    }

    /// Independent entries uniform in [lo, hi).
    pub fn uniform(shape: &[usize], lo: f64, hi: f64, rng: &mut Rng) -> Self {
        let sample = || T::from_f64(lo + (hi - lo) * rng.uniform());
        Self::from_vec(shape, memory::vec_from_fn(shape.iter().product(), sample))
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Size of axis `axis`.
    pub fn dim(&self, axis: usize) -> usize {
        self.shape[axis]
    }

    /// Size of the last axis (1 for a scalar): the row length of a row-major tensor.
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// Mutable access; copies the buffer first if another tensor shares it.
    pub fn data_mut(&mut self) -> &mut [T] {
        Arc::make_mut(&mut self.data).as_mut_slice()
    }

    /// Takes the buffer out, copying only if it is shared.
    pub fn into_vec(self) -> Vec<T> {
        Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone())
    }

    /// The single element of a one-element tensor.
    pub fn item(&self) -> T {
        assert_eq!(self.numel(), 1, "Tensor::item on shape {:?}", self.shape);
        self.data[0]
    }

    /// Same buffer, new shape with the same element count (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Self {
        let numel: usize = shape.iter().product();
        assert_eq!(numel, self.numel(), "reshape: {:?} -> {shape:?} changes the element count", self.shape);
        Tensor { shape: shape.to_vec(), data: Arc::clone(&self.data) }
    }

    /// Whether both tensors share one buffer (a reshape of the other, or a clone).
    pub fn shares_buffer(&self, other: &Tensor<T>) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }

    /// Elementwise conversion to another precision (gradient checks build f64 twins of f32 tensors).
    pub fn cast<U: Float>(&self) -> Tensor<U> {
        Tensor::from_vec(&self.shape, self.data.iter().map(|x| U::from_f64(x.to_f64())).collect())
    }
}

impl<T: Float> PartialEq for Tensor<T> {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data[..] == other.data[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_shares_and_write_copies_on_demand() {
        let a = Tensor::<f32>::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let mut b = a.reshape(&[3, 2]);
        assert!(a.shares_buffer(&b));
        b.data_mut()[0] = 9.0;
        assert!(!a.shares_buffer(&b));
        assert_eq!(a.data()[0], 1.0);
        assert_eq!(b.shape(), &[3, 2]);
    }

    #[test]
    fn seeded_initialisers_are_reproducible() {
        let a = Tensor::<f32>::randn(&[4, 5], 0.02, &mut Rng::new(5));
        let b = Tensor::<f32>::randn(&[4, 5], 0.02, &mut Rng::new(5));
        assert_eq!(a, b);
        let u = Tensor::<f64>::uniform(&[1000], -1.0, 1.0, &mut Rng::new(5));
        assert!(u.data().iter().all(|&x| (-1.0..1.0).contains(&x)));
    }

    #[test]
    #[should_panic(expected = "holds 6 elements")]
    fn from_vec_checks_length() {
        Tensor::<f32>::from_vec(&[2, 3], vec![0.0; 5]);
    }
}
