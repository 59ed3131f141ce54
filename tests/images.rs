//! Files inside backed-up disk images, end to end: real images built with the real tools
//! (`mkfs.ext4 -d` in a GPT partition, FAT32 with mkfs.vfat + mcopy and NTFS with mkntfs +
//! ntfs-3g in an MBR, each converted by `qemu-img`), backed up with `rewind backup`, and read
//! through `rewind mount` and `rewind restore`. Every tool must be installed (scripts/test.sh
//! installs them); nothing is skipped.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::mount::Mount;
use crate::support::image_tools::{self, Flavour, QCOW2, VMDK_SPARSE, corpus, run, sparse_file, walk};
use crate::support::*;
use serde_json::Value;

/// A GPT disk of 64 MiB: p1 ext4 holding `src`, p2 an empty 8 MiB partition.
fn gpt_ext4(work: &Path, src: &Path) -> PathBuf {
    let ext4 = image_tools::ext4_fs(work, src, 40, false);
    let gpt = work.join("gpt.raw");
    sparse_file(&gpt, 64 << 20);
    run("sgdisk", &[&"-n", &"1:2048:+40M", &"-t", &"1:8300", &"-n", &"2:0:+8M", &"-t", &"2:0700", &gpt]);
    image_tools::place(&gpt, &[(2048 * 512, &ext4)]);
    gpt
}

/// The Unix corpus in `t`'s `src-unix`, and a GPT disk with it in an ext4 partition 1.
fn ext4_disk(t: &TempRepo) -> (PathBuf, PathBuf) {
    let work = t.path("work");
    fs::create_dir_all(&work).unwrap();
    let unix = t.path("src-unix");
    corpus(&unix, Flavour::Unix);
    let gpt = gpt_ext4(&work, &unix);
    (unix, gpt)
}

/// An MBR disk of 96 MiB: p1 FAT32 holding `fat`, p2 NTFS holding `ntfs`.
fn mbr_fat_ntfs(work: &Path, fat: &Path, ntfs: &Path) -> PathBuf {
    let fat32 = image_tools::fat_fs(work, fat, 40, 32);
    let ntfs_img = image_tools::ntfs_fs(work, ntfs, 40);
    let mbr = work.join("mbr.raw");
    sparse_file(&mbr, 96 << 20);
    let script = "label: dos\nstart=2048, size=40MiB, type=c\nsize=40MiB, type=7\n";
    image_tools::sfdisk(&mbr, script);
    image_tools::place(&mbr, &[(2048 * 512, &fat32), ((2048 + 40 * 2048) * 512, &ntfs_img)]);
    mbr
}

