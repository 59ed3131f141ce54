//! Files inside disk images, read through `rewind_store::image`, against images built here with
//! the real tools: ext4 in a GPT partition, FAT32 + NTFS + ext2 in an MBR with logical
//! partitions, whole-disk FAT, each converted by `qemu-img` to qcow2 (plain, compressed) and
//! VMDK (monolithicSparse, streamOptimized, monolithicFlat); random disks through every format
//! qemu-img writes; backing files, ESX descriptors, damaged blocks, damaged tables and
//! superblocks. Every tool must be installed (scripts/test.sh installs them); none is skipped.

mod image_tools;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use image_tools::*;
use proptest::prelude::*;
use rewind_store::image::{
    self, Error, FileSystem, Format, FsKind, Image, Kind, PartitionTable, ReadAt, no_resolver, open_disk,
};

/// Source trees and raw disks, built once for the whole test binary.
struct Fixtures {
    unix: PathBuf,
    ntfs: PathBuf,
    fat: PathBuf,
    /// The ext4 filesystem image that is partition 1 of `gpt`.
    ext4: PathBuf,
    /// GPT: p1 ext4 (`unix`), p2 nothing.
    gpt: PathBuf,
    gpt_p1: u64,
    /// MBR: p1 FAT32 (`fat`), extended: p5 NTFS (`ntfs`), p6 ext2 (`unix`).
    mbr: PathBuf,
    mbr_parts: Vec<u64>,
    /// The NTFS filesystem image that is partition 5 of `mbr`.
    ntfs_img: PathBuf,
    /// FAT16 on the whole disk, no table.
    fat16: PathBuf,
    /// Small filesystems of a small tree, for damaging: ext4, FAT16, NTFS.
    small: Vec<(FsKind, Vec<u8>)>,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        // Under target/tmp, rebuilt by each run (a static is never dropped, so no TempDir).
        // Left-overs of earlier runs go, but only those whose process is gone: a suite running
        // at the same time in this target directory is still reading its own.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for old in fs::read_dir(root).into_iter().flatten().flatten() {
            let name = old.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("image-fixtures-") else { continue };
            if !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(old.path());
            }
        }
        let dir = root.join(format!("image-fixtures-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (unix, ntfs, fat) = (dir.join("src-unix"), dir.join("src-ntfs"), dir.join("src-fat"));
        corpus(&unix, Flavour::Unix);
        corpus(&ntfs, Flavour::Ntfs);
        corpus(&fat, Flavour::Fat);

        let ext4 = ext4_fs(&dir, &unix, 40, false);
        let gpt = dir.join("gpt.raw");
        sparse_file(&gpt, 64 << 20);
        run(
            "sgdisk",
            &[&"-n", &"1:2048:+40M", &"-t", &"1:8300", &"-c", &"1:root", &"-n", &"2:0:+8M", &"-t", &"2:0700", &gpt],
        );
        let gpt_p1 = 2048 * 512;
        place(&gpt, &[(gpt_p1, &ext4)]);

        let fat32 = {
            let img = dir.join("fat32.fs");
            sparse_file(&img, 40 << 20);
            run("mkfs.vfat", &[&"-F", &"32", &"-s", &"1", &"-n", &"DATA", &img]);
            let image = img.display().to_string();
            let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-s", &"-m", &"-Q", &"-i", &image];
            let entries: Vec<PathBuf> = {
                let mut e: Vec<_> = fs::read_dir(&fat).unwrap().map(|e| e.unwrap().path()).collect();
                e.sort();
                e
            };
            for e in &entries {
                args.push(e);
            }
            args.push(&"::/");
            run("mcopy", &args);
            img
        };
        let ntfs_img = ntfs_fs(&dir, &ntfs, 40);
        let ext2 = ext4_fs(&dir, &unix, 24, true);
        let mbr = dir.join("mbr.raw");
        sparse_file(&mbr, 128 << 20);
        let script = "label: dos\nstart=2048, size=40MiB, type=c\ntype=5\nsize=40MiB, type=7\nsize=24MiB, type=83\n";
        sfdisk(&mbr, script);
        let json: serde_json::Value = serde_json::from_str(&run("sfdisk", &[&"-J", &mbr])).unwrap();
        let starts: Vec<u64> = json["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["start"].as_u64().unwrap() * 512)
            .collect();
        // p1, p2 (extended), p5, p6
        assert_eq!(starts.len(), 4, "{json}");
        let mbr_parts = vec![starts[0], starts[2], starts[3]];
        place(&mbr, &[(mbr_parts[0], &fat32), (mbr_parts[1], &ntfs_img), (mbr_parts[2], &ext2)]);

        let fat16 = fat_fs(&dir, &fat, 32, 16);

        let tiny = dir.join("src-tiny");
        fs::create_dir_all(tiny.join("a/b")).unwrap();
        for i in 0..40 {
            fs::write(tiny.join(format!("a/f{i}.txt")), random_bytes(i, (i as usize * 977) % 20_000)).unwrap();
        }
        fs::write(tiny.join("a/b/big.bin"), random_bytes(99, 300_000)).unwrap();
        let small_dir = dir.join("small");
        fs::create_dir_all(&small_dir).unwrap();
        let small = vec![
            (FsKind::Ext, fs::read(ext4_fs(&small_dir, &tiny, 8, false)).unwrap()),
            (FsKind::Fat, fs::read(fat_fs(&small_dir, &tiny, 16, 16)).unwrap()),
            (FsKind::Ntfs, fs::read(ntfs_fs(&small_dir, &tiny, 8)).unwrap()),
        ];
        Fixtures { unix, ntfs, fat, ext4, gpt, gpt_p1, mbr, mbr_parts, ntfs_img, fat16, small }
    })
}

