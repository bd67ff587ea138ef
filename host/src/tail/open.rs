//! The tail's open runs: their records in one slab, found by id through a table of slot
//! numbers, ordered by age.
//!
//! In: a new run's record ([`OpenRuns::insert`]), lookups by id, and removals when a run is
//! decided. Out: the records by slot, the oldest open run, the spillable size of every run
//! in a dense array ([`OpenRuns::sizes`]). A run's record lives in the slab (`Vec`), not in a
//! box of its own: 100 000 open runs are a few large allocations, which go back to the system
//! when they shrink, instead of 100 000 small chunks in the allocator's heap that a few live
//! runs keep from going back. The id table holds 4-byte slot numbers (the ids are in the
//! records). [`OpenRuns::compact`] moves the records down when most slots are free. Holds no
//! task.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use tokio::time::Instant;

/// How long most slots must have been free before [`OpenRuns::compact`] moves the records:
/// runs that close together are often followed by as many new ones (a test session's next
/// round), which would grow the slab straight back.
pub const COMPACT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Bytes of a run id kept inside its record.
const INLINE: usize = 38;

/// A run id as a record keeps it: inside the record when it is short (UUIDs, test ids), so
/// that finding a run reads its record and nothing else, and a run costs no allocation for
/// its id; on the heap otherwise.
pub enum RunId {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl RunId {
    pub fn new(id: &str) -> RunId {
        if id.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..id.len()].copy_from_slice(id.as_bytes());
            RunId::Inline {
                len: id.len() as u8,
                buf,
            }
        } else {
            RunId::Heap(id.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // The bytes were copied from a `str`, whole.
            RunId::Inline { len, buf } => {
                std::str::from_utf8(&buf[..*len as usize]).unwrap_or_default()
            }
            RunId::Heap(s) => s,
        }
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RunId::Inline { len, buf } => &buf[..*len as usize],
            RunId::Heap(s) => s.as_bytes(),
        }
    }

    /// Bytes of the id outside the record.
    pub fn heap_bytes(&self) -> usize {
        match self {
            RunId::Inline { .. } => 0,
            RunId::Heap(s) => s.len(),
        }
    }
}

/// What the store needs of a run record.
pub trait Record {
    /// The run id.
    fn id(&self) -> &str;
    /// Whether the run id is `id` (on every event: no UTF-8 check).
    fn id_is(&self, id: &str) -> bool {
        self.id() == id
    }
    /// The open sequence (unique, increasing): the age order.
    fn seq(&self) -> u64;
}

/// Open runs by slot, id and age.
pub struct OpenRuns<R> {
    slab: Vec<Option<R>>,
    /// Bytes that spilling each slot's run would free (0 for a free slot), for choosing what
    /// to spill without reading every record.
    sizes: Vec<u32>,
    /// Free slots, reused before the slab grows.
    free: Vec<u32>,
    table: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Open sequence → slot, oldest first.
    by_age: BTreeMap<u64, u32>,
    /// Since when most slots have been free (see [`COMPACT_AFTER`]).
    sparse_since: Option<Instant>,
}

impl<R> Default for OpenRuns<R> {
    fn default() -> Self {
        OpenRuns {
            slab: Vec::new(),
            sizes: Vec::new(),
            free: Vec::new(),
            table: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            by_age: BTreeMap::new(),
            sparse_since: None,
        }
    }
}