/// Check that the tree at `got` (inside a mount) is the tree at `src`: names, kinds, sizes,
/// contents, symlink targets, mtimes, and modes and owners where the filesystem keeps them
/// (elsewhere files are read-only and owned by the image file's owner, `image_owner`).
fn verify_tree(got: &Path, src: &Path, flavour: Flavour, image_owner: (u32, u32)) {
    let entries = walk(src);
    assert!(entries.len() > 3, "the corpus is all there");
    for rel in entries {
        let (want, have) = (src.join(&rel), got.join(&rel));
        let what = have.display();
        let m = fs::symlink_metadata(&want).unwrap();
        let g = fs::symlink_metadata(&have).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(g.file_type(), m.file_type(), "kind of {what}");
        if m.file_type().is_symlink() {
            assert_eq!(fs::read_link(&have).unwrap(), fs::read_link(&want).unwrap(), "target of {what}");
            continue;
        }
        if m.is_dir() {
            let names = |d: &Path| {
                let mut v: Vec<_> = fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
                v.sort();
                v
            };
            assert_eq!(names(&have), names(&want), "listing of {what}");
        } else {
            assert_eq!(g.len(), m.len(), "size of {what}");
            assert!(fs::read(&have).unwrap() == fs::read(&want).unwrap(), "content of {what}");
        }
        match flavour {
            Flavour::Unix => {
                assert_eq!((g.mtime(), g.mtime_nsec()), (m.mtime(), m.mtime_nsec()), "mtime of {what}");
                assert_eq!(g.mode() & 0o7777, m.mode() & 0o7777, "mode of {what}");
                assert_eq!((g.uid(), g.gid()), (m.uid(), m.gid()), "owner of {what}");
            }
            Flavour::Ntfs => {
                assert_eq!((g.mtime(), g.mtime_nsec()), (m.mtime(), m.mtime_nsec() / 100 * 100), "mtime of {what}");
                assert_eq!((g.uid(), g.gid()), image_owner, "owner of {what}");
                assert_eq!(g.mode() & 0o222, 0, "{what} is read-only");
            }
            Flavour::Fat => {
                if m.is_file() {
                    assert_eq!(g.mtime(), m.mtime(), "mtime of {what}");
                }
                assert_eq!((g.uid(), g.gid()), image_owner, "owner of {what}");
                assert_eq!(g.mode() & 0o222, 0, "{what} is read-only");
            }
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The mount shows every file inside qcow2 and VMDK images of ext4 (GPT), FAT32 and NTFS (MBR)
/// as its source; a damaged superblock and an empty partition are `.error` files; a file that
/// only looks like a disk by its size is not taken for one.
#[test]
fn files_inside_images_equal_their_sources_through_the_mount() {
    let t = TempRepo::new();
    let work = t.path("work");
    fs::create_dir_all(&work).unwrap();
    let (unix, fat, ntfs) = (t.path("src-unix"), t.path("src-fat"), t.path("src-ntfs"));
    corpus(&unix, Flavour::Unix);
    corpus(&fat, Flavour::Fat);
    corpus(&ntfs, Flavour::Ntfs);
    let gpt = gpt_ext4(&work, &unix);
    let mbr = mbr_fat_ntfs(&work, &fat, &ntfs);

    let vms = t.path("vms");
    let qcow = image_tools::convert(&gpt, &vms.join("vm1"), QCOW2);
    fs::rename(&qcow, vms.join("vm1/disk0.qcow2")).unwrap();
    let vmdk = image_tools::convert(&gpt, &vms.join("vm1"), VMDK_SPARSE);
    fs::rename(&vmdk, vms.join("vm1/disk0.vmdk")).unwrap();
    let win = image_tools::convert(&mbr, &vms.join("vm2"), VMDK_SPARSE);
    fs::rename(&win, vms.join("vm2/win.vmdk")).unwrap();
    // A raw disk whose ext4 superblock is damaged: its block size is absurd.
    let broken = vms.join("vm3/broken.img");
    fs::create_dir_all(broken.parent().unwrap()).unwrap();
    fs::copy(&gpt, &broken).unwrap();
    fs::File::options()
        .write(true)
        .open(&broken)
        .unwrap()
        .write_all_at(&[0x40, 0, 0, 0], 2048 * 512 + 1024 + 24)
        .unwrap();
    // Random bytes the size of a small disk: not an image.
    fs::write(vms.join("vm3/noise.bin"), pseudo_random(1 << 20, 7)).unwrap();
    t.backup("h", &[&vms]);

    let m = Mount::start(&t, "mnt", &[]);
    let root = m.mnt.join("hosts/h/latest").join(vms.strip_prefix("/").unwrap());
    assert_eq!(names(&root.join("vm1")), ["disk0.qcow2", "disk0.qcow2.d", "disk0.vmdk", "disk0.vmdk.d"]);
    let image_owner = {
        let md = fs::metadata(vms.join("vm1/disk0.qcow2")).unwrap();
        (md.uid(), md.gid())
    };
    for disk in ["vm1/disk0.qcow2.d", "vm1/disk0.vmdk.d"] {
        assert_eq!(names(&root.join(disk)), ["p1", "p2.error"], "{disk}");
        let err = fs::read_to_string(root.join(disk).join("p2.error")).unwrap();
        assert!(err.ends_with('\n') && err.lines().count() == 1 && err.contains("no filesystem"), "{err}");
        verify_tree(&root.join(disk).join("p1"), &unix, Flavour::Unix, image_owner);
    }
    assert_eq!(names(&root.join("vm2/win.vmdk.d")), ["p1", "p2"]);
    verify_tree(&root.join("vm2/win.vmdk.d/p1"), &fat, Flavour::Fat, image_owner);
    verify_tree(&root.join("vm2/win.vmdk.d/p2"), &ntfs, Flavour::Ntfs, image_owner);

    assert_eq!(names(&root.join("vm3")), ["broken.img", "broken.img.d", "noise.bin"]);
    assert_eq!(names(&root.join("vm3/broken.img.d")), ["p1.error", "p2.error"]);
    let err = fs::read_to_string(root.join("vm3/broken.img.d/p1.error")).unwrap();
    assert!(err.lines().count() == 1 && err.contains("p1") && err.contains("corrupt"), "{err}");
    // Nothing inside is writable, and a lookup of a missing name fails as it should.
    let e = fs::write(root.join("vm1/disk0.qcow2.d/p1/hello.txt"), b"x").unwrap_err();
    assert!(matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)), "{e}");
    let e = fs::metadata(root.join("vm1/disk0.qcow2.d/p1/nothing-here")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let e = fs::metadata(root.join("vm1/disk0.qcow2.d/p1/hello.txt/x")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
    m.unmount();
}

/// A damaged chunk of a backed-up image fails, with EIO, the reads of the one file whose
/// blocks it holds; every other file inside the image reads as its source.
#[test]
fn a_damaged_image_block_gives_eio_on_the_affected_file_only() {
    let t = TempRepo::new();
    let (unix, gpt) = ext4_disk(&t);
    let vms = t.path("vms");
    fs::create_dir_all(&vms).unwrap();
    let disk = vms.join("disk.img");
    fs::copy(&gpt, &disk).unwrap();
    t.backup("h", &[&vms]);

    // Where big.bin lies in the disk (ext4 -d writes it in one run), and a chunk of the disk's
    // content that holds only bytes of it.
    let big = fs::read(unix.join("big.bin")).unwrap();
    let raw = fs::read(&disk).unwrap();
    let start = raw.windows(4096).position(|w| w == &big[..4096]).expect("big.bin is in the disk") as u64;
    assert_eq!(&raw[start as usize..start as usize + big.len()], &big[..], "big.bin lies in one run");
    let repo = t.open();
    let indexed = repo.open_indexed(rewind_store::CacheSizes::default()).unwrap();
    let snap = repo.find_snapshot("latest", None).unwrap();
    let node = indexed.node_at(&snap.snapshot, disk.as_os_str().as_bytes()).unwrap();
    let reader = indexed.open_file(&node).unwrap();
    let span = *reader
        .chunks()
        .iter()
        .find(|c| c.offset >= start + (1 << 20) && c.offset + u64::from(c.len) <= start + big.len() as u64)
        .expect("a chunk of the disk inside big.bin, after its first MiB");
    damage_chunk(&t, &indexed, span.id);

    let m = Mount::start(&t, "mnt", &[]);
    let p1 = m.mnt.join("hosts/h/latest").join(vms.strip_prefix("/").unwrap()).join("disk.img.d/p1");
    for round in 0..2 {
        let e = fs::read(p1.join("big.bin")).expect_err("the damaged file must not read");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "round {round}: {e}");
        // Bytes of big.bin outside the damaged block still read.
        let f = fs::File::open(p1.join("big.bin")).unwrap();
        let mut head = vec![0u8; 4096];
        f.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(head, big[..4096]);
        for rel in walk(&unix) {
            let want = unix.join(&rel);
            if rel == Path::new("big.bin") || !fs::symlink_metadata(&want).unwrap().is_file() {
                continue;
            }
            assert!(fs::read(p1.join(&rel)).unwrap() == fs::read(&want).unwrap(), "round {round}: {}", rel.display());
        }
    }
    m.unmount();
}

/// `rewind restore` of a folder and of a file inside images (a qcow2 whose data is all in its
/// backing file, a VMDK descriptor with its flat extent, both in the same snapshot) restores
/// them as their sources, owners and modes included; a path inside an image that is not there
/// is a one-line error.
#[test]
fn restore_of_paths_inside_images() {
    let t = TempRepo::new();
    let (unix, gpt) = ext4_disk(&t);
    let vms = t.path("vms");
    let base = image_tools::convert(&gpt, &vms, QCOW2);
    run(
        "qemu-img",
        &[&"create", &"-q", &"-f", &"qcow2", &"-b", &"qcow2.qcow2", &"-F", &"qcow2", &vms.join("overlay.qcow2")],
    );
    assert!(base.ends_with("qcow2.qcow2"));
    image_tools::convert(&gpt, &vms, image_tools::VMDK_FLAT);
    assert!(vms.join("vmdk-flat-flat.vmdk").exists(), "qemu-img writes the flat extent beside the descriptor");
    t.backup("h", &[&vms]);
    let image_owner = (0, 0);
    let what = |rel: &str| format!("latest:{}/{rel}", vms.display());

    // `ls` lists inside images too.
    let listed: Vec<Value> = t
        .ok(&["ls", "latest", &format!("{}/overlay.qcow2.d/p1/docs", vms.display()), "--json", "-R"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let report = listed.iter().find(|v| v["name"] == "report.docx").expect("report.docx listed");
    assert_eq!((report["size"].as_u64(), report["kind"].as_str()), (Some(1_234_567), Some("file")));
    assert!(listed.iter().any(|v| v["path"].as_str().unwrap().ends_with("/docs/deep/a/b/c/leaf.bin")));
    let out = t.path("out-overlay");
    t.restore(&what("overlay.qcow2.d/p1"), &out);
    verify_tree(&out, &unix, Flavour::Unix, image_owner);
    assert!(out.join("lost+found").is_dir());

    let out = t.path("out-flat");
    t.restore(&what("vmdk-flat.vmdk.d/p1/docs"), &out);
    verify_tree(&out, &unix.join("docs"), Flavour::Unix, image_owner);
    t.restore(&what("vmdk-flat.vmdk.d/p1/secret.txt"), &out);
    let (got, want) =
        (fs::symlink_metadata(out.join("secret.txt")).unwrap(), fs::symlink_metadata(unix.join("secret.txt")).unwrap());
    assert_eq!(fs::read(out.join("secret.txt")).unwrap(), fs::read(unix.join("secret.txt")).unwrap());
    assert_eq!((got.mode(), got.uid(), got.gid(), got.mtime()), (want.mode(), want.uid(), want.gid(), want.mtime()));
    // Restoring over what is there is refused, as for any path.
    let again = t.run(&[
        OsStr::new("restore"),
        OsStr::new(&what("vmdk-flat.vmdk.d/p1/secret.txt")),
        OsStr::new("--target"),
        out.as_os_str(),
    ]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("would be replaced") && err.lines().count() == 1, "{err}");

    let missing = t.run(&[
        OsStr::new("restore"),
        OsStr::new(&what("overlay.qcow2.d/p1/no-such-file")),
        OsStr::new("--target"),
        out.as_os_str(),
    ]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("not found") && err.lines().count() == 1, "{err}");
}

/// The portal: admins browse and download inside images; by default nobody else does, the
/// image file's owner included; with `images = "image-readers"` whoever the rules show the
/// image file to sees inside it, and nobody sees inside an image they may not see.
#[test]
fn portal_shows_inside_images_to_admins_and_by_configuration_to_image_readers() {
    use crate::support::portal::{Client, Portal, login};
    let t = TempRepo::new();
    let (unix, gpt) = ext4_disk(&t);
    let vms = t.path("vms");
    for (who, uid) in [("alice", 2001), ("bob", 2002)] {
        let dir = vms.join(format!("{who}-vm"));
        let qcow = image_tools::convert(&gpt, &dir, QCOW2);
        let disk = dir.join("disk0.qcow2");
        fs::rename(&qcow, &disk).unwrap();
        own(&disk, uid, 0o600);
    }
    t.backup("h", &[&vms]);

    let realm = users_realm(&t);
    let (alice_d, bob_d) = (vms.join("alice-vm/disk0.qcow2.d"), vms.join("bob-vm/disk0.qcow2.d"));
    let report = fs::read(unix.join("docs/report.docx")).unwrap();

    let portal = Portal::start(&t.repo, &realm, "[authz]\nrules = [\"owner\"]\n", "");
    let ada = login(&portal.addr, "ada", "ada-pw");
    assert_eq!(names_in(&ada, &vms.join("alice-vm")), ["disk0.qcow2", "disk0.qcow2.d"]);
    assert_eq!(names_in(&ada, &alice_d), ["p1", "p2.error"]);
    let mut want: Vec<String> =
        fs::read_dir(&unix).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    want.push("lost+found".into());
    want.sort();
    let mut got = names_in(&ada, &alice_d.join("p1"));
    got.sort();
    assert_eq!(got, want);
    let r = get(&ada, "download", &alice_d.join("p1/docs/report.docx"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == report, "the admin's download is the source's bytes");
    assert!(r.header("etag").is_some_and(|e| e.len() > 10));
    let r = get(&ada, "download", &alice_d.join("p1/secret.txt"));
    assert_eq!(r.body, fs::read(unix.join("secret.txt")).unwrap());
    let r = get(&ada, "download", &alice_d.join("p2.error"));
    assert!(r.status == 200 && r.text().contains("no filesystem"), "{}", r.text());
    // Search finds files inside images for admins, and for nobody else.
    let search = |c: &Client| -> Vec<String> {
        let r = c.get("/api/search?q=report.docx");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["items"].as_array().unwrap().iter().map(|v| v["path"].as_str().unwrap().to_string()).collect()
    };
    let mut found = search(&ada);
    found.sort();
    assert_eq!(
        found,
        [alice_d.join("p1/docs/report.docx"), bob_d.join("p1/docs/report.docx")].map(|p| p.display().to_string())
    );
    // By default, the image's owner sees the image file and nothing inside it.
    let alice = login(&portal.addr, "alice", "alice-pw");
    assert!(search(&alice).is_empty());
    assert_eq!(names_in(&alice, &vms.join("alice-vm")), ["disk0.qcow2"]);
    assert_eq!(get(&alice, "browse", &alice_d).status, 404);
    assert_eq!(get(&alice, "download", &alice_d.join("p1/docs/report.docx")).status, 404);
    drop(portal);

    let authz = "[authz]\nrules = [\"owner\"]\nimages = \"image-readers\"\n";
    let portal = Portal::start(&t.repo, &realm, authz, "");
    let alice = login(&portal.addr, "alice", "alice-pw");
    assert_eq!(names_in(&alice, &vms.join("alice-vm")), ["disk0.qcow2", "disk0.qcow2.d"]);
    assert_eq!(names_in(&alice, &alice_d), ["p1", "p2.error"]);
    let r = get(&alice, "download", &alice_d.join("p1/docs/report.docx"));
    assert!(r.status == 200 && r.body == report, "{}", r.status);
    // Bob's image is not hers: neither it nor anything inside it exists for her.
    assert_eq!(get(&alice, "browse", &vms.join("bob-vm")).status, 404);
    for p in [bob_d.clone(), bob_d.join("p1"), bob_d.join("p1/docs")] {
        assert_eq!(get(&alice, "browse", &p).status, 404, "{}", p.display());
    }
    assert_eq!(get(&alice, "download", &bob_d.join("p1/docs/report.docx")).status, 404);
    assert!(search(&alice).is_empty(), "search inside images is for admins only");
    let bob = login(&portal.addr, "bob", "bob-pw");
    assert_eq!(get(&bob, "download", &bob_d.join("p1/hello.txt")).body, b"hello world\n");
    assert_eq!(get(&bob, "download", &alice_d.join("p1/hello.txt")).status, 404);
}

/// An image that refers to other files (a qcow2 overlay on a backing file, a VMDK descriptor
/// naming extents) shows what those files hold. Under `image-readers` alice saw inside her own
/// overlay whose backing file was bob's private disk, and so read bob's files (found in a
/// review). Now a non-admin sees inside images that stand alone only; admins see both. And a
/// hidden real entry named like a user's image folder does not take the folder's place for them.
#[test]
fn an_image_that_refers_to_other_files_is_opened_for_admins_only() {
    use crate::support::portal::{Portal, login};
    let t = TempRepo::new();
    let (unix, gpt) = ext4_disk(&t);
    let shared = t.path("shared");
    fs::create_dir_all(&shared).unwrap();
    // bob's private raw disk, alice's overlay on it, and alice's own self-contained image.
    let base = shared.join("bob-disk.raw");
    fs::copy(&gpt, &base).unwrap();
    own(&base, 2002, 0o600);
    let overlay = shared.join("alice-overlay.qcow2");
    run("qemu-img", &[&"create", &"-q", &"-f", &"qcow2", &"-b", &"bob-disk.raw", &"-F", &"raw", &overlay]);
    own(&overlay, 2001, 0o600);
    let mine = image_tools::convert(&gpt, &t.path("work/mine"), QCOW2);
    let mine_at = shared.join("alice-own.qcow2");
    fs::copy(&mine, &mine_at).unwrap();
    own(&mine_at, 2001, 0o600);
    // A hidden file of bob's that has the name of alice's image folder: it must not take its
    // place for her (the missing folder would tell her that such a file exists).
    let twin = shared.join("alice-own.qcow2.d");
    fs::write(&twin, b"bob's file of that name").unwrap();
    own(&twin, 2002, 0o600);
    t.backup("h", &[&shared]);

    let realm = users_realm(&t);
    let report = fs::read(unix.join("docs/report.docx")).unwrap();
    let overlay_d = shared.join("alice-overlay.qcow2.d");
    let authz = "[authz]\nrules = [\"owner\"]\nimages = \"image-readers\"\n";
    let portal = Portal::start(&t.repo, &realm, authz, "");
    let alice = login(&portal.addr, "alice", "alice-pw");
    assert_eq!(names_in(&alice, &shared), ["alice-overlay.qcow2", "alice-own.qcow2", "alice-own.qcow2.d"]);
    let r = get(&alice, "download", &shared.join("alice-own.qcow2.d/p1/docs/report.docx"));
    assert!(r.status == 200 && r.body == report, "her own image: {}", r.status);
    for p in [overlay_d.clone(), overlay_d.join("p1"), overlay_d.join("p1/docs")] {
        assert_eq!(get(&alice, "browse", &p).status, 404, "{}", p.display());
    }
    assert_eq!(get(&alice, "download", &overlay_d.join("p1/docs/report.docx")).status, 404);
    // The admin sees inside both: the overlay reads through to its backing file.
    let ada = login(&portal.addr, "ada", "ada-pw");
    let mut all = names_in(&ada, &shared);
    all.sort();
    assert_eq!(
        all,
        [
            "alice-overlay.qcow2",
            "alice-overlay.qcow2.d",
            "alice-own.qcow2",
            "alice-own.qcow2.d",
            "bob-disk.raw",
            "bob-disk.raw.d"
        ]
    );
    let r = get(&ada, "download", &overlay_d.join("p1/docs/report.docx"));
    assert!(r.status == 200 && r.body == report, "the admin reads through the overlay: {}", r.status);
    // For the admin the real entry wins, as in the mount.
    assert_eq!(get(&ada, "download", &twin).body, b"bob's file of that name");
}

/// The mount with `--allow-other`: an image's folder takes the image file's owner and read
/// bits, so whoever may read the image enters it, unless the image refers to other files (an
/// overlay on a backing file of someone else's): that folder is root's alone.
#[test]
fn the_mount_lets_others_into_images_that_stand_alone_only() {
    assert!(is_root(), "this test switches users with setpriv and must run as root");
    let t = TempRepo::new();
    fs::set_permissions(t.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (_, gpt) = ext4_disk(&t);
    let shared = t.path("shared");
    fs::create_dir_all(&shared).unwrap();
    fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let base = shared.join("roots-disk.raw");
    fs::copy(&gpt, &base).unwrap();
    own(&base, 0, 0o600);
    let overlay = shared.join("overlay.qcow2");
    run("qemu-img", &[&"create", &"-q", &"-f", &"qcow2", &"-b", &"roots-disk.raw", &"-F", &"raw", &overlay]);
    own(&overlay, 65534, 0o644);
    let alone = shared.join("alone.qcow2");
    fs::copy(image_tools::convert(&gpt, &t.path("work/alone"), QCOW2), &alone).unwrap();
    own(&alone, 65534, 0o600);
    t.backup("h", &[&shared]);
    let m = Mount::start(&t, "others", &["--allow-other"]);
    let root = m.mnt.join("hosts/h/latest").join(shared.strip_prefix("/").unwrap());
    let ls_as_nobody = |path: &Path| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "ls"])
            .arg(path)
            .output()
            .expect("setpriv (util-linux) must be installed")
    };
    let out = ls_as_nobody(&root.join("alone.qcow2.d/p1"));
    assert_success(&out, "nobody lists inside its own image");
    assert!(String::from_utf8_lossy(&out.stdout).contains("docs"), "{out:?}");
    let out = ls_as_nobody(&root.join("overlay.qcow2.d"));
    assert!(!out.status.success(), "nobody entered an overlay on root's disk: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    // Root still reads through the overlay.
    assert!(fs::read_dir(root.join("overlay.qcow2.d/p1/docs")).unwrap().count() > 0);
    m.unmount();
}

/// `chown uid:uid` and `chmod mode` of a path the test made.
fn own(path: &Path, uid: u32, mode: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// `GET /api/<api>` of `path` in the first snapshot the portal lists to `c`.
fn get(c: &crate::support::portal::Client, api: &str, path: &Path) -> crate::support::portal::Resp {
    let snap = c.get("/api/snapshots").json()["items"][0]["id"].as_str().unwrap().to_string();
    c.get(&format!("/api/{api}?snapshot={snap}&path={}", crate::support::portal::enc(&path.to_string_lossy())))
}

/// The names the portal lists to `c` in folder `path` (which must answer 200).
fn names_in(c: &crate::support::portal::Client, path: &Path) -> Vec<String> {
    let r = get(c, "browse", path);
    assert_eq!(r.status, 200, "browse {}: {}", path.display(), r.text());
    r.json()["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

/// A file realm in `t`: ada the admin, alice (uid 2001) and bob (uid 2002), each with the
/// password `<name>-pw`.
fn users_realm(t: &TempRepo) -> String {
    use crate::support::portal::passwd_hash;
    let users = t.path("users.toml");
    let mut text = format!("[users.ada]\nhash = \"{}\"\nrole = \"admin\"\n", passwd_hash("ada-pw"));
    for (who, uid) in [("alice", 2001), ("bob", 2002)] {
        text.push_str(&format!("[users.{who}]\nhash = \"{}\"\nuid = {uid}\n", passwd_hash(&format!("{who}-pw"))));
    }
    fs::write(&users, text).unwrap();
    format!("[[realm]]\nkind = \"file\"\nname = \"local\"\nusers_file = \"{}\"\n", users.display())
}

/// Issue 18's timing side channel: the portal asked the view for `<name>.d` and listed folders
/// with image folders before it decided whether the user may see inside images, and the view
/// decides that a file is an image by reading its first bytes. So a user who passes through a
/// folder got the same 404 for `<hidden image>.d` as for a missing name, but later by a chunk
/// read, and a listing of the folder cost a read per hidden image: the time told whether a
/// hidden file existed. Here alice (under `owner`, with images for admins only and then with
/// `image-readers`) probes `.d` names of bob's disk images in a folder she passes through
/// against names that are not there, and lists folders of her file and bob's images against
/// folders of her file and bob's small files, each folder once (nothing cached). Bob's images
/// are raw disks with a partition table, 4 MiB of data each, stored as chunks of 1 MiB and more.
#[test]
fn hidden_images_answer_as_fast_as_missing_names() {
    use crate::support::portal::{Portal, enc, login, median, timed};
    assert!(is_root(), "chowns files");
    let dir = tempfile::Builder::new().prefix("rewind-test-").tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = rewind_cmd()
        .arg("init")
        .arg(&repo)
        .args(["--chunk-min", "1048576", "--chunk-avg", "4194304", "--chunk-max", "16777216"])
        .output()
        .unwrap();
    assert_success(&out, "rewind init with large chunks");
    let t = TempRepo { dir, repo, encrypted: true };
    fs::set_permissions(t.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let src = t.path("src");
    let mut seed = 0;
    let mut images = |folder: &Path, n: usize| {
        for i in 0..n {
            seed += 1;
            let disk = folder.join(format!("disk{i}.img"));
            fs::write(&disk, image_tools::random_bytes(seed, 64 << 10)).unwrap();
            fs::OpenOptions::new().write(true).open(&disk).unwrap().set_len(16 << 20).unwrap();
            image_tools::sfdisk(&disk, "label: dos\nstart=2048, type=83\n");
            own(&disk, 2002, 0o600);
        }
    };
    let with_alice = |folder: &Path| {
        fs::create_dir_all(folder).unwrap();
        own(folder, 0, 0o755);
        fs::write(folder.join("alice.txt"), b"alice\n").unwrap();
        own(&folder.join("alice.txt"), 2001, 0o644);
    };
    const PROBES: usize = 9;
    const FOLDERS: usize = 5;
    with_alice(&src);
    images(&src, PROBES);
    for k in 0..FOLDERS {
        let (imgs, plain) = (src.join(format!("images-{k}")), src.join(format!("plain-{k}")));
        with_alice(&imgs);
        images(&imgs, 6);
        with_alice(&plain);
        for i in 0..6 {
            let f = plain.join(format!("notes{i}.txt"));
            fs::write(&f, format!("bob {k} {i}\n")).unwrap();
            own(&f, 2002, 0o600);
        }
    }
    t.backup("h", &[&src]);

    let realm = users_realm(&t);
    for images in ["admins", "image-readers"] {
        let authz = format!("[authz]\nrules = [\"owner\"]\nimages = \"{images}\"\n");
        let portal = Portal::start(&t.repo, &realm, &authz, "");
        let alice = login(&portal.addr, "alice", "alice-pw");
        let snap = alice.get("/api/snapshots").json()["items"][0]["id"].as_str().unwrap().to_string();
        let browse =
            |p: &Path| timed(&alice, &format!("/api/browse?snapshot={snap}&path={}", enc(&p.to_string_lossy())));
        let _ = browse(&src.join("warm-up"));
        // Each pair once, in turn: the medians of both sides, compared as for hidden folders.
        let race = |what: &str, pairs: Vec<(PathBuf, PathBuf)>, status: u16| {
            let (mut there, mut not) = (Vec::new(), Vec::new());
            for (p1, p2) in pairs {
                let ((s1, t1), (s2, t2)) = (browse(&p1), browse(&p2));
                assert_eq!((s1, s2), (status, status), "{images}: {}", p1.display());
                there.push(t1);
                not.push(t2);
            }
            let (a, b) = (median(there.clone()), median(not.clone()));
            eprintln!("{images}: {what}: {there:?} ms against {not:?} ms");
            assert!(a < b * 2.0 + 5.0, "{images}: {what}: {a:.1} ms against {b:.1} ms");
        };
        let probes = (0..PROBES).map(|i| (src.join(format!("disk{i}.img.d")), src.join(format!("none{i}.img.d"))));
        race("a hidden image's .d against a missing name", probes.collect(), 404);
        let folders = (0..FOLDERS).map(|k| (src.join(format!("images-{k}")), src.join(format!("plain-{k}"))));
        race("a folder of hidden images against one of hidden small files", folders.collect(), 200);
        // What she sees is the same in both: her file.
        for p in [src.join("images-0"), src.join("plain-0")] {
            let r = alice.get(&format!("/api/browse?snapshot={snap}&path={}", enc(&p.to_string_lossy())));
            let names: Vec<Value> = r.json()["entries"].as_array().unwrap().iter().map(|e| e["name"].clone()).collect();
            assert_eq!(names, ["alice.txt"], "{images}: {}", p.display());
        }
    }
}

/// The catalog indexes files inside images at each update: `find` finds them, a file removed
/// from the image between two backups is `deleted`, `history` shows the versions of a file
/// inside an image, an unchanged image adds nothing, and a rebuild gives the same answers.
#[test]
fn the_catalog_indexes_files_inside_images() {
    let t = TempRepo::new();
    let unix = t.path("src-unix");
    corpus(&unix, Flavour::Unix);
    let vms = t.path("vms");
    let disk = vms.join("vm1/disk0.qcow2");
    let image_of = |src: &Path, name: &str| {
        let work = t.path(name);
        fs::create_dir_all(&work).unwrap();
        let gpt = gpt_ext4(&work, src);
        let qcow = image_tools::convert(&gpt, &vms.join("vm1"), QCOW2);
        fs::rename(&qcow, &disk).unwrap();
    };
    image_of(&unix, "work1");
    t.backup("h", &[&vms]);
    let inside = format!("{}/vm1/disk0.qcow2.d/p1", vms.display());
    let find = |pattern: &str| -> Vec<Value> {
        t.ok(&["find", pattern, "--all", "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let found = find("report");
    let paths: Vec<&str> = found.iter().map(|v| v["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&format!("{inside}/docs/report.docx").as_str()), "{paths:?}");
    assert!(paths.contains(&format!("{inside}/report-link.docx").as_str()), "{paths:?}");
    let report = found.iter().find(|v| v["path"].as_str().unwrap().ends_with("/docs/report.docx")).unwrap();
    assert_eq!(report["size"], 1_234_567);
    let secret = &find("secret.txt")[0];
    assert_eq!((secret["uid"].as_u64(), secret["path"].as_str()), (Some(1234), Some(&*format!("{inside}/secret.txt"))));

    // A second version of the disk: secret.txt gone, hello.txt changed.
    let unix2 = t.path("src-unix2");
    assert!(std::process::Command::new("cp").arg("-a").arg(&unix).arg(&unix2).status().unwrap().success());
    fs::remove_file(unix2.join("secret.txt")).unwrap();
    fs::write(unix2.join("hello.txt"), b"hello again, a longer line\n").unwrap();
    image_of(&unix2, "work2");
    t.backup("h", &[&vms]);
    // And a third backup of the same disk: nothing changes inside.
    t.backup("h", &[&vms]);

    let deleted: Vec<Value> =
        t.ok(&["deleted", "--all", "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let gone: Vec<&str> = deleted.iter().map(|v| v["path"].as_str().unwrap()).collect();
    assert_eq!(gone, [format!("{inside}/secret.txt")], "only secret.txt went");
    let hello = format!("{inside}/hello.txt");
    let history: Vec<Value> =
        t.ok(&["history", "--json", &hello]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let sizes: Vec<u64> = history.iter().map(|v| v["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [27, 12], "newest first: {history:?}");

    let before = t.ok(&["find", "*", "--all", "--json"]);
    assert!(before.lines().count() > 600, "both versions' files inside the image are catalogued");
    t.ok(&["catalog", "rebuild"]);
    assert_eq!(t.ok(&["find", "*", "--all", "--json"]), before, "a rebuild gives what the updates gave");
}

/// Issue 18: the catalog leaves every row inside a disk image out of a non-admin's scope, in
/// SQL. Alice (uid 2001, rules `owner` + `home`) has an ext4 disk image in her home and one
/// elsewhere, every file inside both hers by uid. The catalog query for her scope (what the
/// portal's per-result check is handed) holds no row inside an image: the same rows, for search,
/// name searches and deleted, as on a host whose backups are the same tree without the images;
/// the history of a file inside an image is empty for her. Through the portal she finds nothing
/// inside images by search, deleted or history; the admin still finds files inside them.
#[test]
fn no_row_inside_an_image_reaches_a_non_admins_scope() {
    use crate::support::portal::{Client, Portal, enc, login, passwd_hash};
    use rewind_catalog::{Catalog, FileVersion, NameMatch, Query, Scope};
    assert!(is_root(), "chowns files");
    const ALICE: u32 = 2001;
    let t = TempRepo::new();
    // The files inside the images: the Unix corpus, all alice's by uid.
    let unix = t.path("src-unix");
    corpus(&unix, Flavour::Unix);
    run("chown", &[&"-R", &"-h", &format!("{ALICE}:{ALICE}"), &unix]);
    let src = t.path("src");
    let (home, vms) = (src.join("home/alice"), src.join("srv/vms"));
    for d in [home.join("vm"), vms.clone()] {
        fs::create_dir_all(&d).unwrap();
    }
    own(&home, ALICE, 0o755);
    for (name, text) in [("notes.txt", "notes\n"), ("report-2026.txt", "report\n"), ("old-report.txt", "old\n")] {
        fs::write(home.join(name), text).unwrap();
        own(&home.join(name), ALICE, 0o644);
    }
    fs::write(home.join("vm/README"), "the disk of alice's VM\n").unwrap();
    let (in_home, elsewhere) = (home.join("vm/disk0.qcow2"), vms.join("build.qcow2"));
    // The images' folders keep one mtime with and without them: only the images differ.
    let settle = || {
        for d in [home.join("vm"), vms.clone()] {
            run("touch", &[&"-h", &"-d", &"@1700000000", &d]);
        }
    };
    let images = |inside: &Path, work: &str| {
        let work = t.path(work);
        fs::create_dir_all(&work).unwrap();
        let gpt = gpt_ext4(&work, inside);
        for disk in [&in_home, &elsewhere] {
            fs::rename(image_tools::convert(&gpt, &work.join("out"), QCOW2), disk).unwrap();
        }
        settle();
    };
    let without_images = || {
        for disk in [&in_home, &elsewhere] {
            fs::remove_file(disk).unwrap();
        }
        settle();
    };
    // Each host twice: "with" the images, "without" them; the second time alice's old report is
    // gone, and secret.txt from inside the disks.
    settle();
    t.backup("without", &[&src]);
    images(&unix, "work1");
    t.backup("with", &[&src]);
    let unix2 = t.path("src-unix2");
    run("cp", &[&"-a", &unix, &unix2]);
    fs::remove_file(unix2.join("secret.txt")).unwrap();
    fs::remove_file(home.join("old-report.txt")).unwrap();
    images(&unix2, "work2");
    t.backup("with", &[&src]);
    without_images();
    t.backup("without", &[&src]);

    // The catalog, as the portal's policy narrows it for alice.
    let cat = Catalog::open_read_only(&t.catalog_path()).unwrap();
    let scope = Scope { owner: Some(ALICE), paths: vec![home.as_os_str().as_bytes().to_vec()], ..Scope::default() };
    let inside = |v: &FileVersion| v.path.contains(".qcow2.d");
    let rows = |q: &Query, host: &str| -> Vec<FileVersion> {
        let q = Query { host: Some(host.into()), limit: rewind_catalog::MAX_LIMIT, ..q.clone() };
        let page = cat.find(&q).unwrap();
        assert!(page.next_offset.is_none());
        page.items
    };
    // What a result is apart from the snapshots that held it (the hosts' differ).
    let key = |v: &FileVersion| (v.path.clone(), v.kind.clone(), v.size, v.uid, v.mode, v.present, v.deleted.is_some());
    let queries = [
        ("everything", Query::default()),
        ("report", Query { name: Some(NameMatch::Substring("report".into())), ..Query::default() }),
        ("*.txt", Query { name: Some(NameMatch::Glob("*.txt".into())), ..Query::default() }),
        ("deleted", Query { deleted: true, ..Query::default() }),
    ];
    for (what, q) in &queries {
        let all = rows(q, "with");
        assert!(all.iter().any(inside), "{what}: without a scope, files inside images are found");
        let scoped = Query { scope: Some(scope.clone()), ..q.clone() };
        let with = rows(&scoped, "with");
        let bad: Vec<&str> = with.iter().filter(|v| inside(v)).map(|v| v.path.as_str()).collect();
        assert!(bad.is_empty(), "{what}: alice's scope holds rows inside images: {bad:?}");
        // The image file in her home is hers (the `home` rule); nothing inside it is.
        let image_file = in_home.display().to_string();
        let (mut a, mut b): (Vec<_>, Vec<_>) = (
            with.iter().filter(|v| v.path != image_file).map(key).collect(),
            rows(&scoped, "without").iter().map(key).collect(),
        );
        a.sort();
        b.sort();
        assert!(!a.is_empty(), "{what}: alice has files of her own");
        assert_eq!(a, b, "{what}: the same rows with and without the images, but the image file");
    }
    for disk in [&in_home, &elsewhere] {
        let p = format!("{}.d/p1/secret.txt", disk.display());
        assert!(!cat.history(Some("with"), p.as_bytes(), None).unwrap().is_empty(), "{p}");
        assert!(cat.history(Some("with"), p.as_bytes(), Some(&scope)).unwrap().is_empty(), "{p}");
    }

    // The portal, with the same rules.
    let users = t.path("users.toml");
    fs::write(
        &users,
        format!(
            "[users.ada]\nhash = \"{}\"\nrole = \"admin\"\n[users.alice]\nhash = \"{}\"\nuid = {ALICE}\nhome = \"{}\"\n",
            passwd_hash("ada-pw"),
            passwd_hash("alice-pw"),
            home.display()
        ),
    )
    .unwrap();
    let realm = format!("[[realm]]\nkind = \"file\"\nname = \"local\"\nusers_file = \"{}\"\n", users.display());
    let portal = Portal::start(&t.repo, &realm, "[authz]\nrules = [\"owner\", \"home\"]\n", "");
    let paths = |c: &Client, target: &str| -> Vec<String> {
        let r = c.get(target);
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        r.json()["items"].as_array().unwrap().iter().map(|v| v["path"].as_str().unwrap().to_string()).collect()
    };
    let alice = login(&portal.addr, "alice", "alice-pw");
    let found = paths(&alice, "/api/search?q=report&host=with");
    let mut want = [home.join("old-report.txt"), home.join("report-2026.txt")].map(|p| p.display().to_string());
    want.sort();
    let mut got = found.clone();
    got.sort();
    assert_eq!(got, want, "alice's own reports, nothing inside images");
    for target in ["/api/search?q=*&host=with&limit=1000", "/api/deleted?host=with&limit=1000"] {
        let got = paths(&alice, target);
        assert!(!got.is_empty() && got.iter().all(|p| !p.contains(".qcow2.d")), "{target}: {got:?}");
    }
    assert!(paths(&alice, "/api/deleted?host=with").contains(&home.join("old-report.txt").display().to_string()));
    let secret = format!("{}.d/p1/secret.txt", in_home.display());
    assert_eq!(alice.get(&format!("/api/history?host=with&path={}", enc(&secret))).status, 404);
    let ada = login(&portal.addr, "ada", "ada-pw");
    let mut found = paths(&ada, "/api/search?q=report.docx&host=with");
    found.sort();
    found.dedup(); // a version per disk
    let mut want = [&elsewhere, &in_home].map(|d| format!("{}.d/p1/docs/report.docx", d.display()));
    want.sort();
    assert_eq!(found, want, "the admin finds files inside images");
    assert_eq!(ada.get(&format!("/api/history?host=with&path={}", enc(&secret))).status, 200);
}