fn workdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn open_image(path: &Path) -> Image {
    let dir = path.parent().unwrap();
    Image::open(open_file(path), &resolver(dir)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fs_of(img: &Image, i: usize) -> Arc<dyn FileSystem> {
    match &img.volumes[i].filesystem {
        Ok(fs) => fs.clone(),
        Err(e) => panic!("volume {i}: {e}"),
    }
}

fn check_gpt_image(img: &Image) {
    let f = fixtures();
    assert_eq!(img.table, PartitionTable::Gpt);
    assert_eq!(img.volumes.len(), 2, "{:?}", img.volumes);
    let p1 = &img.volumes[0].partition;
    assert_eq!((p1.number, p1.offset, p1.size), (1, f.gpt_p1, 40 << 20));
    assert_eq!((p1.type_name.as_str(), p1.label.as_str()), ("Linux filesystem", "root"));
    let fs = fs_of(img, 0);
    assert_eq!(fs.kind(), FsKind::Ext);
    verify(&*fs, &f.unix, Flavour::Unix);
    let err = img.volumes[1].filesystem.as_ref().err().expect("p2 holds no filesystem");
    assert!(err.to_string().contains("no filesystem"), "{err}");
    assert_eq!(img.volumes[1].partition.type_name, "Microsoft basic data");
}

#[test]
fn ext4_in_a_gpt_partition_in_every_format() {
    let f = fixtures();
    let work = workdir();
    check_gpt_image(&open_image(&f.gpt));
    for t in [QCOW2, QCOW2_DEFLATE, VMDK_SPARSE, VMDK_STREAM, VMDK_FLAT] {
        let path = convert(&f.gpt, work.path(), t);
        let img = open_image(&path);
        match (&img.format, t.format) {
            (Format::Qcow2 { version: 3, backing: None }, "qcow2") => {}
            (Format::Vmdk { create_type }, "vmdk") => assert_eq!(create_type, &t.options["subformat=".len()..]),
            (other, _) => panic!("{}: detected as {other:?}", t.name),
        }
        check_gpt_image(&img);
    }
}

#[test]
fn fat_ntfs_and_ext2_in_an_mbr_with_logical_partitions() {
    let f = fixtures();
    let work = workdir();
    for t in [None, Some(QCOW2_DEFLATE), Some(VMDK_STREAM)] {
        let path = t.map_or(f.mbr.clone(), |t| convert(&f.mbr, work.path(), t));
        let img = open_image(&path);
        assert_eq!(img.table, PartitionTable::Mbr);
        let got: Vec<_> = img.volumes.iter().map(|v| (v.partition.number, v.partition.offset)).collect();
        assert_eq!(got, vec![(1, f.mbr_parts[0]), (5, f.mbr_parts[1]), (6, f.mbr_parts[2])]);
        let kinds: Vec<_> = (0..3).map(|i| fs_of(&img, i).kind()).collect();
        assert_eq!(kinds, vec![FsKind::Fat, FsKind::Ntfs, FsKind::Ext]);
        verify(&*fs_of(&img, 0), &f.fat, Flavour::Fat);
        verify(&*fs_of(&img, 1), &f.ntfs, Flavour::Ntfs);
        verify(&*fs_of(&img, 2), &f.unix, Flavour::Unix);
        // Owners and ACLs: the descriptors equal what ntfs-3g shows.
        for (rel, want) in ntfs_descriptors(work.path(), &f.ntfs_img, &f.ntfs) {
            let got = fs_of(&img, 1).security_descriptor(rel.as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(got.as_ref(), Some(&want), "security descriptor of /{}", rel.display());
        }
        assert_eq!(fs_of(&img, 2).security_descriptor(b"hello.txt").unwrap(), None);
    }
    // ntfs-3g maps uid 0 to the Administrators group and other uids to SIDs of their own.
    let img = open_image(&f.mbr);
    let ntfs = fs_of(&img, 1);
    let owner = |p: &[u8]| image::owner_sid(&ntfs.security_descriptor(p).unwrap().unwrap()).unwrap();
    assert_eq!(owner(b""), "S-1-5-32-544");
    assert_eq!(owner(b"hello.txt"), "S-1-5-32-544");
    let secret = owner(b"secret.txt");
    assert!(secret.starts_with("S-1-5-21-"), "{secret}");
}

#[test]
fn filesystems_on_a_whole_disk() {
    let f = fixtures();
    for (path, kind, src, flavour) in
        [(&f.fat16, FsKind::Fat, &f.fat, Flavour::Fat), (&f.ext4, FsKind::Ext, &f.unix, Flavour::Unix)]
    {
        let img = open_image(path);
        assert_eq!((img.table, img.format.clone()), (PartitionTable::None, Format::Raw));
        assert_eq!(img.volumes.len(), 1);
        assert_eq!(
            (img.volumes[0].partition.number, img.volumes[0].partition.size),
            (0, fs::metadata(path).unwrap().len())
        );
        let fs = fs_of(&img, 0);
        assert_eq!(fs.kind(), kind);
        verify(&*fs, src, flavour);
    }
    // FAT12, small.
    let work = workdir();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("A.TXT"), b"twelve bits\n").unwrap();
    fs::write(src.join("sub/data.bin"), random_bytes(9, 100_000)).unwrap();
    for p in walk(&src) {
        set_times(&src.join(p), 1_500_000_000);
    }
    let fat12 = fat_fs(work.path(), &src, 2, 12);
    let img = open_image(&fat12);
    let fs = fs_of(&img, 0);
    verify(&*fs, &src, Flavour::Fat);
}

fn set_times(path: &Path, secs: i64) {
    let f = fs::File::options().write(true).open(path).or_else(|_| fs::File::open(path)).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
}

#[test]
fn an_esx_descriptor_and_its_flat_extent() {
    let f = fixtures();
    let work = workdir();
    fs::hard_link(&f.gpt, work.path().join("vm1-flat.vmdk")).unwrap();
    let sectors = fs::metadata(&f.gpt).unwrap().len() / 512;
    let descriptor = format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=3a1c5d2e\nparentCID=ffffffff\n\
         createType=\"vmfs\"\n\n# Extent description\nRW {sectors} VMFS \"vm1-flat.vmdk\"\n\n\
         # The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"13\"\n"
    );
    let path = work.path().join("vm1.vmdk");
    fs::write(&path, descriptor).unwrap();
    let img = open_image(&path);
    assert_eq!(img.format, Format::Vmdk { create_type: "vmfs".into() });
    check_gpt_image(&img);

    fs::remove_file(work.path().join("vm1-flat.vmdk")).unwrap();
    let err = Image::open(open_file(&path), &resolver(work.path())).err().unwrap();
    assert!(matches!(&err, Error::Missing(name) if name == "vm1-flat.vmdk"), "{err}");
}

#[test]
fn a_qcow2_overlay_reads_through_its_backing_file() {
    let f = fixtures();
    let work = workdir();
    let base = convert(&f.gpt, work.path(), QCOW2);
    let overlay = work.path().join("overlay.qcow2");
    run("qemu-img", &[&"create", &"-q", &"-f", &"qcow2", &"-b", &"qcow2.qcow2", &"-F", &"qcow2", &overlay]);
    // Zeros written over data of the base: a zero cluster, which must not read the base.
    let blocks = run("debugfs", &[&"-R", &"blocks /big.bin", &f.ext4]);
    let block: u64 = blocks.split_whitespace().nth(40).unwrap().parse().unwrap();
    let zeroed = (f.gpt_p1 + block * 4096) / 65536 * 65536;
    let base_there = fs::read(&f.gpt).unwrap()[zeroed as usize..][..65536].to_vec();
    assert!(base_there.iter().any(|&b| b != 0), "the base has data where the overlay writes zeros");
    let zero = format!("write -z {zeroed} 64k");
    run("qemu-io", &[&"-c", &"write -P 0x5a 1000k 300k", &"-c", &zero, &"-c", &"discard 5M 128k", &overlay]);
    let expected = work.path().join("expected.raw");
    run("qemu-img", &[&"convert", &"-O", &"raw", &overlay, &expected]);
    let (format, disk) = open_disk(open_file(&overlay), &resolver(work.path())).unwrap();
    assert_eq!(format, Format::Qcow2 { version: 3, backing: Some(b"qcow2.qcow2".to_vec()) });
    let want = fs::read(&expected).unwrap();
    let mut got = vec![0u8; want.len()];
    assert_eq!(disk.read_at(0, &mut got).unwrap(), want.len());
    assert!(got == want, "the overlay reads as qemu-img converts it");
    assert!(want[zeroed as usize..][..65536].iter().all(|&b| b == 0));

    fs::remove_file(&base).unwrap();
    let err = open_disk(open_file(&overlay), &resolver(work.path())).err().unwrap();
    assert!(matches!(&err, Error::Missing(name) if name == "qcow2.qcow2"), "{err}");
}

#[test]
fn ntfs_compressed_files_are_refused_not_misread() {
    let work = workdir();
    let img = work.path().join("c.ntfs");
    sparse_file(&img, 8 << 20);
    run("mkntfs", &[&"-F", &"-Q", &"-q", &img]);
    let mnt = work.path().join("m");
    fs::create_dir_all(&mnt).unwrap();
    run("ntfs-3g", &[&"-o", &"compression", &img, &mnt]);
    let written = (|| {
        fs::create_dir(mnt.join("z"))?;
        // The compressed attribute on a directory: what is created inside is compressed.
        xattr::set(mnt.join("z"), "system.ntfs_attrib_be", &0x800u32.to_be_bytes())?;
        fs::write(mnt.join("z/c.txt"), "compress me ".repeat(20_000))?;
        fs::write(mnt.join("plain.txt"), b"plain")
    })();
    run("fusermount3", &[&"-u", &mnt]);
    written.unwrap();
    let image = open_image(&img);
    let fs = fs_of(&image, 0);
    assert_eq!(fs.stat(b"z/c.txt").unwrap().size, 240_000);
    let err = fs.read_at(b"z/c.txt", 0, &mut [0u8; 100]).unwrap_err();
    assert!(matches!(&err, Error::Unsupported(m) if m.contains("compressed")), "{err}");
    assert_eq!(read_all(&*fs, b"plain.txt", 5).unwrap(), b"plain");
}

/// Guest offset -> host offset of a qcow2 image, from `qemu-img map`.
fn host_offset(image: &Path, guest: u64) -> u64 {
    let map: serde_json::Value = serde_json::from_str(&run("qemu-img", &[&"map", &"--output=json", &image])).unwrap();
    for e in map.as_array().unwrap() {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        if (start..start + len).contains(&guest) {
            let offset = e["offset"].as_u64().expect("the block is allocated");
            return offset + (guest - start);
        }
    }
    panic!("{guest} is not mapped");
}

#[test]
fn damaged_blocks_fail_only_the_files_on_them() {
    let f = fixtures();
    let work = workdir();
    let blocks = run("debugfs", &[&"-R", &"blocks /docs/report.docx", &f.ext4]);
    let block: u64 = blocks.split_whitespace().nth(10).unwrap().parse().unwrap();
    let guest = f.gpt_p1 + block * 4096;
    let qcow2 = convert(&f.gpt, work.path(), QCOW2);
    let host = host_offset(&qcow2, guest);
    let damaged: Arc<dyn ReadAt> = Arc::new(Damaged { inner: open_file(&qcow2), bad: host..host + 4096 });
    let img = Image::open(damaged, &no_resolver).unwrap();
    let fs = fs_of(&img, 0);
    let mut failed = Vec::new();
    for rel in walk(&f.unix) {
        let path = rel.as_os_str().as_encoded_bytes();
        let st = fs.stat(path).unwrap();
        if st.kind != Kind::File {
            continue;
        }
        match read_all(&*fs, path, st.size) {
            Ok(data) => assert!(data == fs::read(f.unix.join(&rel)).unwrap(), "{}", rel.display()),
            Err(e) => {
                assert!(matches!(e, Error::Io(_)), "{}: {e}", rel.display());
                failed.push(rel.display().to_string());
            }
        }
    }
    // The report and its hard link are one file.
    assert_eq!(failed, vec!["docs/report.docx", "report-link.docx"]);
}

#[test]
fn damaged_tables_and_superblocks_are_clear_errors() {
    let f = fixtures();
    let work = workdir();
    // A GPT with both headers damaged.
    let gpt = work.path().join("gpt.raw");
    fs::copy(&f.gpt, &gpt).unwrap();
    let size = fs::metadata(&gpt).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&gpt).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"XXXX", 512 + 16).unwrap();
    file.write_all_at(b"XXXX", size - 512 + 16).unwrap();
    let err = Image::open(open_file(&gpt), &no_resolver).err().expect("a damaged GPT");
    assert!(err.is_corrupt() && err.to_string().contains("GPT"), "{err}");

    // The MBR disk with its NTFS boot sector and ext2 superblock damaged: those two volumes are
    // errors that say so, the FAT volume still reads.
    let mbr = work.path().join("mbr.raw");
    fs::copy(&f.mbr, &mbr).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&mbr).unwrap();
    file.write_all_at(&[0x00, 0x03], f.mbr_parts[1] + 11).unwrap(); // 768-byte sectors
    file.write_all_at(&[0xff; 4], f.mbr_parts[2] + 1024 + 24).unwrap(); // log block size
    let img = open_image(&mbr);
    verify(&*fs_of(&img, 0), &f.fat, Flavour::Fat);
    let ntfs = img.volumes[1].filesystem.as_ref().err().expect("damaged NTFS").to_string();
    assert!(ntfs.contains("NTFS"), "{ntfs}");
    let ext = img.volumes[2].filesystem.as_ref().err().expect("damaged ext2").to_string();
    assert!(ext.contains("ext"), "{ext}");

    // Formats we recognise but do not read.
    for (magic, name) in [(&b"vhdxfile"[..], "VHDX"), (b"conectix", "VHD"), (b"COWD", "COWD")] {
        let mut data = magic.to_vec();
        data.resize(4096, 0);
        let err = open_disk(Arc::new(data), &no_resolver).err().unwrap();
        assert!(matches!(err, Error::Unsupported(_)) && err.to_string().contains(name), "{err}");
    }
    // An exFAT volume is named, not mistaken for anything.
    let mut exfat = vec![0u8; 1 << 20];
    exfat[3..11].copy_from_slice(b"EXFAT   ");
    exfat[510..512].copy_from_slice(&[0x55, 0xaa]);
    let img = Image::open(Arc::new(exfat), &no_resolver).unwrap();
    let err = img.volumes[0].filesystem.as_ref().err().unwrap().to_string();
    assert!(err.contains("exFAT"), "{err}");
}

