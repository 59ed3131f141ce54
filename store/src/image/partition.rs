//! Partition tables: GPT (`gpt` crate), MBR with extended and logical partitions (`mbrman`
//! crate), or none (a filesystem on the whole disk). Both crates read `Read + Seek`, given
//! through [`Cursor`], which fails every write.

use std::sync::Arc;

use super::io::{Cursor, Slice, read_exact_at};
use super::{Error, ReadAt, Result, fs, guarded};

/// The kind of partition table on a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionTable {
    /// No table: one volume spans the disk.
    None,
    /// An MS-DOS master boot record (primary partitions 1-4, logical partitions from 5).
    Mbr,
    /// A GUID partition table (partitions numbered by their entry, from 1).
    Gpt,
}

/// One partition (or the whole disk, number 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based number as Linux names it (`sda1`, and `sda5` for the first logical partition);
    /// 0 for a whole-disk volume.
    pub number: u32,
    /// First byte on the disk.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// The partition type: an MBR type byte (`0x83 Linux`) or a GPT type (`Linux filesystem`,
    /// or its GUID when unknown).
    pub type_name: String,
    /// The GPT partition name (empty for MBR).
    pub label: String,
}

impl Partition {
    /// The partition's bytes, or an error when the table puts it beyond the end of the disk.
    pub fn reader(&self, disk: &Arc<dyn ReadAt>) -> Result<Arc<dyn ReadAt>> {
        if self.number == 0 {
            return Ok(disk.clone());
        }
        Ok(Arc::new(Slice::new(disk.clone(), self.offset, self.size)?))
    }
}

/// Read a disk's partition table. A disk whose first sector is a filesystem's, or that has no
/// table at all, is one volume (number 0); a table that is there but damaged is an error.
pub fn read_partitions(disk: &Arc<dyn ReadAt>) -> Result<(PartitionTable, Vec<Partition>)> {
    let whole = || {
        let p =
            Partition { number: 0, offset: 0, size: disk.size(), type_name: "whole disk".into(), label: String::new() };
        Ok((PartitionTable::None, vec![p]))
    };
    let mut head = vec![0u8; 8192.min(disk.size()) as usize];
    read_exact_at(&**disk, 0, &mut head, "disk")?;
    if fs::probe(&head).is_some() {
        return whole();
    }
    let mbr_signed = head.len() >= 512 && head[510..512] == [0x55, 0xaa];
    let protective = mbr_signed && (0..4).any(|i| head[446 + 16 * i + 4] == 0xee);
    for lb in [512usize, 4096] {
        if head.len() >= lb + 8 && &head[lb..lb + 8] == b"EFI PART" {
            return gpt(disk, lb);
        }
    }
    if protective {
        // The primary header is gone; the gpt crate falls back to the backup header.
        return gpt(disk, 512);
    }
    if mbr_signed {
        return mbr(disk);
    }
    whole()
}

fn gpt(disk: &Arc<dyn ReadAt>, lb: usize) -> Result<(PartitionTable, Vec<Partition>)> {
    let size = if lb == 4096 { gpt::disk::LogicalBlockSize::Lb4096 } else { gpt::disk::LogicalBlockSize::Lb512 };
    let table = guarded("GPT partition table", || {
        gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(size)
            .open_from_device(Cursor::new(disk.clone()))
            .map_err(|e| Error::corrupt("GPT partition table", e))
    })?;
    let mut parts = Vec::new();
    for (&number, p) in table.partitions() {
        if p.part_type_guid == gpt::partition_types::UNUSED {
            continue;
        }
        let (first, last) = (p.first_lba, p.last_lba);
        if last < first {
            return Err(Error::corrupt("GPT partition table", format!("partition {number} ends before it starts")));
        }
        let lb = lb as u64;
        parts.push(Partition {
            number,
            offset: first.saturating_mul(lb),
            size: (last - first + 1).saturating_mul(lb),
            type_name: gpt_type_name(&p.part_type_guid.guid.to_string()),
            label: p.name.clone(),
        });
    }
    Ok((PartitionTable::Gpt, parts))
}

