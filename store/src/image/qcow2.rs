//! QEMU's qcow2 format, versions 2 and 3, read-only: a two-level table (L1 -> L2 -> cluster)
//! maps each guest cluster to a host cluster, a compressed cluster, zeros, or the backing file.
//!
//! No crate fits: `qcow2-rs` is async on io_uring, `qcow2` 0.1 wants `Read + Seek` and has no
//! compressed clusters. The format is `docs/interop/qcow2.txt` of QEMU. Read: the active L1
//! table (internal snapshots are ignored), standard and zero clusters, deflate and (v3
//! `compression_type`) zstd compressed clusters, backing files through the resolver.
//! Refused, by name: encryption, external data files, extended L2 entries (subclusters).

use std::io::Read;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::detect::open_at_depth;
use super::io::{Piece, read_exact_at, read_mapped};
use super::{Error, ReadAt, Resolver, Result};

/// Bits 9..55 of an L1 entry, an L2 entry, or a refcount entry: a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;

const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// L2 tables kept decoded (each is one cluster: 8192 entries at 64 KiB clusters, mapping 512 MiB).
const L2_CACHE: usize = 64;
/// Decompressed clusters kept, so sequential small reads decompress each once.
const CLUSTER_CACHE: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Compression {
    Deflate,
    Zstd,
}

/// Where a guest cluster's bytes are.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    Zeros,
    Backing,
    Host(u64),
    Compressed { offset: u64, len: u64 },
}