#[test]
fn many_threads_read_one_filesystem_at_once() {
    let f = fixtures();
    let gpt = open_image(&f.gpt);
    let mbr = open_image(&f.mbr);
    let cases: Vec<(Arc<dyn FileSystem>, PathBuf)> =
        vec![(fs_of(&gpt, 0), f.unix.clone()), (fs_of(&mbr, 0), f.fat.clone()), (fs_of(&mbr, 1), f.ntfs.clone())];
    std::thread::scope(|s| {
        for (fs, src) in &cases {
            for t in 0..6 {
                s.spawn(move || {
                    let mut files: Vec<_> = walk(src)
                        .into_iter()
                        .filter(|p| fs::symlink_metadata(src.join(p)).unwrap().is_file())
                        .collect();
                    let shift = t * 7 % files.len();
                    files.rotate_left(shift);
                    for rel in files {
                        let path = rel.as_os_str().as_encoded_bytes();
                        let st = fs.stat(path).unwrap();
                        let data = read_all(&**fs, path, st.size).unwrap();
                        assert!(data == fs::read(src.join(&rel)).unwrap(), "{}", rel.display());
                    }
                });
            }
        }
    });
}

/// Walk a filesystem as `find` does: list every directory, stat comes with the listing.
fn find(fs: &dyn FileSystem, path: &[u8]) -> usize {
    let mut n = 0;
    for e in fs.list(path).unwrap() {
        n += 1;
        if e.stat.kind == Kind::Dir {
            let mut child = path.to_vec();
            child.push(b'/');
            child.extend_from_slice(&e.name);
            n += find(fs, &child);
        }
    }
    n
}

