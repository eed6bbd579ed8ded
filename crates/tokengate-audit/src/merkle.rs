//! The Merkle tree over the audit log (RFC 6962 / RFC 9162 hashing).
//!
//! Leaf `i` (0-based) is the record with `seq = i + 1`; its leaf data is the
//! record's `event_json`, byte-exact as stored, so anyone holding an export
//! can recompute the tree without tokengate. Tree math, proofs and their
//! checks come from `tlog_tiles` (the Rust port of Go's `sumdb/tlog`, the
//! same tree Certificate Transparency uses).
//!
//! Two ways to get a root:
//! - [`StoredTree`]: the store keeps the tree's "stored hashes" (about two
//!   per record, appended when a checkpoint is made); proofs are computed
//!   from them.
//! - [`RootBuilder`]: recomputes roots from the records alone, in one pass
//!   and O(log n) memory. `audit verify` uses it, so a tampered stored tree
//!   cannot vouch for tampered records.

use tlog_tiles::tlog::{EMPTY_HASH, node_hash};
pub use tlog_tiles::tlog::{
    Error as TreeError, Hash, HashReader, RecordProof, TreeProof, check_record, check_tree,
    prove_record, prove_tree, record_hash, stored_hash_count, stored_hash_index,
    stored_hashes_for_record_hash, sub_tree_index, tree_hash,
};

/// The RFC 6962 leaf hash of a stored record.
pub fn leaf_hash(event_json: &str) -> Hash {
    record_hash(event_json.as_bytes())
}

/// Streaming root computation: push leaves in order, ask for the root of
/// everything pushed so far at any point.
#[derive(Clone, Debug, Default)]
pub struct RootBuilder {
    /// Roots of the perfect subtrees covering the leaves so far, left to
    /// right, with their heights (strictly decreasing).
    stack: Vec<(u32, Hash)>,
    size: u64,
}

impl RootBuilder {
    pub fn new() -> RootBuilder {
        RootBuilder::default()
    }

    /// Continue a tree of `size` leaves whose records are gone (pruned) from
    /// the roots of its perfect subtrees, largest first — the stored hashes
    /// at `sub_tree_index(0, size)`. None if the count does not fit `size`.
    pub fn resume(size: u64, roots: &[Hash]) -> Option<RootBuilder> {
        let heights: Vec<u32> = (0..64u32).rev().filter(|b| size >> b & 1 == 1).collect();
        if heights.len() != roots.len() {
            return None;
        }
        Some(RootBuilder {
            stack: heights.into_iter().zip(roots.iter().copied()).collect(),
            size,
        })
    }

    /// Number of leaves pushed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append the next leaf (by its leaf hash).
    pub fn push(&mut self, leaf: Hash) {
        self.push_stored(leaf, &mut Vec::new());
    }

    /// Append the next leaf and add to `stored` the hashes the tree stores
    /// for it — the leaf, then each subtree it completes — in the order of
    /// `stored_hashes` (so they can be compared with a stored tree).
    pub fn push_stored(&mut self, leaf: Hash, stored: &mut Vec<Hash>) {
        stored.push(leaf);
        let mut node = (0u32, leaf);
        while let Some(&(height, left)) = self.stack.last() {
            if height != node.0 {
                break;
            }
            self.stack.pop();
            node = (height + 1, node_hash(left, node.1));
            stored.push(node.1);
        }
        self.stack.push(node);
        self.size += 1;
    }

    /// The root of the tree over every leaf pushed so far: the perfect
    /// subtrees folded from the right, as RFC 6962 §2.1 splits the tree.
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return EMPTY_HASH;
        };
        for &(_, left) in it {
            acc = node_hash(left, acc);
        }
        acc
    }
}

/// Reads stored hashes for the tree functions; implemented by the store.
///
/// `read` must return exactly one hash per index, in the order asked, or an
/// error.
pub trait StoredTree {
    fn read(&self, indexes: &[u64]) -> Result<Vec<Hash>, String>;
}

/// Adapter from [`StoredTree`] to `tlog_tiles`' reader, which must never
/// get a short answer (it would panic): we check the length here.
pub struct Reader<'a, T: StoredTree + ?Sized>(pub &'a T);

impl<T: StoredTree + ?Sized> std::fmt::Debug for Reader<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

