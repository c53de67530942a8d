//! A least-recently-used cache of decoded L2 tables, bounded in bytes and shared between
//! threads.
//!
//! Tables are handed out as `Arc`s, so the lock is held only for the lookup: callers decode and
//! decompress without it. Two threads missing the same table both read it; the second insert
//! simply replaces the first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

/// An L2 table as 64-bit words (1 or 2 per entry).
pub(crate) type L2Table = Arc<[u64]>;

/// The cache; see the module docs.
#[derive(Debug)]
pub(crate) struct L2Cache {
    budget_bytes: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Host offset → (table, last use).
    tables: HashMap<u64, (L2Table, u64)>,
    /// Last use → host offset, oldest first.
    by_age: BTreeMap<u64, u64>,
    bytes: usize,
    clock: u64,
}

impl L2Cache {
    /// A cache holding at most `budget_bytes` of tables (but always the last one inserted).
    pub(crate) fn new(budget_bytes: usize) -> Self {
        Self { budget_bytes, state: Mutex::new(State::default()) }
    }

    /// The table read from `host`, if cached.
    pub(crate) fn get(&self, host: u64) -> Option<L2Table> {
        // The state stays consistent at every await-free step, so a poisoned lock is still usable.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.clock += 1;
        let now = state.clock;
        let (table, used) = state.tables.get_mut(&host)?;
        let table = Arc::clone(table);
        let before = std::mem::replace(used, now);
        state.by_age.remove(&before);
        state.by_age.insert(now, host);
        Some(table)
    }

    /// Caches `table` read from `host`, evicting the least recently used tables over budget.
    pub(crate) fn insert(&self, host: u64, table: L2Table) {
        let size = std::mem::size_of_val(&*table);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((old, used)) = state.tables.remove(&host) {
            state.bytes -= std::mem::size_of_val(&*old);
            state.by_age.remove(&used);
        }
        while state.bytes + size > self.budget_bytes {
            let Some((_, oldest)) = state.by_age.pop_first() else { break };
            if let Some((old, _)) = state.tables.remove(&oldest) {
                state.bytes -= std::mem::size_of_val(&*old);
            }
        }
        state.clock += 1;
        let now = state.clock;
        state.bytes += size;
        state.tables.insert(host, (table, now));
        state.by_age.insert(now, host);
    }

    /// Bytes of tables currently cached.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(words: usize) -> L2Table {
        vec![0u64; words].into()
    }

    #[test]
    fn cache_evicts_least_recently_used_table_over_budget() {
        let cache = L2Cache::new(3 * 8 * 64);
        cache.insert(1, table(64));
        cache.insert(2, table(64));
        cache.insert(3, table(64));
        assert!(cache.get(1).is_some());
        cache.insert(4, table(64));
        assert!(cache.get(2).is_none());
        assert!(cache.get(1).is_some() && cache.get(3).is_some() && cache.get(4).is_some());
        assert_eq!(cache.bytes(), 3 * 8 * 64);
    }

    #[test]
    fn cache_keeps_one_table_larger_than_its_budget() {
        let cache = L2Cache::new(8);
        cache.insert(1, table(64));
        assert!(cache.get(1).is_some());
        cache.insert(2, table(64));
        assert!(cache.get(1).is_none() && cache.get(2).is_some());
    }

    #[test]
    fn reinserting_a_table_does_not_count_it_twice() {
        let cache = L2Cache::new(1 << 20);
        cache.insert(1, table(64));
        cache.insert(1, table(64));
        assert_eq!(cache.bytes(), 8 * 64);
    }
}
