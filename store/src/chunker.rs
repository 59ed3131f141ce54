//! Content-defined chunking: bytes in, cut points out. No I/O here; the backup feeds it a buffer
//! and learns where the next chunk ends, or that it needs more bytes to know.

use fastcdc::v2020::{self, Normalization};

use crate::crypto::Gear;
use crate::format::ChunkerParams;

/// FastCDC (2020 variant, normalization level 1), with the fastcdc crate's gear table or, in an
/// encrypted repository, one derived from its chunker key (so cut points reveal nothing to
/// someone who does not hold the key).
#[derive(Clone, Debug)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Option<Box<Gear>>,
}

impl Chunker {
    /// The default gear table (format version 1).
    pub fn new(p: ChunkerParams) -> Chunker {
        Chunker::with_gear(p, None)
    }

    /// A chunker with its own gear table (`None`: the default one).
    pub fn with_gear(p: ChunkerParams, gear: Option<Box<Gear>>) -> Chunker {
        let (mask_s, mask_l) = v2020::select_masks(p.avg_size as usize, Normalization::Level1);
        Chunker { min: p.min_size as usize, avg: p.avg_size as usize, max: p.max_size as usize, mask_s, mask_l, gear }
    }

    /// The largest chunk this chunker emits.
    pub fn max_size(&self) -> usize {
        self.max
    }

    /// Length of the chunk that starts at `buf[0]`, or `None` if more input is needed to know.
    /// `eof` says that `buf` holds all the remaining input. An empty buffer has no chunk.
    pub fn next_cut(&self, buf: &[u8], eof: bool) -> Option<usize> {
        if buf.is_empty() {
            return None;
        }
        let (ms, ml) = (self.mask_s, self.mask_l);
        let (_, cut) = match &self.gear {
            None => v2020::cut(buf, self.min, self.avg, self.max, ms, ml, ms << 1, ml << 1),
            Some(g) => {
                v2020::cut_gear(buf, self.min, self.avg, self.max, ms, ml, ms << 1, ml << 1, &g.table, &g.shifted)
            }
        };
        // A cut at the very end of a partial buffer only means "no cut point yet".
        if cut == buf.len() && !eof && buf.len() < self.max { None } else { Some(cut) }
    }

    /// All chunk lengths of a whole buffer.
    pub fn cuts(&self, mut buf: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some(n) = self.next_cut(buf, true) {
            out.push(n);
            buf = &buf[n..];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> Chunker {
        Chunker::new(ChunkerParams { min_size: 256, avg_size: 1024, max_size: 4096 })
    }

    /// Bytes from the workspace's seeded test generator (ChaCha8).
    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; n];
        rand::RngCore::fill_bytes(&mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed), &mut out);
        out
    }

    /// Feeding the input piecewise gives the same cuts as chunking it whole.
    fn streamed(c: &Chunker, data: &[u8], piece: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        loop {
            let eof = fed == data.len();
            match c.next_cut(&buf, eof) {
                Some(n) => {
                    out.push(n);
                    buf.drain(..n);
                }
                None if eof => break,
                None => {
                    let take = piece.min(data.len() - fed);
                    buf.extend_from_slice(&data[fed..fed + take]);
                    fed += take;
                }
            }
        }
        out
    }

    #[test]
    fn insertion_moves_few_cuts() {
        let c = small();
        let a = pseudo_random(200_000, 7);
        let mut b = a.clone();
        b.splice(100_000..100_000, pseudo_random(10, 9));
        let chunks = |d: &[u8]| {
            let mut pos = 0;
            c.cuts(d)
                .into_iter()
                .map(|n| {
                    pos += n;
                    blake3::hash(&d[pos - n..pos])
                })
                .collect::<std::collections::HashSet<_>>()
        };
        let (ca, cb) = (chunks(&a), chunks(&b));
        assert!(cb.difference(&ca).count() <= 3, "an insertion changed {} chunks", cb.difference(&ca).count());
    }

    proptest! {
        #[test]
        fn chunks_concatenate_and_respect_bounds(data in proptest::collection::vec(any::<u8>(), 0..20_000), seed in any::<u64>(), piece in 1usize..5000) {
            let c = small();
            let mut data = data;
            data.extend(pseudo_random((seed % 20_000) as usize, seed));
            let cuts = c.cuts(&data);
            prop_assert_eq!(cuts.iter().sum::<usize>(), data.len());
            for (i, &n) in cuts.iter().enumerate() {
                prop_assert!(n <= 4096);
                prop_assert!(n >= 256 || i + 1 == cuts.len(), "short chunk {} not last", n);
            }
            prop_assert_eq!(streamed(&c, &data, piece), cuts);
        }
    }
}
