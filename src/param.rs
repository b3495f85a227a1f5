//! A trainable parameter: a named tensor that outlives the tape.
//!
//! Layers own their `Param`s. Each forward pass enters them into the tape with [`crate::tape::Tape::param`]
//! (sharing the buffer, no copy); `backward` leaves their gradients on the tape keyed by [`ParamId`]; the
//! optimizer reads them there and updates `value` in place once the tape has released its references.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::kernels::Float;
use crate::tensor::Tensor;

/// A process-unique parameter identity: gradients are keyed by it, so a parameter used twice in one
/// forward pass (tied embeddings) receives the sum of both gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(u64);

impl ParamId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        ParamId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// How the optimizer treats a parameter (the groups of the *language model* issue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Matrices: weight decay applies.
    Weight,
    /// Norm gains, biases: no weight decay.
    NoDecay,
    /// Large tables read by row (PEER experts, PKM values): own learning rate, lazy sparse updates.
    Table,
}

#[derive(Debug)]
pub struct Param<T: Float = f32> {
    id: ParamId,
    pub name: String,
    pub kind: ParamKind,
    pub value: Tensor<T>,
}

impl<T: Float> Param<T> {
    pub fn new(name: impl Into<String>, kind: ParamKind, value: Tensor<T>) -> Self {
        Param { id: ParamId::fresh(), name: name.into(), kind, value }
    }

    pub fn id(&self) -> ParamId {
        self.id
    }
}
