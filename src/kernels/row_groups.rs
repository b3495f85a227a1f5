//! Grouping the reads of a table by row, so that a backward can write each row's gradient exactly once.
//!
//! A sparse read (an embedding, PKM's weighted gather, a PEER expert) touches table rows through a list
//! of ids with repeats: row 7 may be read by tokens 3, 90 and 511. Summing the gradient rows per id
//! directly from many threads would race; sorting the occurrences by `(id, position)` instead gives every
//! distinct row its own contiguous list of occurrences, which one thread sums in a fixed order. The
//! result is race-free, coalesced (one gradient row per distinct id) and bit-identical whatever the
//! number of threads.

/// The occurrences of each distinct row id, rows ascending, occurrences ascending within a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowGroups {
    /// The distinct row ids, ascending.
    pub rows: Vec<u32>,
    /// `starts[g]..starts[g + 1]` indexes `occurrences` for the group of `rows[g]`; `rows.len() + 1` long.
    pub starts: Vec<usize>,
    /// Positions in the original id list, grouped by row.
    pub occurrences: Vec<u32>,
}

impl RowGroups {
    /// Groups the positions of `ids` by the id they hold.
    pub fn new(ids: &[u32]) -> Self {
        assert!(ids.len() <= u32::MAX as usize, "RowGroups: {} ids do not fit u32 positions", ids.len());
        // One u64 key per occurrence: id in the high half, position in the low half. Sorting the keys
        // sorts by id and, within an id, by position: a deterministic order without a comparator closure.
        let mut keys: Vec<u64> = ids.iter().enumerate().map(|(pos, &id)| (u64::from(id) << 32) | pos as u64).collect();
        keys.sort_unstable();
        let mut rows = Vec::new();
        let mut starts = Vec::new();
        let mut occurrences = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let id = (key >> 32) as u32;
            if rows.last() != Some(&id) {
                rows.push(id);
                starts.push(i);
            }
            occurrences.push(*key as u32);
        }
        starts.push(keys.len());
        RowGroups { rows, starts, occurrences }
    }

    /// Number of distinct rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The positions (into the original id list) that read the `g`-th distinct row.
    pub fn group(&self, g: usize) -> &[u32] {
        &self.occurrences[self.starts[g]..self.starts[g + 1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_sorted_and_complete() {
        let groups = RowGroups::new(&[5, 2, 5, 9, 2, 5]);
        assert_eq!(groups.rows, vec![2, 5, 9]);
        assert_eq!(groups.group(0), &[1, 4]);
        assert_eq!(groups.group(1), &[0, 2, 5]);
        assert_eq!(groups.group(2), &[3]);
    }

    #[test]
    fn empty_ids_give_no_groups() {
        let groups = RowGroups::new(&[]);
        assert!(groups.is_empty());
        assert_eq!(groups.starts, vec![0]);
    }
}
