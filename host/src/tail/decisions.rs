//! The remembered decisions: what became of the last `max` runs, for events that arrive after
//! their run was decided.
//!
//! In: a run's key (a hash of its id) and its verdict when it is decided ([`Decisions::remember`]);
//! out: the verdict when a late event asks ([`Decisions::get`]). The oldest is forgotten
//! first. A ring of entries in the order made, and an index of ring positions (open
//! addressing, linear probing, at most half full) that forgets by shifting entries back rather
//! than leaving tombstones: a full ring under steady churn (a run decided, the oldest
//! forgotten) neither grows nor rehashes, where a hash map doubled. Both grow with the number
//! remembered until `max`. Nothing runs on its own.

use std::collections::VecDeque;
use std::sync::Arc;

/// An empty index slot.
const EMPTY: u32 = u32::MAX;
/// Sequence numbers count modulo this (so that none is [`EMPTY`]).
const SEQS: u64 = u32::MAX as u64;
/// The most remembered, whatever `max` says (positions must stay below [`SEQS`]).
const MOST: usize = 1 << 31;

/// A verdict: kept, by this (`outrigger.kept_by`), or dropped.
pub type Verdict = Option<Arc<str>>;

pub struct Decisions {
    /// Oldest first; entry `i` has sequence number `front + i` (modulo [`SEQS`]).
    ring: VecDeque<(u64, Verdict)>,
    /// Sequence number of the oldest entry.
    front: u32,
    /// Sequence numbers of the entries, by key; a power of two long, at most half full.
    index: Vec<u32>,
    pub max: usize,
}

