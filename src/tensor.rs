//! The tensor: a runtime shape over a contiguous, row-major buffer of [`Float`]s.
//!
//! Storage is reference-counted so that handing a tensor to the tape (which keeps the inputs an op's
//! backward needs) or reshaping it costs no copy. Writes go through [`Tensor::data_mut`], which copies
//! only if the buffer is shared; the optimizer updates parameters after the tape has let go of them, so
//! in practice nothing is copied. Layout is always contiguous row-major: ops that want a transposed view
//! (matmul) take strides instead of asking the tensor for one.
//!
//! The elements live in one of two places ([`Storage`]): a heap buffer the process owns, or bytes borrowed
//! from a read-only memory map of a model file ([`Tensor::from_mapped`]). Reading is the same for both;
//! a mapped tensor costs no copy and no memory until its pages are touched, so a model opened for
//! inference keeps its expert tables in the page cache and reads only the rows a token retrieves.
//! Training builds and restores owned tensors only; a write to a mapped one copies it to the heap first.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

use crate::error::Error;
use crate::kernels::{memory, Float};
use crate::rng::Rng;

#[derive(Clone)]
pub struct Tensor<T: Float = f32> {
    shape: Vec<usize>,
    data: Storage<T>,
}

/// Where a tensor's elements live.
#[derive(Clone)]
enum Storage<T: Float> {
    /// A heap buffer, shared by clones and reshapes.
    Owned(Arc<Vec<T>>),
    /// `len` elements at byte `offset` of a read-only mapping, which `bytes` keeps alive.
    Mapped { bytes: Arc<dyn MappedBytes>, offset: usize, len: usize },
}

/// Read-only bytes that stay at one address while they live: a memory-mapped file.
///
/// # Safety
/// Every call of `bytes` on one value must return the same slice (address and length), whose contents
/// nothing changes while the value lives: tensors check bounds and alignment once, when they are made.
pub unsafe trait MappedBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
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
        Tensor { shape: shape.to_vec(), data: Storage::Owned(Arc::new(data)) }
    }

    /// A tensor whose elements are the little-endian bytes `[offset, offset + numel·size)` of `bytes`,
    /// borrowed, not copied. The span must lie inside `bytes` and be aligned for `T`, and the machine must
    /// be little-endian (the order model files are written in).
    pub fn from_mapped(shape: &[usize], bytes: Arc<dyn MappedBytes>, offset: usize) -> Result<Self, Error> {
        let fail = |what: String| Err(Error::Mapping(format!("tensor of shape {shape:?} at byte {offset}: {what}")));
        if cfg!(target_endian = "big") {
            return fail("a big-endian machine cannot borrow little-endian floats".into());
        }
        // Reading arbitrary bytes as T is sound only for types where every bit pattern is a value.
        if ![TypeId::of::<f32>(), TypeId::of::<f64>()].contains(&TypeId::of::<T>()) {
            return fail(format!("{} is not f32 or f64", T::NAME));
        }
        let len = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let end = len.and_then(|n| n.checked_mul(size_of::<T>())).and_then(|n| n.checked_add(offset));
        let (Some(len), Some(end)) = (len, end) else { return fail("its size overflows".into()) };
        let available = bytes.bytes().len();
        if end > available {
            return fail(format!("runs to byte {end}, past the {available} mapped bytes"));
        }
        if (bytes.bytes().as_ptr() as usize + offset) % align_of::<T>() != 0 {
            return fail(format!("not aligned for {}", T::NAME));
        }
        Ok(Tensor { shape: shape.to_vec(), data: Storage::Mapped { bytes, offset, len } })
    }

    /// Whether the elements are borrowed from a memory map rather than owned.
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, Storage::Mapped { .. })
    }

    /// A tensor of zeros whose pages are not touched until written: the allocator hands out fresh,
    /// already-zero pages, so a placeholder that is about to be replaced costs no memory.
    fn lazy_zeros(shape: &[usize]) -> Self {
        Self::from_vec(shape, vec![T::ZERO; shape.iter().product()])
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

    /// Independent normal entries with the given standard deviation (untouched zeros from a
    /// [`Rng::placeholder`]).
    pub fn randn(shape: &[usize], std: f64, rng: &mut Rng) -> Self {
        if rng.is_placeholder() {
            return Self::lazy_zeros(shape);
        }
        Self::from_vec(shape, memory::vec_from_fn(shape.iter().product(), || T::from_f64(std * rng.normal())))
    }

    /// Independent entries uniform in [lo, hi) (untouched zeros from a [`Rng::placeholder`]).
    pub fn uniform(shape: &[usize], lo: f64, hi: f64, rng: &mut Rng) -> Self {
        if rng.is_placeholder() {
            return Self::lazy_zeros(shape);
        }
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
        self.data().len()
    }

    pub fn data(&self) -> &[T] {
        match &self.data {
            Storage::Owned(values) => values,
            Storage::Mapped { bytes, offset, len } => {
                let start = bytes.bytes()[*offset..].as_ptr();
                // SAFETY: `from_mapped` checked that `len` elements of T from `start` lie inside the mapping
                // and that `start` is aligned for T; `MappedBytes` (an unsafe trait) promises the same slice,
                // unchanged, while `bytes` lives, and the result borrows `self`, which holds `bytes`; T is f32
                // or f64, for which every bit pattern is a value. Tested in
                // `mapped_tensors_read_like_owned_ones_and_copy_on_write`.
                unsafe { std::slice::from_raw_parts(start.cast::<T>(), *len) }
            }
        }
    }

    /// Mutable access; copies the buffer first if another tensor shares it, or if it is mapped.
    pub fn data_mut(&mut self) -> &mut [T] {
        if let Storage::Mapped { .. } = self.data {
            self.data = Storage::Owned(Arc::new(self.data().to_vec()));
        }
        match &mut self.data {
            Storage::Owned(values) => Arc::make_mut(values).as_mut_slice(),
            Storage::Mapped { .. } => unreachable!("a mapped tensor was just copied to the heap"),
        }
    }

    /// Takes the buffer out, copying only if it is shared or mapped.
    pub fn into_vec(self) -> Vec<T> {
        match self.data {
            Storage::Owned(values) => Arc::try_unwrap(values).unwrap_or_else(|shared| (*shared).clone()),
            Storage::Mapped { .. } => self.data().to_vec(),
        }
    }

    /// The single element of a one-element tensor.
    pub fn item(&self) -> T {
        assert_eq!(self.numel(), 1, "Tensor::item on shape {:?}", self.shape);
        self.data()[0]
    }

    /// Same buffer, new shape with the same element count (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Self {
        let numel: usize = shape.iter().product();
        assert_eq!(numel, self.numel(), "reshape: {:?} -> {shape:?} changes the element count", self.shape);
        Tensor { shape: shape.to_vec(), data: self.data.clone() }
    }

    /// Whether both tensors share one buffer (a reshape of the other, or a clone).
    pub fn shares_buffer(&self, other: &Tensor<T>) -> bool {
        match (&self.data, &other.data) {
            (Storage::Owned(a), Storage::Owned(b)) => Arc::ptr_eq(a, b),
            (Storage::Mapped { bytes: a, offset: i, .. }, Storage::Mapped { bytes: b, offset: j, .. }) => {
                Arc::ptr_eq(a, b) && i == j
            }
            _ => false,
        }
    }

    /// Elementwise conversion to another precision (gradient checks build f64 twins of f32 tensors).
    pub fn cast<U: Float>(&self) -> Tensor<U> {
        Tensor::from_vec(&self.shape, self.data().iter().map(|x| U::from_f64(x.to_f64())).collect())
    }
}

