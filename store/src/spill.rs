//! A second tier below the in-memory chunk cache: decompressed chunks kept in one private file
//! (the caller opens it and usually unlinks it at once), written as a ring. The kernel keeps
//! what it can of that file in its page cache and drops it under memory pressure, so a large
//! working set (a big file downloaded again) is served without decompressing, while the
//! process's own memory stays bounded by the in-memory tier.
//!
//! The file is outside the repository and is not trusted: a chunk read back from it is checked
//! against its id like a chunk read from a pack (see [`crate::repo::IndexedRepository::chunk`]),
//! and one that fails is dropped and read from the repository again.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use crate::format::ChunkId;

pub(crate) struct Spill {
    file: File,
    capacity: u64,
    state: Mutex<State>,
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
        Spill { file, capacity, state: Mutex::new(State::default()) }
    }

    /// The bytes stored for `id`, unverified; `None` if absent or overwritten while reading.
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let slot = *self.state.lock().expect("spill lock").map.get(id)?;
        let mut buf = vec![0u8; slot.len as usize];
        self.file.read_exact_at(&mut buf, slot.offset).ok()?;
        // Written over since the lookup? Then the slot was forgotten first.
        (self.state.lock().expect("spill lock").map.get(id) == Some(&slot)).then_some(buf)
    }

    /// Keep `data` as chunk `id` (unless it is there already or larger than the file).
    pub fn put(&self, id: ChunkId, data: &[u8]) {
        let len = data.len() as u64;
        if len == 0 || len > self.capacity {
            return;
        }
        let mut st = self.state.lock().expect("spill lock");
        if st.map.contains_key(&id) {
            return;
        }
        let offset = st.reserve(len, self.capacity);
        // Written under the lock: nobody can claim the region meanwhile. A write to the page
        // cache is short next to the decompression that produced `data`.
        if let Err(e) = self.file.write_all_at(data, offset) {
            tracing::debug!("chunk spill write failed: {e}");
            return;
        }
        let slot = Slot { offset, len: len as u32 };
        st.map.insert(id, slot);
        st.order.push_back((id, slot));
    }

    /// Forget a chunk (it failed its check).
    pub fn forget(&self, id: &ChunkId) {
        self.state.lock().expect("spill lock").map.remove(id);
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
        // Sizes that do not divide the capacity, so wraps leave tails of the previous lap.
        let sizes = [300usize, 170, 410, 90, 260, 330, 120, 999, 5, 640];
        let mut written = Vec::new();
        for i in 0..200u32 {
            let len = sizes[i as usize % sizes.len()];
            spill.put(id(i), &data(i, len));
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
        spill.put(id(5000), &data(0, 1001));
        assert_eq!(spill.get(&id(5000)), None, "larger than the file");
        spill.forget(&id(199));
        assert_eq!(spill.get(&id(199)), None);
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
        let repo = Repository::init(&dir.path().join("repo"), chunker, CompressionParams::default()).unwrap();
        let repo = repo.open_indexed(CacheSizes { chunk_bytes: 0, tree_bytes: 1 << 20 }).unwrap();
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
        let spilled = spill_file.metadata().unwrap().len();
        assert_eq!(spilled, text.len() as u64, "every chunk went to the spill, decompressed");
        assert_eq!(read_all(), text, "read back from the spill");
        // Damage the whole spill file: the reads notice and go to the repository.
        spill_file.write_all_at(&vec![0x55; spilled as usize], 0).unwrap();
        assert_eq!(read_all(), text);
    }
}
