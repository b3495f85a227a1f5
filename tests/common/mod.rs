//! Shared by the gradient-check tests: the library's finite-difference checker ([`peerlm::gradcheck`]),
//! whose errors convert into proptest failures with `?`, and a strategy for random shapes.

#![allow(dead_code, unused_imports)] // each test binary uses a different part of this module

pub use peerlm::gradcheck::{check_gradients, check_gradients_with, tensor, Check};
use proptest::prelude::*;

/// A random shape of `rank` axes, each 1..=max.
pub fn shape(rank: usize, max: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1..=max, rank)
}
