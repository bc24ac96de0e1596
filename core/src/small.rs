//! Small ordered collections for per-connection and per-piece state: a set and a map kept as
//! one sorted vector.
//!
//! A peer holds a few of these per remote (files, requests in flight, assigned pieces) and per
//! piece being fetched (its assignees and senders), each usually with one to sixteen entries;
//! the simulator keeps each node's connections in one.
//!
//! A `BTreeSet` or `BTreeMap` allocates a node of eleven entries for the first one, so with
//! thousands of remotes in a simulated swarm they made up most of a peer's memory. These keep
//! the same API subset and the same (ascending) iteration order, so behaviour is unchanged;
//! lookups are binary searches over a short vector.

use std::ops::RangeInclusive;

/// An ordered set of few elements, as a sorted vector without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecSet<T> {
    items: Vec<T>,
}

impl<T> Default for VecSet<T> {
    fn default() -> Self {
        VecSet { items: Vec::new() }
    }
}

impl<T: Ord> VecSet<T> {
    /// The empty set (allocates nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `item`; returns whether it was new.
    pub fn insert(&mut self, item: T) -> bool {
        match self.items.binary_search(&item) {
            Ok(_) => false,
            Err(at) => {
                reserve_first(&mut self.items);
                self.items.insert(at, item);
                true
            }
        }
    }

    /// Removes `item`; returns whether it was present.
    pub fn remove(&mut self, item: &T) -> bool {
        match self.items.binary_search(item) {
            Ok(at) => {
                self.items.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether `item` is in the set.
    pub fn contains(&self, item: &T) -> bool {
        self.items.binary_search(item).is_ok()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The elements in ascending order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }

    /// The elements within `range`, in ascending order.
    pub fn range(&self, range: RangeInclusive<T>) -> std::slice::Iter<'_, T> {
        let start = self.items.partition_point(|item| item < range.start());
        // The end is searched for only past the start.
        let len = self.items[start..].partition_point(|item| item <= range.end());
        self.items[start..start + len].iter()
    }
}

impl<T: Ord> Extend<T> for VecSet<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for item in items {
            self.insert(item);
        }
    }
}

impl<T> IntoIterator for VecSet<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a VecSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// An ordered map of few entries, as a vector sorted by key without duplicate keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap { entries: Vec::new() }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// The empty map (allocates nothing).
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|at| &self.entries[at].1)
    }

    /// The value of `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.find(key).ok().map(|at| &mut self.entries[at].1)
    }

    /// The value of `key`, inserted from `make` if absent.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let at = match self.find(&key) {
            Ok(at) => at,
            Err(at) => {
                reserve_first(&mut self.entries);
                self.entries.insert(at, (key, make()));
                at
            }
        };
        &mut self.entries[at].1
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                reserve_first(&mut self.entries);
                self.entries.insert(at, (key, value));
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.find(key).ok().map(|at| self.entries.remove(at).1)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_ok()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in ascending key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The keys in ascending order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in ascending key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The keys in ascending order, consuming the map.
    pub fn into_keys(self) -> impl Iterator<Item = K> {
        self.entries.into_iter().map(|(k, _)| k)
    }
}

/// Room for exactly one element in an empty vector (a vector's first growth makes room for
/// four); later growth is the vector's own.
fn reserve_first<T>(items: &mut Vec<T>) {
    if items.capacity() == 0 {
        items.reserve_exact(1);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn set_behaves_like_a_btree_set() {
        let mut small = VecSet::new();
        let mut tree = BTreeSet::new();
        for (i, n) in [5u32, 3, 9, 3, 1, 7, 5, 2].into_iter().enumerate() {
            if i % 3 == 2 {
                assert_eq!(small.remove(&n), tree.remove(&n), "remove {n}");
            } else {
                assert_eq!(small.insert(n), tree.insert(n), "insert {n}");
            }
            assert_eq!(small.iter().collect::<Vec<_>>(), tree.iter().collect::<Vec<_>>());
        }
        for n in 0..11 {
            assert_eq!(small.contains(&n), tree.contains(&n));
            for m in n..11 {
                assert_eq!(small.range(n..=m).collect::<Vec<_>>(), tree.range(n..=m).collect::<Vec<_>>());
            }
        }
        assert_eq!(small.len(), tree.len());
    }

    #[test]
    fn map_behaves_like_a_btree_map() {
        let mut small = VecMap::new();
        let mut tree = BTreeMap::new();
        for (i, k) in [4u8, 1, 8, 1, 6, 4, 2].into_iter().enumerate() {
            match i % 3 {
                0 => assert_eq!(small.insert(k, i), tree.insert(k, i)),
                1 => *small.get_or_insert_with(k, || 100) += 1,
                _ => assert_eq!(small.remove(&k), tree.remove(&k)),
            }
            if i % 3 == 1 {
                *tree.entry(k).or_insert(100) += 1;
            }
            assert_eq!(small.iter().collect::<Vec<_>>(), tree.iter().collect::<Vec<_>>());
        }
        for k in 0..10 {
            assert_eq!(small.get(&k), tree.get(&k));
            assert_eq!(small.contains_key(&k), tree.contains_key(&k));
        }
        assert_eq!(small.values().collect::<Vec<_>>(), tree.values().collect::<Vec<_>>());
        assert_eq!(small.into_keys().collect::<Vec<_>>(), tree.into_keys().collect::<Vec<_>>());
    }
}