impl<T: StoredTree + ?Sized> HashReader for Reader<'_, T> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError> {
        let hashes = self.0.read(indexes).map_err(TreeError::InvalidInput)?;
        if hashes.len() != indexes.len() {
            return Err(TreeError::IndexesNotInTree);
        }
        Ok(hashes)
    }
}

/// The stored hashes to append when adding records `first..first+leaves.len()`
/// (0-based) to a tree of `first` records, starting at
/// `stored_hash_index(0, first)`. `existing` answers reads of hashes stored
/// before; hashes computed in this call are read from memory.
pub fn append_hashes<T: StoredTree + ?Sized>(
    first: u64,
    leaves: &[Hash],
    existing: &T,
) -> Result<Vec<Hash>, TreeError> {
    struct Overlay<'a, T: StoredTree + ?Sized> {
        base: u64,
        new: &'a [Hash],
        existing: &'a T,
    }
    impl<T: StoredTree + ?Sized> HashReader for Overlay<'_, T> {
        fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError> {
            let old: Vec<u64> = indexes.iter().copied().filter(|i| *i < self.base).collect();
            let mut from_store = Reader(self.existing).read_hashes(&old)?.into_iter();
            indexes
                .iter()
                .map(|&i| {
                    if i < self.base {
                        from_store.next().ok_or(TreeError::IndexesNotInTree)
                    } else {
                        usize::try_from(i - self.base)
                            .ok()
                            .and_then(|k| self.new.get(k).copied())
                            .ok_or(TreeError::IndexesNotInTree)
                    }
                })
                .collect()
        }
    }
    let base = stored_hash_index(0, first);
    let mut new: Vec<Hash> = Vec::with_capacity(leaves.len() * 2);
    for (k, leaf) in leaves.iter().enumerate() {
        let n = first + k as u64;
        let hashes = stored_hashes_for_record_hash(
            n,
            *leaf,
            &Overlay {
                base,
                new: &new,
                existing,
            },
        )?;
        new.extend(hashes);
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::collections::BTreeMap;

    struct Mem(BTreeMap<u64, Hash>);
    impl StoredTree for Mem {
        fn read(&self, indexes: &[u64]) -> Result<Vec<Hash>, String> {
            indexes
                .iter()
                .map(|i| self.0.get(i).copied().ok_or_else(|| format!("no hash {i}")))
                .collect()
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&format!("{{\"n\":{i}}}")))
            .collect()
    }

    #[test]
    fn streaming_roots_equal_stored_tree_roots_at_every_size() {
        let all = leaves(70);
        let mut mem = Mem(BTreeMap::new());
        let mut b = RootBuilder::new();
        assert_eq!(b.root(), EMPTY_HASH);
        // Append in uneven chunks, as checkpoints do.
        let mut done = 0usize;
        for chunk in [1usize, 2, 5, 8, 13, 41] {
            let new = append_hashes(done as u64, &all[done..done + chunk], &mem).unwrap();
            let base = stored_hash_index(0, done as u64);
            for (k, h) in new.into_iter().enumerate() {
                mem.0.insert(base + k as u64, h);
            }
            done += chunk;
            assert_eq!(mem.0.len() as u64, stored_hash_count(done as u64));
        }
        let mut recomputed = Vec::new();
        for (i, leaf) in all.iter().enumerate() {
            b.push_stored(*leaf, &mut recomputed);
            let n = (i + 1) as u64;
            assert_eq!(b.root(), tree_hash(n, &Reader(&mem)).unwrap(), "size {n}");
        }
        let stored: Vec<Hash> = mem.0.values().copied().collect();
        assert_eq!(recomputed, stored);
        // Resuming from the subtree roots at any size gives the same roots.
        for cut in [1u64, 5, 8, 37, 64, 69] {
            let roots = Reader(&mem)
                .read_hashes(&sub_tree_index(0, cut, vec![]))
                .unwrap();
            let mut r = RootBuilder::resume(cut, &roots).unwrap();
            for leaf in &all[cut as usize..] {
                r.push(*leaf);
            }
            assert_eq!(r.root(), b.root(), "resumed at {cut}");
        }
        assert!(RootBuilder::resume(5, &[]).is_none());
    }

    #[test]
    fn a_short_read_is_an_error_not_a_panic() {
        struct Short;
        impl StoredTree for Short {
            fn read(&self, _: &[u64]) -> Result<Vec<Hash>, String> {
                Ok(Vec::new())
            }
        }
        assert!(tree_hash(5, &Reader(&Short)).is_err());
    }
}
