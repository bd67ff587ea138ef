//! Fixed-size blocks for the events the tail stage holds in memory.
//!
//! In: a run's held events, encoded ([`Pool::push`]) into a chain of 256-byte blocks
//! ([`Blocks`]: the first and last block, the bytes written); out: the events decoded again
//! ([`Pool::events`]) when the run is decided, spilled or shown. The blocks come from 1 MiB
//! slabs that the pool allocates from the system on its own (outside the allocator's arenas),
//! lowest free block first; a run that is spilled or decided gives its blocks back
//! ([`Pool::release`]). With every block the same size, blocks freed by one run are what the
//! next run takes: the pool does not fragment, and it is never larger than the most blocks
//! held at once, which `max_bytes` bounds. [`Pool::trim`] hands the pages of free blocks back
//! to the system (`MADV_DONTNEED`); nothing else is returned, and nothing runs on its own.

use std::sync::Arc;

use bytes::Bytes;

use crate::event::{Event, Interner};

/// Bytes of a block: a 4-byte link to the next block, then payload.
pub const BLOCK: usize = 256;
const LINK: usize = 4;
const PAYLOAD: usize = BLOCK - LINK;
const SLAB_BLOCKS: usize = 4096;
const NONE: u32 = u32::MAX;
const PAGE: usize = 4096;
/// Blocks in a page.
const PER_PAGE: usize = PAGE / BLOCK;
/// Bytes before an encoded event's type: id, timestamp, receive time, and the lengths of its
/// data, its type and its attributes.
const HEAD: usize = 44;

/// A run's held events as a chain of blocks.
#[derive(Debug)]
pub struct Blocks {
    first: u32,
    last: u32,
    /// Bytes written (over every block's payload).
    len: u32,
    /// Blocks in the chain.
    count: u32,
}

impl Default for Blocks {
    fn default() -> Blocks {
        Blocks {
            first: NONE,
            last: NONE,
            len: 0,
            count: 0,
        }
    }
}

impl Blocks {
    /// Bytes of pool memory the chain takes.
    pub fn bytes(&self) -> usize {
        self.count as usize * BLOCK
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The blocks, and which are free.
#[derive(Default)]
pub struct Pool {
    /// Each slab with room for a page more than its blocks, and where its page-aligned
    /// blocks start (so that a free page of blocks is a page of memory, see [`Pool::trim`]).
    slabs: Vec<(Box<[u8]>, usize)>,
    /// One bit per block, set when free.
    free: Vec<u64>,
    /// Free blocks now.
    free_count: usize,
    /// Words of `free` below this one have no free block.
    hint: usize,
    /// One bit per page of blocks, set while the page is resident (written since it was
    /// last handed back).
    resident: Vec<u64>,
    resident_pages: usize,
    /// Shares the types of decoded events.
    kinds: Interner,
}

/// One decoded event's fields, borrowed from the run's bytes.
pub struct HeldRef<'a> {
    pub id: u128,
    pub kind: &'a str,
    pub ts_ns: u64,
    pub received_ns: u64,
    pub attributes: Vec<(String, String)>,
    pub data: std::ops::Range<usize>,
}

impl Pool {
    /// Bytes the pool has taken from the system (its slabs).
    pub fn bytes(&self) -> usize {
        self.slabs.len() * SLAB_BLOCKS * BLOCK
    }

    /// Bytes of the blocks that are free now.
    pub fn free_bytes(&self) -> usize {
        self.free_count * BLOCK
    }

    /// Bytes of the pool's pages that are resident: the pages of blocks in use, and of free
    /// blocks that were used since [`Pool::trim`] last handed their page back.
    pub fn resident_bytes(&self) -> usize {
        self.resident_pages * PAGE
    }

    /// Resident bytes that hold no block in use (what a trim could hand back, and pages
    /// that a block in use keeps).
    pub fn idle_bytes(&self) -> usize {
        self.resident_bytes()
            .saturating_sub((self.slabs.len() * SLAB_BLOCKS - self.free_count) * BLOCK)
    }

    fn block(&self, i: u32) -> &[u8] {
        let (s, o) = (i as usize / SLAB_BLOCKS, i as usize % SLAB_BLOCKS);
        let (slab, base) = &self.slabs[s];
        &slab[base + o * BLOCK..base + (o + 1) * BLOCK]
    }

    fn block_mut(&mut self, i: u32) -> &mut [u8] {
        let (s, o) = (i as usize / SLAB_BLOCKS, i as usize % SLAB_BLOCKS);
        let (slab, base) = &mut self.slabs[s];
        &mut slab[*base + o * BLOCK..*base + (o + 1) * BLOCK]
    }

