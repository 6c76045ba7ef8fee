//! [`Terms`]: which Raft term committed each record, for readers.
//!
//! The term changes rarely (once per election), so the log keeps only the
//! offsets where it changes. The Raft thread notes every applied entry, and
//! each new range is written to `meta.json` before the entry's records are
//! appended (one synced write per election); a snapshot carries the leader's
//! list to a follower before its records are fetched.

use std::sync::{Arc, PoisonError, RwLock};

/// `(first offset, term)` pairs, ascending in both: records from that offset
/// on (up to the next pair's) were committed in that term.
pub(crate) type TermRanges = Vec<(u64, u64)>;

/// The term of each committed record, shared by the Raft thread and readers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Terms(Arc<RwLock<TermRanges>>);

impl Terms {
    /// Records from `first_offset` on were committed in `term` (an entry was
    /// applied). Every list of committed records' terms is a part of one
    /// history, so what is known already stays: an entry applied again after a
    /// restart changes nothing.
    /// Whether this was news (a new range).
    pub(crate) fn note(&self, first_offset: u64, term: u64) -> bool {
        let mut ranges = self.0.write().unwrap_or_else(PoisonError::into_inner);
        match ranges.last() {
            Some(&(last_offset, last_term)) if last_term >= term || last_offset >= first_offset => false,
            _ => {
                ranges.push((first_offset, term));
                true
            }
        }
    }

    /// Adds what `other` (another node's list, or one kept on disk) knows. Kept
    /// ascending in both offset and term whatever `other` holds, so a bad list
    /// can give records wrong terms but never break a lookup.
    pub(crate) fn merge(&self, other: &[(u64, u64)]) {
        let mut ranges = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let mut all: TermRanges = ranges.iter().chain(other).copied().collect();
        all.sort_unstable();
        ranges.clear();
        for (offset, term) in all {
            if ranges.last().is_none_or(|&(last_offset, last_term)| term > last_term && offset > last_offset)
            {
                ranges.push((offset, term));
            }
        }
    }

    /// The term that committed the record at `offset`: 0 when unknown (records
    /// compacted before terms were kept).
    pub(crate) fn term_of(&self, offset: u64) -> u64 {
        let ranges = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let after = ranges.partition_point(|&(first, _)| first <= offset);
        after.checked_sub(1).map_or(0, |i| ranges[i].1)
    }

    /// Every range known.
    pub(crate) fn ranges(&self) -> TermRanges {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Forgets every range, then takes `ranges` (on open).
    pub(crate) fn reset(&self, ranges: &[(u64, u64)]) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).clear();
        self.merge(ranges);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_has_the_term_of_the_range_it_falls_in() {
        let terms = Terms::default();
        assert_eq!(terms.term_of(0), 0, "unknown");
        terms.note(0, 1);
        terms.note(3, 1);
        terms.note(5, 4);
        assert_eq!(terms.ranges(), [(0, 1), (5, 4)]);
        assert_eq!((terms.term_of(0), terms.term_of(4), terms.term_of(5), terms.term_of(99)), (1, 1, 4, 4));
    }

    #[test]
    fn what_is_known_stays_when_entries_apply_again() {
        let terms = Terms::default();
        terms.reset(&[(0, 1), (10, 2), (20, 3)]);
        terms.note(10, 2);
        terms.note(5, 1);
        assert_eq!(terms.ranges(), [(0, 1), (10, 2), (20, 3)]);
    }

    #[test]
    fn merging_takes_the_union_and_keeps_any_list_ascending() {
        let terms = Terms::default();
        terms.note(0, 1);
        terms.merge(&[(0, 1), (10, 2), (20, 3)]);
        assert_eq!(terms.ranges(), [(0, 1), (10, 2), (20, 3)]);
        // A list that contradicts itself is cut to what stays ascending.
        terms.reset(&[(5, 9), (1, 2), (7, 1), (30, 4), (30, 5)]);
        assert_eq!(terms.ranges(), [(1, 2), (5, 9)]);
    }
}