impl Decisions {
    pub fn new(max: usize) -> Decisions {
        Decisions {
            ring: VecDeque::new(),
            front: 0,
            index: Vec::new(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The verdict remembered for `key`.
    pub fn get(&self, key: u64) -> Option<&Verdict> {
        self.find(key).map(|(_, pos)| &self.ring[pos].1)
    }

    /// Remembers `key`'s verdict (a key already remembered keeps its place and takes the new
    /// verdict); forgets the oldest past `max`.
    pub fn remember(&mut self, key: u64, verdict: Verdict) {
        if self.max == 0 {
            return;
        }
        if let Some((_, pos)) = self.find(key) {
            self.ring[pos].1 = verdict;
            return;
        }
        while self.ring.len() >= self.max.min(MOST) {
            self.forget_oldest();
        }
        if (self.ring.len() + 1) * 2 > self.index.len() {
            let want = ((self.ring.len() + 1) * 2).next_power_of_two().max(64);
            self.rebuild(want);
        }
        let seq = self.seq_at(self.ring.len());
        self.ring.push_back((key, verdict));
        let mask = self.index.len() - 1;
        let mut i = self.home(key);
        while self.index[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.index[i] = seq;
    }

    /// Forgets the oldest until at most `max` are remembered (after `max` was lowered), and
    /// gives back the room a much lower `max` no longer needs.
    pub fn trim(&mut self) {
        while self.ring.len() > self.max.min(MOST) {
            self.forget_oldest();
        }
        let need = (self.ring.len() * 2).next_power_of_two().max(64);
        if self.max == 0 {
            self.ring = VecDeque::new();
            self.index = Vec::new();
        } else if self.index.len() > 4 * need {
            self.ring.shrink_to(self.max.min(self.ring.len() * 2));
            self.rebuild(need);
        }
    }

    /// Heap bytes of the ring and the index (their allocated slots).
    pub fn bytes(&self) -> usize {
        self.ring.capacity() * std::mem::size_of::<(u64, Verdict)>()
            + self.index.capacity() * std::mem::size_of::<u32>()
    }

    fn home(&self, key: u64) -> usize {
        // Keys are hashes already; multiplying spreads their low bits over the high ones.
        let bits = self.index.len().trailing_zeros();
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }

    /// The index slot and ring position of `key`.
    fn find(&self, key: u64) -> Option<(usize, usize)> {
        if self.index.is_empty() {
            return None;
        }
        let mask = self.index.len() - 1;
        let mut i = self.home(key);
        loop {
            let seq = self.index[i];
            if seq == EMPTY {
                return None;
            }
            let pos = self.pos_of(seq);
            if self.ring[pos].0 == key {
                return Some((i, pos));
            }
            i = (i + 1) & mask;
        }
    }

    fn forget_oldest(&mut self) {
        let Some(&(key, _)) = self.ring.front() else {
            return;
        };
        if let Some((slot, _)) = self.find(key) {
            self.unindex(slot);
        }
        self.ring.pop_front();
        self.front = self.seq_at(1);
    }

    /// Empties index slot `hole`, moving back the entries after it that probed past it (so
    /// that every entry stays reachable from its home without tombstones).
    fn unindex(&mut self, mut hole: usize) {
        let mask = self.index.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let seq = self.index[j];
            if seq == EMPTY {
                break;
            }
            let key = self.ring[self.pos_of(seq)].0;
            let home = self.home(key);
            // The entry at `j` may move to the hole unless its home lies cyclically in
            // (hole, j].
            let stays = if hole < j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.index[hole] = seq;
                hole = j;
            }
        }
        self.index[hole] = EMPTY;
    }

    fn rebuild(&mut self, len: usize) {
        self.index = vec![EMPTY; len];
        let mask = len - 1;
        for (pos, (key, _)) in self.ring.iter().enumerate() {
            let mut i = self.home(*key);
            while self.index[i] != EMPTY {
                i = (i + 1) & mask;
            }
            self.index[i] = self.seq_at(pos);
        }
    }

    fn seq_at(&self, pos: usize) -> u32 {
        ((self.front as u64 + pos as u64) % SEQS) as u32
    }

    fn pos_of(&self, seq: u32) -> usize {
        ((seq as u64 + SEQS - self.front as u64) % SEQS) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn verdict(i: u64) -> Verdict {
        i.is_multiple_of(3)
            .then(|| Arc::from(format!("p{}", i % 7)))
    }

    /// Against a map and a queue doing the same, under churn, with colliding keys (many share
    /// their high bits, so probes run long and deletions shift).
    #[test]
    fn remembers_the_last_max_and_forgets_the_oldest_first() {
        let max = 1000;
        let mut d = Decisions::new(max);
        let mut model: HashMap<u64, Verdict> = HashMap::new();
        let mut order: VecDeque<u64> = VecDeque::new();
        let mut x: u64 = 7;
        for i in 0..20_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // A quarter of the keys repeat recent ones; the rest are new, some crowded.
            let key = if i % 4 == 0 && !order.is_empty() {
                order[(x >> 33) as usize % order.len()]
            } else if i % 4 == 1 {
                (x >> 40) | 0xFFFF_0000_0000_0000
            } else {
                x
            };
            d.remember(key, verdict(i));
            if model.insert(key, verdict(i)).is_none() {
                order.push_back(key);
            }
            while model.len() > max {
                let k = order.pop_front().unwrap();
                model.remove(&k);
            }
            assert_eq!(d.len(), model.len());
            if i % 997 == 0 {
                for (k, v) in &model {
                    assert_eq!(d.get(*k), Some(v), "key {k:x} at {i}");
                }
            }
        }
        for (k, v) in &model {
            assert_eq!(d.get(*k), Some(v));
        }
        assert!(d.index.iter().filter(|s| **s != EMPTY).count() == max);
    }

    #[test]
    fn sequence_numbers_wrap_without_meeting_the_empty_mark() {
        let mut d = Decisions::new(50);
        d.front = (SEQS - 30) as u32;
        for k in 1..=200u64 {
            d.remember(k * 0x9E37_79B9, None);
            assert!(d.index.iter().all(|s| *s == EMPTY || (*s as u64) < SEQS));
        }
        assert_eq!(d.len(), 50);
        for k in 151..=200u64 {
            assert!(d.get(k * 0x9E37_79B9).is_some(), "{k}");
        }
        assert!(d.get(150 * 0x9E37_79B9).is_none());
    }

    #[test]
    fn churn_at_the_bound_does_not_grow_it() {
        let mut d = Decisions::new(10_000);
        for k in 0..10_000u64 {
            d.remember(k.wrapping_mul(0x2545_F491_4F6C_DD1D), None);
        }
        let full = d.bytes();
        for k in 10_000..200_000u64 {
            d.remember(k.wrapping_mul(0x2545_F491_4F6C_DD1D), None);
        }
        assert_eq!(d.bytes(), full);
        assert_eq!(d.len(), 10_000);
        assert!(
            d.get(199_999u64.wrapping_mul(0x2545_F491_4F6C_DD1D))
                .is_some()
        );
        assert!(d.get(0).is_none());
        // Lowering `max` forgets the oldest and gives the room back.
        d.max = 100;
        d.trim();
        assert_eq!(d.len(), 100);
        assert!(d.bytes() < full / 10, "{} of {full}", d.bytes());
        assert!(
            d.get(199_999u64.wrapping_mul(0x2545_F491_4F6C_DD1D))
                .is_some()
        );
        assert!(
            d.get(199_899u64.wrapping_mul(0x2545_F491_4F6C_DD1D))
                .is_none()
        );
        d.max = 0;
        d.trim();
        assert_eq!((d.len(), d.bytes()), (0, 0));
    }
}