    fn next(&self, i: u32) -> u32 {
        let b = self.block(i);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn alloc(&mut self) -> u32 {
        if self.free_count == 0 {
            let base = self.slabs.len() * SLAB_BLOCKS;
            // Zeroed, so taken with `calloc`: a slab this large is its own mapping, and its
            // pages become resident only when written.
            let mut slab = vec![0u8; SLAB_BLOCKS * BLOCK + PAGE].into_boxed_slice();
            let at = slab.as_ptr() as usize;
            let offset = at.next_multiple_of(PAGE) - at;
            // Not resident until a block is written (whether `calloc` mapped it fresh or
            // zeroed a reused chunk): `resident` counts from here.
            discard(&mut slab[offset..offset + SLAB_BLOCKS * BLOCK]);
            self.slabs.push((slab, offset));
            self.resident
                .resize((base + SLAB_BLOCKS).div_ceil(PER_PAGE).div_ceil(64), 0);
            self.free.resize((base + SLAB_BLOCKS).div_ceil(64), 0);
            for i in base..base + SLAB_BLOCKS {
                self.free[i / 64] |= 1 << (i % 64);
            }
            self.free_count += SLAB_BLOCKS;
        }
        let mut w = self.hint;
        while self.free[w] == 0 {
            w += 1;
        }
        self.hint = w;
        let bit = self.free[w].trailing_zeros() as usize;
        self.free[w] &= !(1 << bit);
        self.free_count -= 1;
        let i = (w * 64 + bit) as u32;
        let page = i as usize / PER_PAGE;
        if self.resident[page / 64] & (1 << (page % 64)) == 0 {
            self.resident[page / 64] |= 1 << (page % 64);
            self.resident_pages += 1;
        }
        self.block_mut(i)[..LINK].copy_from_slice(&NONE.to_le_bytes());
        i
    }

    fn dealloc(&mut self, i: u32) {
        let (w, bit) = (i as usize / 64, i as usize % 64);
        self.free[w] |= 1 << bit;
        self.free_count += 1;
        self.hint = self.hint.min(w);
    }

    /// Appends `bytes` to the chain.
    fn append(&mut self, b: &mut Blocks, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = b.len as usize - (b.count as usize).saturating_sub(1) * PAYLOAD;
            if b.count == 0 || used == PAYLOAD {
                let n = self.alloc();
                if b.count == 0 {
                    b.first = n;
                } else {
                    let last = b.last;
                    self.block_mut(last)[..LINK].copy_from_slice(&n.to_le_bytes());
                }
                b.last = n;
                b.count += 1;
                continue;
            }
            let take = (PAYLOAD - used).min(bytes.len());
            let last = b.last;
            self.block_mut(last)[LINK + used..LINK + used + take].copy_from_slice(&bytes[..take]);
            b.len += take as u32;
            bytes = &bytes[take..];
        }
    }

    /// Encodes `e` (all but its run id) at the end of the chain.
    pub fn push(&mut self, b: &mut Blocks, e: &Event, received_ns: u64) {
        let kind = e.kind.as_bytes();
        let kind_len = kind.len();
        let mut head = [0u8; 48];
        head[0..16].copy_from_slice(&e.id.to_le_bytes());
        head[16..24].copy_from_slice(&e.ts_ns.to_le_bytes());
        head[24..32].copy_from_slice(&received_ns.to_le_bytes());
        head[32..36].copy_from_slice(&(e.data.len() as u32).to_le_bytes());
        head[36..40].copy_from_slice(&(kind_len as u32).to_le_bytes());
        head[40..44].copy_from_slice(&(e.attributes.len() as u32).to_le_bytes());
        self.append(b, &head[..HEAD]);
        self.append(b, kind);
        for (k, v) in &e.attributes {
            self.append(b, &(k.len() as u32).to_le_bytes());
            self.append(b, k.as_bytes());
            self.append(b, &(v.len() as u32).to_le_bytes());
            self.append(b, v.as_bytes());
        }
        self.append(b, &e.data);
    }

    /// The chain's bytes, in one buffer.
    pub fn read(&self, b: &Blocks) -> Vec<u8> {
        let mut out = Vec::with_capacity(b.len as usize);
        self.read_into(b, &mut out);
        out
    }

    /// Appends the chain's bytes to `out`.
    pub fn read_into(&self, b: &Blocks, out: &mut Vec<u8>) {
        let mut at = b.first;
        let mut left = b.len as usize;
        while at != NONE && left > 0 {
            let take = left.min(PAYLOAD);
            out.extend_from_slice(&self.block(at)[LINK..LINK + take]);
            left -= take;
            at = self.next(at);
        }
    }

