//! A gradient: dense, or row-sparse for tables read by row.
//!
//! A PEER layer reads a few hundred rows of expert tables with a million rows each; a dense gradient would
//! write and later re-read every row each step. A gather op's backward therefore returns a [`RowGrad`]:
//! the ids of the rows it touched and one gradient row per id. Duplicates are allowed while gradients
//! accumulate on the tape (appending is cheap) and summed once by [`RowGrad::coalesce`] before the
//! optimizer or the clipping norm reads them, so a table's gradient is never densified.

use crate::kernels::Float;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub enum Grad<T: Float = f32> {
    Dense(Tensor<T>),
    Rows(RowGrad<T>),
}

/// Gradient rows for some rows of a `[num_rows, width...]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct RowGrad<T: Float = f32> {
    /// Shape of the whole table the rows belong to.
    pub table_shape: Vec<usize>,
    /// Row ids, possibly repeated until [`RowGrad::coalesce`].
    pub rows: Vec<u32>,
    /// `rows.len()` rows of `width()` values each.
    pub values: Vec<T>,
}

impl<T: Float> RowGrad<T> {
    pub fn new(table_shape: &[usize], rows: Vec<u32>, values: Vec<T>) -> Self {
        let grad = RowGrad { table_shape: table_shape.to_vec(), rows, values };
        assert_eq!(grad.values.len(), grad.rows.len() * grad.width(), "RowGrad: values do not match rows");
        grad
    }

    /// Elements per row.
    pub fn width(&self) -> usize {
        self.table_shape[1..].iter().product()
    }

    /// Sorts by row id and sums duplicate rows, so every id appears once. A gradient whose ids already
    /// ascend strictly (a PEER layer's: one row per distinct expert, in id order) is left as it is
    /// rather than copied: at N = 512² that copy is hundreds of megabytes a step.
    pub fn coalesce(&mut self) {
        if self.rows.windows(2).all(|pair| pair[0] < pair[1]) {
            return;
        }
        let width = self.width();
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.sort_by_key(|&i| (self.rows[i], i)); // stable by position: deterministic sums
        let mut rows = Vec::with_capacity(self.rows.len());
        let mut values: Vec<T> = Vec::with_capacity(self.values.len());
        for i in order {
            let src = &self.values[i * width..(i + 1) * width];
            if rows.last() == Some(&self.rows[i]) {
                let start = values.len() - width;
                values[start..].iter_mut().zip(src).for_each(|(d, &s)| *d += s);
            } else {
                rows.push(self.rows[i]);
                values.extend_from_slice(src);
            }
        }
        self.rows = rows;
        self.values = values;
    }

    pub fn to_dense(&self) -> Tensor<T> {
        let width = self.width();
        let mut dense = Tensor::zeros(&self.table_shape);
        let data = dense.data_mut();
        for (r, &row) in self.rows.iter().enumerate() {
            let dst = &mut data[row as usize * width..(row as usize + 1) * width];
            dst.iter_mut().zip(&self.values[r * width..]).for_each(|(d, &s)| *d += s);
        }
        dense
    }
}

impl<T: Float> Grad<T> {
    pub fn shape(&self) -> &[usize] {
        match self {
            Grad::Dense(t) => t.shape(),
            Grad::Rows(r) => &r.table_shape,
        }
    }

    /// Adds `other` into `self`. Row-sparse plus row-sparse stays sparse (rows are appended);
    /// anything with a dense side becomes dense.
    pub fn accumulate(&mut self, other: Grad<T>) {
        assert_eq!(self.shape(), other.shape(), "gradient accumulation: shapes differ");
        match (&mut *self, other) {
            (Grad::Dense(acc), Grad::Dense(g)) => add_into(acc.data_mut(), g.data()),
            (Grad::Dense(acc), Grad::Rows(g)) => scatter_add(acc.data_mut(), &g),
            (Grad::Rows(acc), Grad::Rows(g)) => {
                acc.rows.extend_from_slice(&g.rows);
                acc.values.extend_from_slice(&g.values);
            }
            (Grad::Rows(acc), Grad::Dense(mut g)) => {
                scatter_add(g.data_mut(), acc);
                *self = Grad::Dense(g);
            }
        }
    }

    /// The gradient as a dense tensor (for tests and small tables).
    pub fn to_dense(&self) -> Tensor<T> {
        match self {
            Grad::Dense(t) => t.clone(),
            Grad::Rows(r) => r.to_dense(),
        }
    }
}

fn add_into<T: Float>(acc: &mut [T], g: &[T]) {
    acc.iter_mut().zip(g).for_each(|(a, &b)| *a += b);
}

fn scatter_add<T: Float>(dense: &mut [T], rows: &RowGrad<T>) {
    let width = rows.width();
    for (r, &row) in rows.rows.iter().enumerate() {
        let dst = &mut dense[row as usize * width..(row as usize + 1) * width];
        add_into(dst, &rows.values[r * width..(r + 1) * width]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_sums_duplicates_and_sorts() {
        let mut g = RowGrad::<f64>::new(&[5, 2], vec![3, 1, 3], vec![1., 2., 3., 4., 5., 6.]);
        let dense_before = g.to_dense();
        g.coalesce();
        assert_eq!(g.rows, vec![1, 3]);
        assert_eq!(g.values, vec![3., 4., 6., 8.]);
        assert_eq!(g.to_dense(), dense_before);
    }

    #[test]
    fn coalesce_sums_a_duplicate_that_follows_ascending_rows() {
        let mut g = RowGrad::<f64>::new(&[5, 1], vec![0, 2, 4, 4], vec![1., 2., 3., 4.]);
        g.coalesce();
        assert_eq!((g.rows, g.values), (vec![0, 2, 4], vec![1., 2., 7.]));
        let mut ascending = RowGrad::<f64>::new(&[5, 1], vec![0, 2, 4], vec![1., 2., 3.]);
        ascending.coalesce();
        assert_eq!((ascending.rows, ascending.values), (vec![0, 2, 4], vec![1., 2., 3.]));
    }

    #[test]
    fn mixed_accumulation_equals_dense_sum() {
        let rows = RowGrad::<f64>::new(&[3, 2], vec![2], vec![1., 1.]);
        let dense = Tensor::from_vec(&[3, 2], vec![1., 2., 3., 4., 5., 6.]);
        let mut a = Grad::Rows(rows.clone());
        a.accumulate(Grad::Dense(dense.clone()));
        let mut b = Grad::Dense(dense);
        b.accumulate(Grad::Rows(rows));
        assert_eq!(a.to_dense(), b.to_dense());
        assert_eq!(a.to_dense().data(), &[1., 2., 3., 4., 6., 7.]);
    }
}
