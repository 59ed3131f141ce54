//! Reading many chunks in few requests. From a remote repository each ranged read is a round
//! trip, and a backup writes the chunks of neighbouring files next to each other in a pack: the
//! chunks a restore needs are a few runs of each pack. [`plan_runs`] groups them (pure);
//! [`IndexedRepository::read_run`] brings one run with one read.
//!
//! A run is an optimisation only: what it cannot bring (a pack a prune moved, a damaged blob) is
//! left out, and the caller reads that chunk on its own through
//! [`IndexedRepository::chunk`], whose error names what is wrong.

use crate::backend::FileKind;
use crate::format::{ChunkId, PackId};
use crate::index::Location;
use crate::repo::IndexedRepository;

/// One ranged read of a pack, `[start, end)`, that holds the given chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackRun {
    pub pack: PackId,
    pub start: u64,
    pub end: u64,
    chunks: Vec<(ChunkId, Location)>,
}

impl PackRun {
    /// Bytes the run reads.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The chunks the run brings.
    pub fn chunk_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.chunks.iter().map(|(id, _)| *id)
    }
}

/// Group located chunks into runs: per pack, in offset order, a chunk joins the run before it
/// while the bytes between them are at most `max_gap` and the run stays within `max_run` bytes
/// (one chunk larger than that is a run of its own). Each chunk appears once.
pub fn plan_runs(mut chunks: Vec<(ChunkId, Location)>, max_gap: u64, max_run: u64) -> Vec<PackRun> {
    chunks.sort_by_key(|(id, l)| (l.pack, l.offset, *id));
    chunks.dedup_by_key(|(id, _)| *id);
    let mut runs: Vec<PackRun> = Vec::new();
    for (id, loc) in chunks {
        let end = loc.offset + u64::from(loc.stored_len);
        // Members of a group share the group's bytes: one in the run already brings them.
        if let Some(run) = runs.last_mut()
            && run.pack == loc.pack
            && loc.offset >= run.start
            && end <= run.end
        {
            run.chunks.push((id, loc));
            continue;
        }
        if let Some(run) = runs.last_mut()
            && run.pack == loc.pack
            && loc.offset >= run.end
            && loc.offset - run.end <= max_gap
            && end - run.start <= max_run
        {
            run.end = end;
            run.chunks.push((id, loc));
            continue;
        }
        runs.push(PackRun { pack: loc.pack, start: loc.offset, end, chunks: vec![(id, loc)] });
    }
    runs
}

impl IndexedRepository {
    /// Read one run and open its chunks, each verified against its id. Best effort: a failed
    /// read gives nothing, a damaged chunk is left out. The chunks are not kept in the chunk
    /// cache: a restore asks for each chunk of a run once, with every place that needs it.
    pub fn read_run(&self, run: &PackRun) -> Vec<(ChunkId, Vec<u8>)> {
        let mut bytes =
            match self.backend().get_range(FileKind::Pack, &run.pack.to_hex(), run.start, run.len() as usize) {
                Ok(b) if b.len() as u64 == run.len() => b,
                Ok(_) | Err(_) => return Vec::new(),
            };
        let mut out = Vec::with_capacity(run.chunks.len());
        for (id, loc) in &run.chunks {
            let at = (loc.offset - run.start) as usize;
            let stored = &mut bytes[at..at + loc.stored_len as usize];
            if let Ok(raw) = crate::blob::open_in(self.codec(), &(*id).into(), loc.compression, stored, loc.raw_len) {
                out.push((*id, raw));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Compression, Hash};

    fn loc(pack: u8, offset: u64, len: u32) -> Location {
        Location {
            pack: PackId(Hash::of(&[pack])),
            compression: Compression::None,
            offset,
            stored_len: len,
            raw_len: len,
        }
    }

    fn id(n: u8) -> ChunkId {
        ChunkId(Hash::of(&[b'c', n]))
    }

    #[test]
    fn neighbours_in_a_pack_are_one_run() {
        let runs =
            plan_runs(vec![(id(2), loc(1, 100, 50)), (id(1), loc(1, 0, 100)), (id(3), loc(1, 160, 40))], 10, 1000);
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].start, runs[0].end), (0, 200));
        assert_eq!(runs[0].chunk_ids().collect::<Vec<_>>(), [id(1), id(2), id(3)]);
    }

    #[test]
    fn gaps_packs_and_the_size_limit_split_runs() {
        let chunks = vec![
            (id(1), loc(1, 0, 100)),
            (id(2), loc(1, 111, 10)), // gap 11 > 10
            (id(3), loc(2, 121, 10)), // another pack
            (id(4), loc(2, 131, 900)),
            (id(5), loc(2, 1031, 5000)), // larger than a run: alone
        ];
        let runs = plan_runs(chunks, 10, 1000);
        let spans: Vec<_> = runs.iter().map(|r| (r.start, r.end, r.chunks.len())).collect();
        let p1_first = PackId(Hash::of(&[1])) < PackId(Hash::of(&[2]));
        let (a, b) = ([(0, 100, 1), (111, 121, 1)], [(121, 1031, 2), (1031, 6031, 1)]);
        let expected: Vec<_> =
            if p1_first { a.iter().chain(&b).copied().collect() } else { b.iter().chain(&a).copied().collect() };
        assert_eq!(spans, expected);
    }

    #[test]
    fn members_of_one_group_are_read_once() {
        let member = |m: u16| Location { compression: Compression::Grouped { member: m }, ..loc(1, 100, 50) };
        let runs = plan_runs(vec![(id(1), member(0)), (id(2), loc(1, 0, 100)), (id(3), member(1))], 0, 1000);
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].start, runs[0].end), (0, 150));
        assert_eq!(runs[0].chunks.len(), 3);
    }

    #[test]
    fn a_chunk_asked_twice_is_read_once() {
        let runs = plan_runs(vec![(id(1), loc(1, 0, 100)), (id(1), loc(1, 0, 100))], 0, 1000);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].chunks.len(), 1);
    }
}