fn gpt_type_name(guid: &str) -> String {
    let name = match guid.to_ascii_uppercase().as_str() {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        _ => return guid.to_ascii_uppercase(),
    };
    name.into()
}

fn mbr(disk: &Arc<dyn ReadAt>) -> Result<(PartitionTable, Vec<Partition>)> {
    let table = guarded("MBR partition table", || {
        mbrman::MBR::read_from(&mut Cursor::new(disk.clone()), 512)
            .map_err(|e| Error::corrupt("MBR partition table", e))
    })?;
    let mut parts = Vec::new();
    let entry = |number: u32, e: &mbrman::MBRPartitionEntry| Partition {
        number,
        offset: u64::from(e.starting_lba) * 512,
        size: u64::from(e.sectors) * 512,
        type_name: mbr_type_name(e.sys),
        label: String::new(),
    };
    for (i, e) in table.header.iter() {
        if e.is_used() && !e.is_extended() {
            parts.push(entry(i as u32, e));
        }
    }
    for (i, l) in table.logical_partitions.iter().enumerate() {
        if l.partition.is_used() {
            parts.push(entry(5 + i as u32, &l.partition));
        }
    }
    if parts.is_empty() {
        return Err(Error::corrupt("MBR partition table", "it lists no partitions"));
    }
    Ok((PartitionTable::Mbr, parts))
}

fn mbr_type_name(sys: u8) -> String {
    let name = match sys {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0e => "FAT16",
        0x07 => "NTFS/exFAT",
        0x0b | 0x0c => "FAT32",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xfd => "Linux RAID",
        0xef => "EFI system",
        _ => "",
    };
    if name.is_empty() { format!("{sys:#04x}") } else { format!("{sys:#04x} {name}") }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An MBR with one primary partition and an extended one holding two logical partitions.
    fn mbr_disk() -> Vec<u8> {
        let mut d = vec![0u8; 64 << 10];
        let put = |d: &mut Vec<u8>, at: usize, sys: u8, start: u32, sectors: u32| {
            d[at + 4] = sys;
            d[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
            d[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
        };
        put(&mut d, 446, 0x83, 2, 10);
        put(&mut d, 462, 0x05, 20, 100);
        d[510] = 0x55;
        d[511] = 0xaa;
        // First EBR at sector 20: a logical partition at +2, the next EBR at +40.
        let ebr = 20 * 512;
        put(&mut d, ebr + 446, 0x83, 2, 8);
        put(&mut d, ebr + 462, 0x05, 40, 20);
        d[ebr + 510] = 0x55;
        d[ebr + 511] = 0xaa;
        let ebr2 = 60 * 512;
        put(&mut d, ebr2 + 446, 0x0c, 2, 6);
        d[ebr2 + 510] = 0x55;
        d[ebr2 + 511] = 0xaa;
        d
    }

    #[test]
    fn logical_partitions_are_numbered_from_five() {
        let disk: Arc<dyn ReadAt> = Arc::new(mbr_disk());
        let (table, parts) = read_partitions(&disk).unwrap();
        assert_eq!(table, PartitionTable::Mbr);
        let got: Vec<_> = parts.iter().map(|p| (p.number, p.offset / 512, p.size / 512)).collect();
        assert_eq!(got, vec![(1, 2, 10), (5, 22, 8), (6, 62, 6)]);
    }

    proptest! {
        /// A table with random bytes changed reads, or fails with an error; never a panic.
        #[test]
        fn damaged_tables_never_panic(flips in prop::collection::vec((0usize..32_768, any::<u8>()), 1..12)) {
            let mut d = mbr_disk();
            for (at, v) in flips {
                d[at] = v;
            }
            let disk: Arc<dyn ReadAt> = Arc::new(d);
            if let Ok((_, parts)) = read_partitions(&disk) {
                for p in parts {
                    let _ = p.reader(&disk);
                }
            }
        }
    }
}
