//! A second tier below the in-memory chunk cache: decompressed chunks kept in one private file
//! (the caller opens it and usually unlinks it at once), written as a ring. The kernel keeps
//! what it can of that file in its page cache and drops it under memory pressure, so a large
//! working set (a big file downloaded again) is served without decompressing, while the
//! process's own memory stays bounded by the in-memory tier.
//!
//! The file is outside the repository and is not trusted: a chunk read back from it is checked
//! against its id like a chunk read from a pack (see [`crate::repo::IndexedRepository::chunk`]),
//! and one that fails is dropped and read from the repository again.
//!
//! A chunk goes into the file the second time it is read from the repository, not the first:
//! most chunks are read once (one download of a file), and copying each into the file would
//! cost a first download time and page cache for nothing. The ids of chunks read once are
//! remembered ([`SEEN`] of them), so a chunk read again, which is what the file is for, is
//! kept. Chunks are written by a thread of the spill's own, so a reader never waits for the copy
//! into the file: it only hands over the chunk, and waits only when that thread is [`QUEUE`]
//! chunks behind.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};

use parking_lot::Mutex;

use crate::format::ChunkId;

/// Chunks handed to the writer thread and not yet written, at most.
const QUEUE: usize = 8;

/// Ids of chunks read once that are remembered (40 bytes each with the set's overhead).
const SEEN: usize = 1 << 16;

pub(crate) struct Spill {
    ring: Arc<Ring>,
    writes: SyncSender<(ChunkId, Arc<Vec<u8>>)>,
    seen: Mutex<Seen>,
}

/// Chunks read from the repository once, the oldest first out. Each id is stamped with when it
/// was seen, so an entry of the queue that was taken out and seen anew meanwhile is told apart.
#[derive(Default)]
struct Seen {
    ids: HashMap<ChunkId, u64>,
    order: VecDeque<(ChunkId, u64)>,
    next: u64,
}

impl Seen {
    /// Whether `id` was seen before; remembers it if not.
    fn again(&mut self, id: ChunkId) -> bool {
        if self.ids.remove(&id).is_some() {
            return true;
        }
        while self.order.len() >= SEEN {
            let Some((old, stamp)) = self.order.pop_front() else { break };
            if self.ids.get(&old) == Some(&stamp) {
                self.ids.remove(&old);
            }
        }
        self.next += 1;
        self.ids.insert(id, self.next);
        self.order.push_back((id, self.next));
        false
    }
}

/// The file and what is where in it.
struct Ring {
    file: File,
    capacity: u64,
    state: Mutex<State>,
    /// Chunks queued for the writer thread.
    queued: AtomicUsize,
    /// Writes made with the lock free (readers could go on meanwhile), for tests.
    #[cfg(test)]
    unlocked_writes: AtomicUsize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    offset: u64,
    len: u32,
}

/// Where the next chunk goes, and the chunks in the file in the order they were written: the
/// oldest first, which (in a ring) is also the next to be overwritten.
#[derive(Default)]
struct State {
    head: u64,
    map: HashMap<ChunkId, Slot>,
    order: VecDeque<(ChunkId, Slot)>,
}

impl State {
    fn drop_front(&mut self) {
        if let Some((id, slot)) = self.order.pop_front()
            && self.map.get(&id) == Some(&slot)
        {
            self.map.remove(&id);
        }
    }

    /// Claim `len` bytes at the head, forgetting the chunks they overlap.
    fn reserve(&mut self, len: u64, capacity: u64) -> u64 {
        if self.head + len > capacity {
            // Wrap: what lies after the head belongs to the previous lap, oldest first.
            while self.order.front().is_some_and(|(_, s)| s.offset >= self.head) {
                self.drop_front();
            }
            self.head = 0;
        }
        let (start, end) = (self.head, self.head + len);
        while self.order.front().is_some_and(|(_, s)| s.offset < end && s.offset + u64::from(s.len) > start) {
            self.drop_front();
        }
        self.head = end;
        start
    }
}