    /// Gives the chain's blocks back.
    pub fn release(&mut self, b: &mut Blocks) {
        let mut at = b.first;
        for _ in 0..b.count {
            if at == NONE {
                break;
            }
            let next = self.next(at);
            self.dealloc(at);
            at = next;
        }
        *b = Blocks::default();
    }

    /// Decodes the held events of `buf` (from [`Pool::read`]) in order, calling `f` for each.
    pub fn decode<'a>(buf: &'a [u8], mut f: impl FnMut(HeldRef<'a>)) {
        let mut at = 0usize;
        let u32_at = |p: usize| u32::from_le_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
        while at + HEAD <= buf.len() {
            let id = u128::from_le_bytes(buf[at..at + 16].try_into().unwrap_or_default());
            let ts_ns = u64::from_le_bytes(buf[at + 16..at + 24].try_into().unwrap_or_default());
            let received_ns =
                u64::from_le_bytes(buf[at + 24..at + 32].try_into().unwrap_or_default());
            let data_len = u32_at(at + 32) as usize;
            let kind_len = u32_at(at + 36) as usize;
            let n_attrs = u32_at(at + 40) as usize;
            at += HEAD;
            let kind = std::str::from_utf8(&buf[at..at + kind_len]).unwrap_or("");
            at += kind_len;
            let mut attributes = Vec::with_capacity(n_attrs);
            for _ in 0..n_attrs {
                let kl = u32_at(at) as usize;
                let k = String::from_utf8_lossy(&buf[at + 4..at + 4 + kl]).into_owned();
                at += 4 + kl;
                let vl = u32_at(at) as usize;
                let v = String::from_utf8_lossy(&buf[at + 4..at + 4 + vl]).into_owned();
                at += 4 + vl;
                attributes.push((k, v));
            }
            f(HeldRef {
                id,
                kind,
                ts_ns,
                received_ns,
                attributes,
                data: at..at + data_len,
            });
            at += data_len;
        }
    }

    /// The chain's events as [`Event`]s of `run_id`, in order; their data share one buffer.
    /// `received` turns a stored receive time back into an instant. The blocks stay.
    pub fn events(
        &mut self,
        b: &Blocks,
        run_id: &Arc<str>,
        received: impl Fn(u64) -> std::time::Instant,
    ) -> Vec<Event> {
        let buf = Bytes::from(self.read(b));
        let mut out = Vec::new();
        let kinds = &mut self.kinds;
        Pool::decode(&buf, |h| {
            out.push(Event {
                id: h.id,
                seq: 0,
                kind: kinds.kind(h.kind),
                ts_ns: h.ts_ns,
                run_id: Some(run_id.clone()),
                attributes: h.attributes,
                data: buf.slice(h.data),
                received: received(h.received_ns),
            })
        });
        out
    }