#[test]
fn a_walk_reads_metadata_not_file_data() {
    let f = fixtures();
    let data: u64 = walk(&f.unix).iter().map(|p| fs::symlink_metadata(f.unix.join(p)).unwrap().len()).sum();
    for (path, volume, min_entries) in [(&f.gpt, 0, 300), (&f.mbr, 0, 300), (&f.mbr, 1, 300), (&f.mbr, 2, 300)] {
        let counting = Arc::new(Counting { inner: open_file(path), bytes: Default::default() });
        let img = Image::open(counting.clone(), &no_resolver).unwrap();
        let opened = counting.bytes.swap(0, Ordering::Relaxed);
        let fs = fs_of(&img, volume);
        let entries = find(&*fs, b"");
        let walked = counting.bytes.load(Ordering::Relaxed);
        eprintln!("{:?}: open read {opened} bytes, a walk of {entries} entries {walked} bytes", fs.kind());
        assert!(entries >= min_entries);
        assert!(walked < data / 4, "{:?}: a walk read {walked} bytes of {data} bytes of file data", fs.kind());
        // Holes are zeros that cost no reads: 8 MiB with 64 KiB of data.
        if fs.kind() != FsKind::Fat {
            counting.bytes.store(0, Ordering::Relaxed);
            let sparse = read_all(&*fs, b"sparse.img", 8 << 20).unwrap();
            assert!(sparse == fs::read(f.unix.join("sparse.img")).unwrap());
            let read = counting.bytes.load(Ordering::Relaxed);
            assert!(read < 1 << 20, "{:?}: reading a sparse file of 8 MiB read {read} bytes", fs.kind());
        }
    }
}