impl<T: Float> PartialEq for Tensor<T> {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data() == other.data()
    }
}

impl<T: Float> fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.is_mapped() { "mapped" } else { "owned" };
        f.debug_struct("Tensor").field("shape", &self.shape).field(place, &self.data()).finish()
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

    /// Bytes at a stable address, as a memory map would hold them (the allocator aligns a buffer this
    /// size for f32 in practice; `from_mapped` would refuse it otherwise).
    struct Bytes(Vec<u8>);

    // SAFETY: the vector is never changed or moved while the Arc holding it lives.
    unsafe impl MappedBytes for Bytes {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
    }

    fn mapped_bytes(values: &[f32]) -> Arc<dyn MappedBytes> {
        let mut bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        bytes.extend([0; 8]);
        Arc::new(Bytes(bytes))
    }

    #[test]
    fn mapped_tensors_read_like_owned_ones_and_copy_on_write() {
        let values = [1.5f32, -2.0, 3.25, 0.0, f32::MAX, -0.0];
        let bytes = mapped_bytes(&values);
        let mapped = Tensor::<f32>::from_mapped(&[2, 2], Arc::clone(&bytes), 8).unwrap();
        assert!(mapped.is_mapped());
        assert_eq!(mapped, Tensor::from_vec(&[2, 2], values[2..].to_vec()));
        let view = mapped.reshape(&[4]);
        assert!(view.shares_buffer(&mapped));
        let mut written = mapped.clone();
        written.data_mut()[0] = 7.0;
        assert!(!written.is_mapped() && !written.shares_buffer(&mapped));
        assert_eq!((written.data()[0], mapped.data()[0]), (7.0, 3.25));
        assert_eq!(mapped.into_vec(), values[2..].to_vec());
    }

    #[test]
    fn mapping_checks_bounds_and_alignment() {
        let bytes = mapped_bytes(&[1.0; 6]);
        let past = Tensor::<f32>::from_mapped(&[8], Arc::clone(&bytes), 4).unwrap_err();
        assert!(past.to_string().contains("past the 32 mapped bytes"), "{past}");
        let crooked = Tensor::<f32>::from_mapped(&[1], Arc::clone(&bytes), 2).unwrap_err();
        assert!(crooked.to_string().contains("not aligned for f32"), "{crooked}");
        assert!(Tensor::<f64>::from_mapped(&[1], Arc::clone(&bytes), 4).is_err());
        assert!(Tensor::<f32>::from_mapped(&[usize::MAX, 2], bytes, 0).unwrap_err().to_string().contains("overflows"));
    }

    #[test]
    fn placeholder_initialisers_draw_nothing() {
        let t = Tensor::<f32>::randn(&[3, 4], 1.0, &mut Rng::placeholder());
        assert_eq!(t, Tensor::zeros(&[3, 4]));
        let u = Tensor::<f32>::uniform(&[5], -1.0, 1.0, &mut Rng::placeholder().fork(3));
        assert_eq!(u, Tensor::zeros(&[5]));
    }

    #[test]
    #[should_panic(expected = "holds 6 elements")]
    fn from_vec_checks_length() {
        Tensor::<f32>::from_vec(&[2, 3], vec![0.0; 5]);
    }
}
