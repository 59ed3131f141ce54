//! Times the image reader on an image file: open, list the root, walk every directory (as
//! `find` does), and optionally read one file inside, with the bytes each step read from the
//! image file.
//!
//! ```sh
//! cargo run --release -p rewind-store --example image_walk -- IMAGE [VOLUME [PATH_INSIDE]]
//! ```
//! Evict the image from the page cache first for cold figures (`fadvise DONTNEED`, or
//! `dd if=IMAGE iflag=nocache count=0`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rewind_store::image::{FileReadAt, FileSystem, Image, Kind, ReadAt};

struct Counting {
    inner: FileReadAt,
    bytes: AtomicU64,
}

impl ReadAt for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read_at(offset, buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn find(fs: &dyn FileSystem, path: &[u8]) -> u64 {
    let mut n = 0;
    for e in fs.list(path).expect("list") {
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(image) = args.first() else {
        eprintln!("usage: image_walk IMAGE [VOLUME [PATH_INSIDE]]");
        std::process::exit(2);
    };
    let volume: usize = args.get(1).map_or(0, |v| v.parse().expect("VOLUME is a number"));
    let path = std::path::Path::new(image);
    let dir = path.parent().unwrap_or(std::path::Path::new(".")).to_path_buf();
    let file = Arc::new(Counting { inner: FileReadAt::open(path).expect("open image"), bytes: AtomicU64::new(0) });
    let resolve = move |name: &[u8]| -> Option<Arc<dyn ReadAt>> {
        let p = dir.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
        FileReadAt::open(&p).ok().map(|r| Arc::new(r) as Arc<dyn ReadAt>)
    };
    let step = |what: &str, t: Instant, file: &Counting| {
        let bytes = file.bytes.swap(0, Ordering::Relaxed);
        println!("{what:<28} {:>9.3} s  {bytes:>12} bytes read", t.elapsed().as_secs_f64());
    };

    let t = Instant::now();
    let img = Image::open(file.clone(), &resolve).expect("open");
    step(&format!("open ({:?}, {:?})", img.format, img.table), t, &file);
    let fs = img.volumes[volume].filesystem.as_ref().expect("filesystem").clone();

    let t = Instant::now();
    let root = fs.list(b"").expect("list root");
    step(&format!("list root ({} entries)", root.len()), t, &file);

    let t = Instant::now();
    let n = find(&*fs, b"");
    step(&format!("walk ({n} entries)"), t, &file);

    if let Some(inside) = args.get(2) {
        let st = fs.stat(inside.as_bytes()).expect("stat");
        let mut buf = vec![0u8; 128 << 10];
        let t = Instant::now();
        let mut off = 0;
        while off < st.size {
            let n = fs.read_at(inside.as_bytes(), off, &mut buf).expect("read");
            assert!(n > 0);
            off += n as u64;
        }
        let secs = t.elapsed().as_secs_f64();
        step(&format!("read {} MiB ({:.0} MiB/s)", st.size >> 20, st.size as f64 / secs / 1048576.0), t, &file);
    }
}