/// A disk of random runs of data and zeros, `len` sectors long.
fn random_disk(seed: u64, runs: &[(bool, u16)]) -> Vec<u8> {
    let mut disk = Vec::new();
    for (i, (data, sectors)) in runs.iter().enumerate() {
        let len = usize::from(*sectors) * 512;
        if *data {
            disk.extend_from_slice(&random_bytes(seed + i as u64, len));
        } else {
            disk.resize(disk.len() + len, 0);
        }
    }
    disk
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random disks through every format and cluster size qemu-img writes read back byte for
    /// byte, whole and in random ranges.
    #[test]
    fn every_format_reads_back_what_qemu_img_wrote(
        seed in any::<u64>(),
        runs in prop::collection::vec((any::<bool>(), 1u16..1500), 1..12),
        reads in prop::collection::vec((any::<u64>(), 1usize..300_000), 10),
    ) {
        let work = workdir();
        let raw_disk = random_disk(seed, &runs);
        let raw = work.path().join("disk.raw");
        fs::write(&raw, &raw_disk).unwrap();
        for t in [QCOW2, QCOW2_V2, QCOW2_512, QCOW2_2M, QCOW2_DEFLATE, QCOW2_ZSTD, VMDK_SPARSE, VMDK_STREAM, VMDK_FLAT, VMDK_2GB_SPARSE, VMDK_2GB_FLAT] {
            let path = convert(&raw, work.path(), t);
            let (_, disk) = open_disk(open_file(&path), &resolver(work.path()))
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
            prop_assert_eq!(disk.size(), raw_disk.len() as u64, "{}", t.name);
            let mut all = vec![0u8; raw_disk.len()];
            prop_assert_eq!(disk.read_at(0, &mut all).unwrap(), raw_disk.len());
            prop_assert!(all == raw_disk, "{}: the whole disk differs", t.name);
            for (off, len) in &reads {
                let off = off % (raw_disk.len() as u64 + 10);
                let mut buf = vec![0u8; *len];
                let n = disk.read_at(off, &mut buf).unwrap();
                let want = raw_disk.get(off as usize..).map_or(&[][..], |r| &r[..r.len().min(*len)]);
                prop_assert!(&buf[..n] == want, "{}: {} bytes at {}", t.name, len, off);
            }
        }
    }
}