impl Spill {
    pub fn new(file: File, capacity: u64) -> Spill {
        let ring = Arc::new(Ring {
            file,
            capacity,
            state: Mutex::new(State::default()),
            queued: AtomicUsize::new(0),
            #[cfg(test)]
            unlocked_writes: AtomicUsize::new(0),
        });
        let (writes, queue) = sync_channel::<(ChunkId, Arc<Vec<u8>>)>(QUEUE);
        let writer = ring.clone();
        // Ends when the spill is dropped (the channel closes).
        std::thread::Builder::new()
            .name("rewind-spill".into())
            .spawn(move || {
                for (id, data) in queue {
                    writer.store(id, &data);
                    writer.queued.fetch_sub(1, Ordering::Release);
                }
            })
            .expect("spawn the chunk spill writer");
        Spill { ring, writes, seen: Mutex::default() }
    }

    /// The bytes stored for `id`, unverified; `None` if absent or overwritten while reading.
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        self.ring.get(id)
    }

    /// Chunk `id` was read from the repository: keep it, soon, if that happened before
    /// (unless it is there already or larger than the file).
    pub fn put(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        if !self.seen.lock().again(id) {
            return;
        }
        self.ring.queued.fetch_add(1, Ordering::Relaxed);
        if self.writes.send((id, data)).is_err() {
            self.ring.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forget a chunk (it failed its check).
    pub fn forget(&self, id: &ChunkId) {
        self.ring.state.lock().map.remove(id);
    }

    /// Wait until every chunk handed to [`Spill::put`] is written.
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        while self.ring.queued.load(Ordering::Acquire) > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Ring {
    fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let slot = *self.state.lock().map.get(id)?;
        let mut buf = vec![0u8; slot.len as usize];
        self.file.read_exact_at(&mut buf, slot.offset).ok()?;
        // Written over since the lookup? Then the slot was forgotten first.
        (self.state.lock().map.get(id) == Some(&slot)).then_some(buf)
    }

    /// Called only by the spill's writer thread, so two stores never race for the head. The
    /// region is claimed under the lock (forgetting what it held, so readers stop finding it),
    /// written outside it (readers of other chunks do not wait for the copy), and published
    /// under it again.
    fn store(&self, id: ChunkId, data: &[u8]) {
        let len = data.len() as u64;
        if len == 0 || len > self.capacity {
            return;
        }
        let offset = {
            let mut st = self.state.lock();
            if st.map.contains_key(&id) {
                return;
            }
            st.reserve(len, self.capacity)
        };
        #[cfg(test)]
        self.unlocked_writes.fetch_add(usize::from(self.state.try_lock().is_some()), Ordering::Relaxed);
        if let Err(e) = self.file.write_all_at(data, offset) {
            tracing::debug!("chunk spill write failed: {e}");
            return;
        }
        let slot = Slot { offset, len: len as u32 };
        let mut st = self.state.lock();
        st.map.insert(id, slot);
        st.order.push_back((id, slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Hash;

    fn id(i: u32) -> ChunkId {
        ChunkId(Hash::of(&i.to_le_bytes()))
    }

    fn data(i: u32, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
    }

    #[test]
    fn ring_keeps_the_newest_and_never_returns_overwritten_bytes() {
        let spill = Spill::new(tempfile::tempfile().unwrap(), 1000);
        let put = |i: u32, d: Vec<u8>| {
            let d = Arc::new(d);
            spill.put(id(i), d.clone());
            spill.settle();
            assert_eq!(spill.get(&id(i)), None, "a chunk read once is not kept");
            spill.put(id(i), d);
            spill.settle();
        };
        // Sizes that do not divide the capacity, so wraps leave tails of the previous lap.
        let sizes = [300usize, 170, 410, 90, 260, 330, 120, 999, 5, 640];
        let mut written = Vec::new();
        for i in 0..200u32 {
            let len = sizes[i as usize % sizes.len()];
            put(i, data(i, len));
            written.push((i, len));
            let mut held = 0;
            for &(j, l) in &written {
                if let Some(got) = spill.get(&id(j)) {
                    assert_eq!(got, data(j, l), "chunk {j} after writing {i}");
                    held += l;
                }
            }
            assert!(held <= 1000);
            assert_eq!(spill.get(&id(i)), Some(data(i, len)), "the newest is always there");
        }
        assert_eq!(spill.get(&id(10_000)), None);
        // Readers of other chunks never waited for a copy into the file.
        assert_eq!(spill.ring.unlocked_writes.load(Ordering::Relaxed), 200, "written outside the ring lock");
        put(5000, data(0, 1001));
        assert_eq!(spill.get(&id(5000)), None, "larger than the file");
        spill.forget(&id(199));
        assert_eq!(spill.get(&id(199)), None);
    }

    #[test]
    fn admission_remembers_what_was_seen_once() {
        let mut seen = Seen::default();
        assert!(!seen.again(id(1)));
        assert!(seen.again(id(1)), "the second time");
        assert!(!seen.again(id(1)), "admitted chunks are forgotten, then seen anew");
        // Fill the queue so that its first, stale entry for chunk 1 goes out.
        for i in 2..=SEEN as u32 {
            seen.again(id(i));
        }
        assert!(seen.again(id(1)), "a stale entry does not forget a chunk seen anew");
        // Two more: the first pushes out chunk 1's last entry, the second the oldest, chunk 2.
        seen.again(id(SEEN as u32 + 1));
        seen.again(id(SEEN as u32 + 2));
        assert!(!seen.again(id(2)), "the oldest went out");
    }

    /// Through a repository: with no memory cache, reads come back from the spill file; a
    /// damaged spill file is noticed and the repository read instead.
    #[test]
    fn repository_reads_through_a_checked_spill() {
        use crate::{BackupOptions, BackupProgress, CacheSizes, ChunkerParams, CompressionParams, Repository, backup};
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        // Text compresses: the spill holds the decompressed bytes, not the pack's.
        let text: Vec<u8> = (0..400_000u32).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        std::fs::write(src.join("f"), &text).unwrap();
        let chunker = ChunkerParams { min_size: 4096, avg_size: 16384, max_size: 65536 };
        let repo =
            Repository::init(&dir.path().join("repo"), chunker, CompressionParams::default(), crate::NewKey::test())
                .unwrap();
        let repo = repo.open_indexed(CacheSizes { chunk_bytes: 0, tree_bytes: 1 << 20, group_bytes: 0 }).unwrap();
        let opts = BackupOptions { paths: vec![src.clone()], host: "h".into(), ..BackupOptions::default() };
        let snap = backup(&repo, &opts, &BackupProgress::default(), &|p, e| panic!("{}: {e}", p.display())).unwrap();
        let spill_file = tempfile::tempfile().unwrap();
        repo.set_chunk_spill(spill_file.try_clone().unwrap(), 64 << 20);
        let path = src.join("f");
        let node = repo.node_at(&snap.snapshot, path.as_os_str().as_encoded_bytes()).unwrap();
        let read_all = || {
            let r = repo.open_file(&node).unwrap();
            assert!(r.chunks().len() > 10);
            let mut out = vec![0u8; r.size() as usize];
            assert_eq!(r.read_at(0, &mut out).unwrap(), out.len());
            out
        };
        assert_eq!(read_all(), text);
        repo.settle_spill();
        assert_eq!(spill_file.metadata().unwrap().len(), 0, "chunks read once are not spilled");
        let loads = repo.loads();
        assert_eq!(read_all(), text);
        assert_eq!(repo.loads(), 2 * loads, "read from the repository again");
        repo.settle_spill();
        let spilled = spill_file.metadata().unwrap().len();
        assert_eq!(spilled, text.len() as u64, "every chunk read twice went to the spill, decompressed");
        assert_eq!(read_all(), text, "read back from the spill");
        assert_eq!(repo.loads(), 2 * loads, "not from the repository");
        // Damage the whole spill file: the reads notice and go to the repository.
        spill_file.write_all_at(&vec![0x55; spilled as usize], 0).unwrap();
        assert_eq!(read_all(), text);
    }
}