/// An open qcow2 image: the [`ReadAt`] of its virtual disk.
pub(crate) struct Qcow2 {
    file: Arc<dyn ReadAt>,
    version: u32,
    size: u64,
    cluster_bits: u32,
    l1: Vec<u64>,
    compression: Compression,
    backing_name: Option<Vec<u8>>,
    backing: Option<Arc<dyn ReadAt>>,
    l2_cache: Mutex<LruCache<u64, Arc<Vec<u64>>>>,
    clusters: Mutex<LruCache<u64, Arc<Vec<u8>>>>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn corrupt(detail: impl std::fmt::Display) -> Error {
    Error::corrupt("qcow2 image", detail)
}

impl Qcow2 {
    pub(crate) fn open(file: Arc<dyn ReadAt>, resolve: &Resolver<'_>, depth: u32) -> Result<Qcow2> {
        let mut h = [0u8; 112];
        let n = file.read_at(0, &mut h)?;
        if n < 72 {
            return Err(corrupt("the header is truncated"));
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!("qcow2 version {version}")));
        }
        let backing_offset = be64(&h, 8);
        let backing_len = be32(&h, 16);
        let cluster_bits = be32(&h, 20);
        let size = be64(&h, 24);
        let crypt = be32(&h, 32);
        let l1_size = be32(&h, 36);
        let l1_offset = be64(&h, 40);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!("cluster_bits {cluster_bits} is outside 9..=21")));
        }
        if crypt != 0 {
            return Err(Error::Unsupported("encrypted qcow2 image".into()));
        }
        if size > 1 << 56 {
            return Err(corrupt(format!("virtual size {size} is absurd")));
        }
        let mut compression = Compression::Deflate;
        if version == 3 {
            if n < 104 {
                return Err(corrupt("the version 3 header is truncated"));
            }
            let incompat = be64(&h, 72);
            let header_len = be32(&h, 100);
            if incompat & INCOMPAT_DATA_FILE != 0 {
                return Err(Error::Unsupported("qcow2 image with an external data file".into()));
            }
            if incompat & INCOMPAT_EXTL2 != 0 {
                return Err(Error::Unsupported("qcow2 image with extended L2 entries (subclusters)".into()));
            }
            let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION;
            if incompat & !known != 0 {
                return Err(Error::Unsupported(format!("qcow2 incompatible features {:#x}", incompat & !known)));
            }
            if incompat & INCOMPAT_COMPRESSION != 0 {
                if header_len <= 104 || n < 105 {
                    return Err(corrupt("the compression type is flagged but not in the header"));
                }
                compression = match h[104] {
                    0 => Compression::Deflate,
                    1 => Compression::Zstd,
                    t => return Err(Error::Unsupported(format!("qcow2 compression type {t}"))),
                };
            }
        }
        let cluster = 1u64 << cluster_bits;
        let l2_entries = cluster / 8;
        let needed = size.div_ceil(cluster).div_ceil(l2_entries);
        if u64::from(l1_size) < needed {
            return Err(corrupt(format!("the L1 table has {l1_size} entries, the disk needs {needed}")));
        }
        // The table is read whole (8 bytes per 512 MiB of disk at 64 KiB clusters); only the
        // entries the disk needs.
        if needed * 8 > file.size() {
            return Err(corrupt(format!("an L1 table of {needed} entries is larger than the file")));
        }
        let mut raw = vec![0u8; needed as usize * 8];
        read_exact_at(&*file, l1_offset, &mut raw, "qcow2 L1 table")?;
        let l1 = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect();

        let (backing_name, backing) = if backing_offset != 0 {
            if backing_len == 0 || backing_len > 1023 {
                return Err(corrupt(format!("backing file name of {backing_len} bytes")));
            }
            let mut name = vec![0u8; backing_len as usize];
            read_exact_at(&*file, backing_offset, &mut name, "qcow2 backing file name")?;
            let Some(bfile) = resolve(&name) else {
                return Err(Error::Missing(String::from_utf8_lossy(&name).into_owned()));
            };
            let (_, disk) = open_at_depth(bfile, resolve, depth + 1)?;
            (Some(name), Some(disk))
        } else {
            (None, None)
        };
        Ok(Qcow2 {
            file,
            version,
            size,
            cluster_bits,
            l1,
            compression,
            backing_name,
            backing,
            l2_cache: Mutex::new(LruCache::new(NonZeroUsize::new(L2_CACHE).expect("nonzero"))),
            clusters: Mutex::new(LruCache::new(NonZeroUsize::new(CLUSTER_CACHE).expect("nonzero"))),
        })
    }

    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    pub(crate) fn backing_name(&self) -> Option<&[u8]> {
        self.backing_name.as_deref()
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_table(&self, offset: u64) -> Result<Arc<Vec<u64>>> {
        if let Some(t) = self.l2_cache.lock().unwrap_or_else(|e| e.into_inner()).get(&offset) {
            return Ok(t.clone());
        }
        if offset & (self.cluster_size() - 1) != 0 {
            return Err(corrupt(format!("L2 table offset {offset:#x} is not cluster-aligned")));
        }
        let mut raw = vec![0u8; self.cluster_size() as usize];
        read_exact_at(&*self.file, offset, &mut raw, "qcow2 L2 table")?;
        let table: Arc<Vec<u64>> =
            Arc::new(raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect());
        self.l2_cache.lock().unwrap_or_else(|e| e.into_inner()).put(offset, table.clone());
        Ok(table)
    }

    fn unallocated(&self) -> Place {
        if self.backing.is_some() { Place::Backing } else { Place::Zeros }
    }

    /// Where guest cluster `index` lives.
    fn place(&self, index: u64) -> Result<Place> {
        let l2_bits = self.cluster_bits - 3;
        let l1e = self.l1[(index >> l2_bits) as usize];
        let l2_offset = l1e & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(self.unallocated());
        }
        let e = self.l2_table(l2_offset)?[(index & ((1 << l2_bits) - 1)) as usize];
        if e & COMPRESSED != 0 {
            // Bits 0..x are the host offset, x..62 the count of further 512-byte sectors.
            let x = 62 - (self.cluster_bits - 8);
            let offset = e & ((1 << x) - 1);
            let sectors = ((e >> x) & ((1 << (self.cluster_bits - 8)) - 1)) + 1;
            let len = sectors * 512 - (offset & 511);
            return Ok(Place::Compressed { offset, len });
        }
        if e & ZERO != 0 {
            return Ok(Place::Zeros);
        }
        let host = e & OFFSET_MASK;
        if host == 0 {
            return Ok(self.unallocated());
        }
        if host & (self.cluster_size() - 1) != 0 {
            return Err(corrupt(format!("cluster offset {host:#x} is not cluster-aligned")));
        }
        Ok(Place::Host(host))
    }

    fn decompressed(&self, offset: u64, len: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(c) = self.clusters.lock().unwrap_or_else(|e| e.into_inner()).get(&offset) {
            return Ok(c.clone());
        }
        // The last compressed cluster may end before its last sector does.
        let len = len.min(self.file.size().saturating_sub(offset));
        let mut input = vec![0u8; len as usize];
        read_exact_at(&*self.file, offset, &mut input, "qcow2 compressed cluster")?;
        let mut out = vec![0u8; self.cluster_size() as usize];
        let bad = |e: &dyn std::fmt::Display| corrupt(format!("compressed cluster at {offset:#x}: {e}"));
        match self.compression {
            Compression::Deflate => {
                let mut d = flate2::Decompress::new(false);
                d.decompress(&input, &mut out, flate2::FlushDecompress::Finish).map_err(|e| bad(&e))?;
                if d.total_out() != out.len() as u64 {
                    return Err(bad(&format!("inflates to {} bytes, not a cluster", d.total_out())));
                }
            }
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(&input[..]).map_err(|e| bad(&e))?.single_frame();
                d.read_exact(&mut out).map_err(|e| bad(&e))?;
            }
        }
        let out = Arc::new(out);
        self.clusters.lock().unwrap_or_else(|e| e.into_inner()).put(offset, out.clone());
        Ok(out)
    }

    fn piece(&self, index: u64) -> Result<Piece> {
        Ok(match self.place(index)? {
            Place::Zeros => Piece::Zeros,
            Place::Backing => Piece::Below(self.backing.clone().expect("Backing only with a backing file")),
            Place::Host(host) => Piece::Host(host),
            Place::Compressed { offset, len } => Piece::Decoded(self.decompressed(offset, len)?),
        })
    }
}