/// Open, walk and read everything of a filesystem, tolerating errors; the count of entries.
fn exercise(fs: &dyn FileSystem, path: &[u8], depth: u32, budget: &mut u32) {
    let Ok(entries) = fs.list(path) else { return };
    for e in entries {
        if *budget == 0 || depth > 16 {
            return;
        }
        *budget -= 1;
        let mut child = path.to_vec();
        child.push(b'/');
        child.extend_from_slice(&e.name);
        let _ = fs.stat(&child);
        if let Ok(Some(sd)) = fs.security_descriptor(&child) {
            let _ = image::owner_sid(&sd);
        }
        match e.stat.kind {
            Kind::Dir => exercise(fs, &child, depth + 1, budget),
            Kind::File => {
                let mut buf = vec![0u8; 64 << 10];
                let mut off = 0;
                while off < e.stat.size.min(4 << 20) {
                    match fs.read_at(&child, off, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => off += n as u64,
                    }
                }
            }
            Kind::Symlink => drop(fs.read_link(&child)),
            Kind::Other => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// Filesystems with random bytes of their metadata changed open, list and read, or fail with
    /// errors: never a panic, never a hang.
    #[test]
    fn damaged_filesystems_never_panic_or_hang(
        which in 0usize..3,
        flips in prop::collection::vec((any::<u32>(), any::<u8>()), 1..24),
    ) {
        let (kind, clean) = &fixtures().small[which];
        let mut data = clean.clone();
        // Where each keeps its metadata: ext and FAT at the start; NTFS in its MFT.
        let (start, len) = match kind {
            FsKind::Ntfs => {
                let cluster = u64::from(u16::from_le_bytes([data[11], data[12]])) * u64::from(data[13]);
                let mft = u64::from_le_bytes(data[0x30..0x38].try_into().unwrap()) * cluster;
                (mft as usize, 64 << 10)
            }
            _ => (0, 1 << 20),
        };
        for (at, v) in flips {
            let i = start + at as usize % len;
            data[i] = v;
        }
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let volume: Arc<dyn ReadAt> = Arc::new(data);
            if let Ok(fs) = image::open_filesystem(volume) {
                exercise(&*fs, b"", 0, &mut 5_000);
            }
            let _ = done_tx.send(());
        });
        let finished = done.recv_timeout(std::time::Duration::from_secs(60));
        prop_assert!(finished.is_ok(), "{kind:?}: opening, walking or reading a damaged filesystem did not end (or panicked)");
    }
}