impl<R: Record> OpenRuns<R> {
    pub fn len(&self) -> usize {
        self.by_age.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_age.is_empty()
    }

    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The hash of the run in each slot, for the table when it moves its entries.
    fn rehash<'a>(
        slab: &'a [Option<R>],
        hasher: &'a foldhash::fast::RandomState,
    ) -> impl Fn(&u32) -> u64 + 'a {
        move |&s| hasher.hash_one(slab[s as usize].as_ref().map_or("", |r| r.id()))
    }

    /// The slot of the open run `id`.
    pub fn find(&self, id: &str) -> Option<u32> {
        let slab = &self.slab;
        self.table
            .find(self.hash(id), |&s| {
                slab[s as usize].as_ref().is_some_and(|r| r.id_is(id))
            })
            .copied()
    }

    pub fn get(&self, slot: u32) -> Option<&R> {
        self.slab.get(slot as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut R> {
        self.slab.get_mut(slot as usize)?.as_mut()
    }

    /// Adds a run that is not open yet; returns its slot.
    pub fn insert(&mut self, run: R) -> u32 {
        let hash = self.hash(run.id());
        let seq = run.seq();
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(run);
                s
            }
            None => {
                self.slab.push(Some(run));
                self.sizes.push(0);
                (self.slab.len() - 1) as u32
            }
        };
        self.table
            .insert_unique(hash, slot, Self::rehash(&self.slab, &self.hasher));
        self.by_age.insert(seq, slot);
        slot
    }

    /// Takes the run at `slot` out.
    pub fn remove(&mut self, slot: u32) -> Option<R> {
        let run = self.slab.get_mut(slot as usize)?.take()?;
        if let Ok(e) = self.table.find_entry(self.hash(run.id()), |&s| s == slot) {
            e.remove();
        }
        self.by_age.remove(&run.seq());
        self.sizes[slot as usize] = 0;
        self.free.push(slot);
        Some(run)
    }

    /// The slot of the run opened at `seq`, if it is still open.
    pub fn by_seq(&self, seq: u64) -> Option<u32> {
        self.by_age.get(&seq).copied()
    }

    /// The oldest open run's slot.
    pub fn oldest(&self) -> Option<u32> {
        self.by_age.first_key_value().map(|(_, s)| *s)
    }

    /// Every open run with its slot (in slot order).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &R)> {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i as u32, r.as_ref()?)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut R> {
        self.slab.iter_mut().filter_map(Option::as_mut)
    }

    /// Spillable bytes by slot.
    pub fn sizes(&self) -> &[u32] {
        &self.sizes
    }

    pub fn set_size(&mut self, slot: u32, size: usize) {
        if let Some(s) = self.sizes.get_mut(slot as usize) {
            *s = u32::try_from(size).unwrap_or(u32::MAX);
        }
    }

    /// Bytes of the store as the system holds them: the slab and the sizes up to the highest
    /// slot used (pages past it were never touched), the id table by capacity, the age index
    /// (B-tree leaves of eleven 12-byte entries in 192-byte nodes, about two-thirds full) and
    /// the free list.
    pub fn bytes(&self) -> usize {
        self.slab.len() * (std::mem::size_of::<Option<R>>() + 4)
            + self.table.capacity() * 8 / 7 * (std::mem::size_of::<u32>() + 1)
            + self.by_age.len() * 26
            + self.free.capacity() * std::mem::size_of::<u32>()
    }

    /// Bytes that each open run takes here: its record and size, its id-table bucket (at the
    /// table's most loaded) and its age entry. What deciding a run gives back.
    pub fn per_run() -> usize {
        std::mem::size_of::<Option<R>>() + 4 + (std::mem::size_of::<u32>() + 1) * 8 / 7 + 26
    }

    /// [`OpenRuns::bytes`] past what the open runs take ([`OpenRuns::per_run`] each): free
    /// slots, the table's spare buckets, the free list. Deciding runs does not shrink it;
    /// [`OpenRuns::compact`] does.
    pub fn slack_bytes(&self) -> usize {
        self.bytes().saturating_sub(self.len() * Self::per_run())
    }

    /// Moves the records down into a smaller slab when most slots have been free for
    /// [`COMPACT_AFTER`] (many runs have closed since the most were open), and shrinks the
    /// table. Slots change: the caller holds none across this.
    pub fn compact(&mut self, now: Instant) {
        let open = self.len();
        let sparse = self.free.len() > 1024 && self.free.len() > 3 * open
            || self.table.capacity() > 4 * open + 1024;
        if !sparse {
            self.sparse_since = None;
            return;
        }
        let since = *self.sparse_since.get_or_insert(now);
        if now.saturating_duration_since(since) < COMPACT_AFTER {
            return;
        }
        self.sparse_since = None;
        if self.free.len() > 1024 && self.free.len() > 3 * open {
            let old = std::mem::take(&mut self.slab);
            self.slab = Vec::with_capacity(open);
            let sizes = std::mem::take(&mut self.sizes);
            self.sizes = Vec::with_capacity(open);
            self.free = Vec::new();
            self.table = HashTable::with_capacity(open);
            self.by_age.clear();
            for (run, size) in old
                .into_iter()
                .zip(sizes)
                .filter_map(|(r, s)| Some((r?, s)))
            {
                let slot = self.insert(run);
                self.sizes[slot as usize] = size;
            }
        } else if self.table.capacity() > 4 * open + 1024 {
            self.table
                .shrink_to(2 * open, Self::rehash(&self.slab, &self.hasher));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Run(String, u64);
    impl Record for Run {
        fn id(&self) -> &str {
            &self.0
        }
        fn seq(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn run_ids_short_and_long_read_back_whole() {
        for id in [
            "",
            "r",
            &"é".repeat(19),
            &"x".repeat(38),
            &"y".repeat(39),
            &"z".repeat(5000),
        ] {
            let r = RunId::new(id);
            assert_eq!(r.as_str(), id);
            assert_eq!(r.heap_bytes() > 0, id.len() > INLINE, "{}", id.len());
        }
        assert_eq!(std::mem::size_of::<RunId>(), 40);
    }

    #[test]
    fn finds_removes_reuses_and_compacts() {
        let mut o: OpenRuns<Run> = OpenRuns::default();
        for i in 0..5000u64 {
            o.insert(Run(format!("run-{i}"), i));
        }
        assert_eq!(o.len(), 5000);
        let s = o.find("run-42").unwrap();
        assert_eq!(o.get(s).unwrap().1, 42);
        o.set_size(s, 300);
        assert_eq!(o.sizes()[s as usize], 300);
        assert_eq!(o.oldest(), o.find("run-0"));
        for i in 0..4900u64 {
            let s = o.find(&format!("run-{i}")).unwrap();
            assert_eq!(o.remove(s).unwrap().1, i);
            assert!(o.find(&format!("run-{i}")).is_none());
        }
        assert_eq!(o.oldest(), o.find("run-4900"));
        assert_eq!(o.sizes()[s as usize], 0, "a removed run's size is cleared");
        // A free slot is reused before the slab grows.
        let before = o.slab.len();
        let n = o.insert(Run("new".into(), 10_000));
        assert!((n as usize) < before);
        let big = o.bytes();
        let t0 = Instant::now();
        o.compact(t0);
        assert_eq!(
            o.bytes(),
            big,
            "not before most slots have been free a while"
        );
        o.compact(t0 + COMPACT_AFTER);
        assert!(o.bytes() < big / 10, "{} -> {}", big, o.bytes());
        assert_eq!(o.len(), 101);
        for i in 4900..5000u64 {
            let s = o.find(&format!("run-{i}")).unwrap();
            assert_eq!(o.get(s).unwrap().1, i);
            assert_eq!(o.by_seq(i), Some(s));
        }
        assert_eq!(o.get(o.find("new").unwrap()).unwrap().1, 10_000);
        assert_eq!(o.oldest(), o.find("run-4900"));
        assert_eq!(o.iter().count(), 101);
    }
}
