//! Which container an image file is, by its content: qcow2, VMDK (sparse extent or text
//! descriptor) or raw; and the formats we recognise but do not read, named in the error.

use std::sync::Arc;

use super::{Error, ReadAt, Resolver, Result, qcow2, vmdk};

/// The container format of an image file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// The file is the disk.
    Raw,
    /// QEMU copy-on-write, version 2 or 3.
    Qcow2 { version: u32, backing: Option<Vec<u8>> },
    /// VMware: `create_type` as written in the descriptor (`monolithicSparse`, `streamOptimized`,
    /// `monolithicFlat`, `vmfs`, ...), or `sparse extent` for a bare sparse extent.
    Vmdk { create_type: String },
}

/// Backing chains deeper than this are taken for a loop.
pub(crate) const MAX_DEPTH: u32 = 16;

/// Open an image file as the virtual disk it holds.
pub fn open_disk(file: Arc<dyn ReadAt>, resolve: &Resolver<'_>) -> Result<(Format, Arc<dyn ReadAt>)> {
    open_at_depth(file, resolve, 0)
}

pub(crate) fn open_at_depth(
    file: Arc<dyn ReadAt>,
    resolve: &Resolver<'_>,
    depth: u32,
) -> Result<(Format, Arc<dyn ReadAt>)> {
    if depth > MAX_DEPTH {
        return Err(Error::corrupt("image", format!("a chain of more than {MAX_DEPTH} backing files")));
    }
    let mut head = vec![0u8; 1024.min(file.size()) as usize];
    super::io::read_exact_at(&*file, 0, &mut head, "image header")?;
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(b"QFI\xfb") {
        let q = qcow2::Qcow2::open(file, resolve, depth)?;
        let format = Format::Qcow2 { version: q.version(), backing: q.backing_name().map(<[u8]>::to_vec) };
        return Ok((format, Arc::new(q)));
    }
    if starts(b"KDMV") {
        let v = vmdk::Sparse::open(file)?;
        let create_type = v.embedded_create_type().unwrap_or_else(|| "sparse extent".into());
        return Ok((Format::Vmdk { create_type }, Arc::new(v)));
    }
    if vmdk::is_descriptor(&head) {
        let (create_type, disk) = vmdk::open_descriptor(&*file, resolve)?;
        return Ok((Format::Vmdk { create_type }, Arc::new(disk)));
    }
    let unsupported = |name: &str| Err(Error::Unsupported(format!("disk image format: {name}")));
    if starts(b"COWD") {
        return unsupported("VMDK vmfsSparse (COWD) extent");
    }
    if starts(b"vhdxfile") {
        return unsupported("VHDX");
    }
    if starts(b"conectix") {
        return unsupported("dynamic VHD");
    }
    if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        return unsupported("VirtualBox VDI");
    }
    if starts(b"LUKS\xba\xbe") {
        return unsupported("LUKS-encrypted disk");
    }
    Ok((Format::Raw, file))
}

/// Bytes of a file's start that [`looks_like_image`] wants.
pub const HEAD_LEN: usize = 8192;

/// Whether a file whose first bytes are `head` (up to [`HEAD_LEN`]) holds a disk image worth
/// opening: a qcow2 or VMDK header or descriptor, a filesystem this module reads at the start
/// (a raw whole-disk volume), or a partition table (a GPT header, or an MBR signature with
/// plausible entries). Cheap and conservative: what is shown as an image is opened later,
/// and an image that does not open shows its error.
pub fn looks_like_image(head: &[u8]) -> bool {
    if head.starts_with(b"QFI\xfb") || head.starts_with(b"KDMV") || vmdk::is_descriptor(head) {
        return true;
    }
    if matches!(super::fs::probe(head), Some(super::fs::Probe::Ext | super::fs::Probe::Ntfs | super::fs::Probe::Fat)) {
        return true;
    }
    if head.len() < 1024 || head[510..512] != [0x55, 0xaa] {
        return false;
    }
    if &head[512..520] == b"EFI PART" {
        return true;
    }
    // MBR: four 16-byte entries at 446, each unused or with a boot flag of 0 or 0x80.
    let entries: Vec<&[u8]> = head[446..510].chunks(16).collect();
    entries.iter().all(|e| e[0] == 0 || e[0] == 0x80) && entries.iter().any(|e| e[4] != 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Arbitrary bytes behind any of the recognised magics open, or fail with an error;
        /// reading what opened never panics.
        #[test]
        fn arbitrary_images_never_panic(
            magic in prop::sample::select(vec![&b"QFI\xfb"[..], b"KDMV", b"# Disk DescriptorFile\n", b""]),
            body in prop::collection::vec(any::<u8>(), 0..4096),
            version in 0u32..5,
            reads in prop::collection::vec((any::<u64>(), 0usize..70_000), 0..4),
        ) {
            let mut data = magic.to_vec();
            if magic == b"QFI\xfb" {
                data.extend_from_slice(&version.to_be_bytes());
            }
            data.extend_from_slice(&body);
            let resolve = |_: &[u8]| -> Option<Arc<dyn ReadAt>> { Some(Arc::new(vec![7u8; 4096])) };
            if let Ok((_, disk)) = open_disk(Arc::new(data), &resolve) {
                for (off, len) in reads {
                    let mut buf = vec![0; len];
                    let _ = disk.read_at(off % (disk.size() + 1), &mut buf);
                }
            }
        }
    }
}