#[test]
fn image_types_are_send_and_sync() {
    fn both<T: Send + Sync + ?Sized>() {}
    both::<Image>();
    both::<dyn FileSystem>();
    both::<image::Volume>();
}

/// The view of a backed-up folder of images: `<name>.d` after each file whose content is a disk
/// image and nothing else; a disk without a partition table shows its filesystem's root there;
/// an image that does not open is an `image.error`; a real entry named `<name>.d` wins; small
/// files not named like images are not even looked at.
#[test]
fn the_view_shows_what_is_inside_backed_up_images() {
    use rewind_store::{
        BackupOptions, BackupProgress, CacheSizes, ChunkerParams, CompressionParams, Entry, Images, NewKey, Repository,
        View, backup,
    };
    let f = fixtures();
    let w = workdir();
    let src = w.path().join("src");
    fs::create_dir_all(src.join("shadowed.img.d")).unwrap();
    fs::copy(&f.fat16, src.join("usb.img")).unwrap();
    fs::set_permissions(src.join("usb.img"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    fs::copy(&f.fat16, src.join("shadowed.img")).unwrap();
    fs::write(src.join("shadowed.img.d/mine"), b"a real folder of that name").unwrap();
    let fat16 = fs::read(&f.fat16).unwrap();
    // A FAT boot sector, but 32 KiB long and not named like an image: never opened.
    fs::write(src.join("small.bin"), &fat16[..32 << 10]).unwrap();
    let mut bad = b"QFI\xfb\0\0\0\x03".to_vec();
    bad.extend_from_slice(&random_bytes(9, 64 << 10));
    fs::write(src.join("bad.qcow2"), &bad).unwrap();
    let repo = Repository::init(
        &w.path().join("repo"),
        ChunkerParams::default(),
        CompressionParams::default(),
        NewKey::test(),
    )
    .unwrap()
    .open_indexed(CacheSizes::default())
    .unwrap();
    let opts = BackupOptions { paths: vec![src.clone()], host: "h".into(), ..BackupOptions::default() };
    backup(&repo, &opts, &BackupProgress::default(), &|p, e| panic!("{}: {e}", p.display())).unwrap();
    let view = View::new(repo).unwrap();
    let at = |rel: &str| {
        let p = format!("hosts/h/latest{}/{rel}", src.display());
        view.resolve(p.as_bytes()).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let names = |e: &Entry| -> Vec<String> {
        view.list(e, Images::Show).unwrap().into_iter().map(|(n, _)| String::from_utf8(n).unwrap()).collect()
    };
    let read = |e: &Entry| {
        let r = view.open(e).unwrap();
        let mut buf = vec![0u8; r.size() as usize];
        assert_eq!(r.read_at(0, &mut buf).unwrap(), buf.len());
        buf
    };
    assert_eq!(
        names(&at("")),
        ["bad.qcow2", "bad.qcow2.d", "shadowed.img", "shadowed.img.d", "small.bin", "usb.img", "usb.img.d"]
    );
    assert_eq!(names(&at("shadowed.img.d")), ["mine"]);
    // Whoever may read the image may enter its folder; nobody may write.
    let (image, folder) = (view.attr(&at("usb.img")).unwrap(), view.attr(&at("usb.img.d")).unwrap());
    assert_eq!((folder.perm, folder.uid, folder.gid), (0o550, image.uid, image.gid));
    let mut want: Vec<String> =
        fs::read_dir(&f.fat).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    want.sort();
    assert_eq!(names(&at("usb.img.d")), want);
    assert_eq!(read(&at("usb.img.d/hello.txt")), b"hello world\n");
    assert_eq!(read(&at("usb.img.d/big.bin")), fs::read(f.fat.join("big.bin")).unwrap());
    let a = view.attr(&at("usb.img.d/docs/report.docx")).unwrap();
    assert_eq!(a.size, 1_234_567);
    assert_eq!(a.perm, 0o444, "FAT files are read-only");
    assert_eq!(names(&at("bad.qcow2.d")), ["image.error"]);
    let err = String::from_utf8(read(&at("bad.qcow2.d/image.error"))).unwrap();
    assert!(err.ends_with('\n') && err.lines().count() == 1 && err.contains("qcow2"), "{err}");
    assert!(view.resolve(format!("hosts/h/latest{}/small.bin.d", src.display()).as_bytes()).is_err());
}