    /// Hands the resident pages that hold only free blocks back to the system.
    pub fn trim(&mut self) {
        const PAGES: usize = SLAB_BLOCKS / PER_PAGE;
        let mask: u64 = (1 << PER_PAGE) - 1;
        for (s, (slab, base)) in self.slabs.iter_mut().enumerate() {
            let free = &self.free;
            let resident = &mut self.resident;
            let resident_pages = &mut self.resident_pages;
            let mut page_free = |p: usize| {
                let i = s * SLAB_BLOCKS + p * PER_PAGE;
                let page = i / PER_PAGE;
                let bit = 1u64 << (page % 64);
                let idle =
                    resident[page / 64] & bit != 0 && (free[i / 64] >> (i % 64)) & mask == mask;
                if idle {
                    resident[page / 64] &= !bit;
                    *resident_pages -= 1;
                }
                idle
            };
            let mut from: Option<usize> = None;
            for p in 0..=PAGES {
                match (p < PAGES && page_free(p), from) {
                    (true, None) => from = Some(p),
                    (false, Some(first)) => {
                        from = None;
                        discard(&mut slab[*base + first * PAGE..*base + p * PAGE]);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Tells the system the pages of `bytes` are not needed (they read as zeros after).
fn discard(bytes: &mut [u8]) {
    #[cfg(target_os = "linux")]
    {
        let addr = bytes.as_mut_ptr() as usize;
        let start = addr.next_multiple_of(4096);
        let end = (addr + bytes.len()) & !4095;
        if end > start {
            // SAFETY: the range is inside `bytes`, which this call borrows mutably, and is
            // page-aligned; after MADV_DONTNEED private anonymous pages read as zeros, which
            // is a valid state for free blocks (their contents are never read).
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64, kind: &str, data: &str, attrs: &[(&str, &str)]) -> Event {
        Event {
            id: i as u128 * 1_000_003,
            seq: 0,
            kind: Arc::from(kind),
            ts_ns: i,
            run_id: None,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            data: Bytes::copy_from_slice(data.as_bytes()),
            received: std::time::Instant::now(),
        }
    }

    #[test]
    fn events_come_back_as_pushed_across_blocks() {
        let mut p = Pool::default();
        let (mut a, mut b) = (Blocks::default(), Blocks::default());
        let mut want = Vec::new();
        for i in 0..50u64 {
            let data = format!(
                r#"{{"i":{i},"pad":"{}"}}"#,
                "x".repeat((i * 37 % 700) as usize)
            );
            let attrs: &[(&str, &str)] = if i % 3 == 0 {
                &[("k", "v"), ("key2", "")]
            } else {
                &[]
            };
            let long = "t".repeat(70_000); // longer than a u16 says
            let kind = match i % 3 {
                0 => "step",
                1 => "test_end",
                _ => &long,
            };
            let e = ev(i, kind, &data, attrs);
            p.push(&mut a, &e, i * 10);
            p.push(&mut b, &ev(i, "other", "{}", &[]), 0);
            want.push(e);
        }
        let run: Arc<str> = Arc::from("r1");
        let got = p.events(&a, &run, |_| std::time::Instant::now());
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.id, &*g.kind, g.ts_ns), (w.id, &*w.kind, w.ts_ns));
            assert_eq!(g.attributes, w.attributes);
            assert_eq!(g.data, w.data);
            assert_eq!(g.run_id.as_deref(), Some("r1"));
        }
        assert_eq!(p.events(&b, &run, |_| std::time::Instant::now()).len(), 50);
        let used = a.count as usize + b.count as usize;
        assert_eq!(p.free_bytes() + used * BLOCK, p.bytes());
        p.release(&mut a);
        p.release(&mut b);
        assert_eq!(p.free_bytes(), p.bytes(), "every block back");
        assert!(a.is_empty() && b.is_empty());
    }

    #[test]
    fn freed_blocks_are_reused_before_the_pool_grows() {
        let mut p = Pool::default();
        let e = ev(1, "step", &"y".repeat(1000), &[]);
        let mut runs: Vec<Blocks> = (0..1000).map(|_| Blocks::default()).collect();
        for r in &mut runs {
            p.push(r, &e, 0);
        }
        let size = p.bytes();
        for _ in 0..20 {
            for r in &mut runs {
                p.release(r);
                p.push(r, &e, 0);
            }
        }
        assert_eq!(p.bytes(), size, "the pool did not grow");
        for r in &mut runs {
            p.release(r);
        }
        p.trim();
        let mut r = Blocks::default();
        p.push(&mut r, &e, 7);
        let run: Arc<str> = Arc::from("r");
        let back = p.events(&r, &run, |_| std::time::Instant::now());
        assert_eq!(back[0].data, e.data, "a trimmed block works again");
    }

    #[test]
    fn resident_pages_are_counted_until_trimmed() {
        let mut p = Pool::default();
        assert_eq!(p.resident_bytes(), 0);
        let e = ev(1, "step", &"z".repeat(1000), &[]);
        let mut runs: Vec<Blocks> = (0..64).map(|_| Blocks::default()).collect();
        for r in &mut runs {
            p.push(r, &e, 0);
        }
        let used: usize = runs.iter().map(Blocks::bytes).sum();
        // A slab is not resident until its blocks are written: only the pages written count.
        assert!(p.bytes() >= 1 << 20);
        assert_eq!(p.resident_bytes(), used.next_multiple_of(PAGE));
        assert!(p.idle_bytes() < PAGE);
        // Freed blocks stay resident (idle) until a trim hands their pages back; a page with
        // one block in use stays.
        for r in runs.iter_mut().skip(1) {
            p.release(r);
        }
        assert_eq!(p.resident_bytes(), used.next_multiple_of(PAGE));
        assert!(p.idle_bytes() >= used - runs[0].bytes() - PAGE);
        p.trim();
        assert_eq!(p.resident_bytes(), runs[0].bytes().next_multiple_of(PAGE));
        assert!(p.idle_bytes() < PAGE);
        // Written again, the pages count again.
        let mut r = Blocks::default();
        p.push(&mut r, &e, 0);
        assert_eq!(
            p.resident_bytes(),
            (runs[0].bytes() + r.bytes()).next_multiple_of(PAGE)
        );
    }
}