impl ReadAt for Qcow2 {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        read_mapped(&*self.file, self.size, self.cluster_size(), "qcow2 data cluster", offset, buf, |i| self.piece(i))
            .map_err(into_io)
    }
}

/// Errors cross [`ReadAt`] as `io::Error`; an error from below passes through as it was.
pub(crate) fn into_io(e: Error) -> std::io::Error {
    match e {
        Error::Io(e) => e,
        e => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::image::no_resolver;

    /// A small qcow2 v3 image made by hand: 512-byte clusters, `clusters` guest clusters, every
    /// third cluster allocated with a pattern, every fifth a zero cluster.
    fn tiny(clusters: u64) -> (Vec<u8>, Vec<u8>) {
        let cs = 512u64;
        let size = clusters * cs;
        let l2_entries = cs / 8;
        let l1_entries = clusters.div_ceil(l2_entries);
        let mut img = vec![0u8; 512];
        img[..4].copy_from_slice(b"QFI\xfb");
        img[4..8].copy_from_slice(&3u32.to_be_bytes());
        img[20..24].copy_from_slice(&9u32.to_be_bytes());
        img[24..32].copy_from_slice(&size.to_be_bytes());
        img[36..40].copy_from_slice(&(l1_entries as u32).to_be_bytes());
        img[40..48].copy_from_slice(&512u64.to_be_bytes());
        img[100..104].copy_from_slice(&104u32.to_be_bytes());
        let l1_at = img.len();
        img.resize(l1_at + 512, 0);
        let mut guest = vec![0u8; size as usize];
        for l1i in 0..l1_entries {
            let l2_at = img.len() as u64;
            img[l1_at + l1i as usize * 8..][..8].copy_from_slice(&(l2_at | 1 << 63).to_be_bytes());
            img.resize(img.len() + 512, 0);
            for l2i in 0..l2_entries {
                let c = l1i * l2_entries + l2i;
                if c >= clusters {
                    break;
                }
                let entry = if c.is_multiple_of(3) {
                    let at = img.len() as u64;
                    let data: Vec<u8> = (0..cs).map(|i| (c * 31 + i) as u8).collect();
                    guest[(c * cs) as usize..][..cs as usize].copy_from_slice(&data);
                    img.extend_from_slice(&data);
                    at
                } else if c.is_multiple_of(5) {
                    ZERO
                } else {
                    0
                };
                img[(l2_at + l2i * 8) as usize..][..8].copy_from_slice(&entry.to_be_bytes());
            }
        }
        (img, guest)
    }

    #[test]
    fn a_hand_made_image_reads_back() {
        let (img, guest) = tiny(200);
        let q = Qcow2::open(Arc::new(img), &no_resolver, 0).unwrap();
        assert_eq!(q.size(), guest.len() as u64);
        let mut out = vec![0u8; guest.len()];
        assert_eq!(q.read_at(0, &mut out).unwrap(), guest.len());
        assert_eq!(out, guest);
        let mut part = vec![0u8; 1000];
        assert_eq!(q.read_at(1300, &mut part).unwrap(), 1000);
        assert_eq!(part, guest[1300..2300]);
    }

    proptest! {
        /// A valid image with random bytes changed opens and reads, or fails with an error;
        /// never a panic.
        #[test]
        fn damaged_images_never_panic(
            flips in prop::collection::vec((0usize..4096, any::<u8>()), 1..8),
            reads in prop::collection::vec((0u64..110_000, 0usize..5000), 1..4),
        ) {
            let (mut img, _) = tiny(200);
            for (at, v) in flips {
                let at = at % img.len();
                img[at] = v;
            }
            if let Ok(q) = Qcow2::open(Arc::new(img), &no_resolver, 0) {
                for (off, len) in reads {
                    let mut buf = vec![0u8; len];
                    let _ = q.read_at(off, &mut buf);
                }
            }
        }
    }
}
