//! `rewind demo`: a sample file server with a few users and a history of edits and deletions,
//! backed up into a fresh repository, catalogued, and served by the portal on 127.0.0.1 with a
//! `file` realm of demo users. Deterministic: the same files, the same history, on every run.
//!
//! The demo directory is rebuilt from scratch on every run (it holds nothing but the demo); a
//! directory that is not a demo directory is never touched.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use rewind_store::{BackupOptions, BackupProgress, ChunkerParams, CompressionParams, NewKey, Repository, backup};

use crate::cli::{DemoArgs, KeyArgs, RepoArg};
use crate::cmd::open_indexed;

/// Marks a directory as made by `rewind demo`, so that a second run may replace it.
const MARKER: &str = ".rewind-demo";

/// The demo's people: login, display name, role, password.
const USERS: [(&str, &str, &str, &str); 5] = [
    ("alice", "Alice Martin", "user", "alice-demo"),
    ("bob", "Bob Dupont", "user", "bob-demo"),
    ("carol", "Carol Jones", "user", "carol-demo"),
    ("hank", "Hank (helpdesk)", "helpdesk", "hank-demo"),
    ("ada", "Ada (backup admin)", "admin", "ada-demo"),
];

/// Words for the sample documents.
const WORDS: [&str; 24] = [
    "budget", "meeting", "quarter", "report", "client", "project", "draft", "review", "summary", "invoice", "schedule",
    "holiday", "team", "plan", "notes", "contract", "offer", "minutes", "agenda", "forecast", "sales", "design",
    "release", "feedback",
];

/// The seeded generator the tests use too (ChaCha8: the same stream whatever the `rand`
/// version), so every run builds the same history.
struct Rng(rand_chacha::ChaCha8Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }
    fn below(&mut self, n: usize) -> usize {
        rand::Rng::random_range(&mut self.0, 0..n)
    }
    fn text(&mut self, words: usize) -> String {
        let mut s = String::new();
        for i in 0..words {
            s.push_str(WORDS[self.below(WORDS.len())]);
            s.push(if i % 12 == 11 { '\n' } else { ' ' });
        }
        s.push('\n');
        s
    }
}

/// A small valid PNG (a 160x120 checkerboard in one colour), for the preview.
fn png(rgb: [u8; 3]) -> Vec<u8> {
    fn crc(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn adler(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc(&body).to_be_bytes());
    }
    let (w, h) = (160u32, 120u32);
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0);
        for x in 0..w {
            let shade = if (x / 20 + y / 20) % 2 == 0 { 0 } else { 40 };
            raw.extend(rgb.iter().map(|c| c.saturating_sub(shade)));
        }
    }
    // zlib with one stored block.
    let mut z = vec![0x78, 0x01, 0x01];
    z.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    z.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    z.extend_from_slice(&raw);
    z.extend_from_slice(&adler(&raw).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// When the files of a generation were last changed: the demo's history spans the last weeks
/// (generation 0 about a month ago, each step a week later), though its backups run in seconds.
fn generation_time(generation: u32, rng: &mut Rng) -> std::time::SystemTime {
    let days_ago = 28 - 7 * generation as u64;
    let secs = days_ago * 86_400 + rng.below(5 * 86_400) as u64 + 3_600;
    std::time::SystemTime::now() - std::time::Duration::from_secs(secs)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Give every file changed in this generation (newer than `since`) a time of that generation.
fn age_files(root: &Path, since: std::time::SystemTime, generation: u32, rng: &mut Rng) -> Result<()> {
    for f in files_under(root) {
        let m = std::fs::metadata(&f)?;
        if m.modified()? >= since {
            std::fs::File::options().write(true).open(&f)?.set_modified(generation_time(generation, rng))?;
        }
    }
    Ok(())
}

/// Generation 0: every user's home with documents, pictures and projects; a shared folder.
fn make_files(server: &Path, rng: &mut Rng) -> Result<()> {
    for (login, ..) in USERS.iter().take(3) {
        let home = server.join("home").join(login);
        for i in 0..6 {
            let name = format!("{} {}.txt", WORDS[rng.below(WORDS.len())], 2026 - i % 3);
            let words = 60 + rng.below(400);
            write(&home.join("Documents").join(name), rng.text(words).as_bytes())?;
        }
        write(
            &home.join("Documents/Quarterly report.md"),
            format!("# Quarterly report ({login})\n\n{}", rng.text(300)).as_bytes(),
        )?;
        write(&home.join("Documents/budget.csv"), b"month,amount\njanuary,1200\nfebruary,1350\nmarch,990\n")?;
        write(&home.join("Pictures/holiday.png"), &png([70, 130, 220]))?;
        write(&home.join("Pictures/team.png"), &png([220, 120, 60]))?;
        for p in 0..3 {
            let dir = home.join("Projects").join(format!("project-{}", WORDS[(p * 5 + login.len()) % WORDS.len()]));
            for _ in 0..4 {
                let (name, words) = (WORDS[rng.below(WORDS.len())], 40 + rng.below(200));
                write(&dir.join(format!("{name}.txt")), rng.text(words).as_bytes())?;
            }
        }
        write(&home.join("notes.txt"), format!("{login}'s notes\n{}", rng.text(80)).as_bytes())?;
    }
    write(&server.join("shared/README.txt"), b"Shared folder of the demo file server.\n")?;
    Ok(())
}

/// Every file under `dir`, sorted (so that choices are deterministic).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out.sort();
    out
}

/// One generation of life on the file server: edits, new files, and deletions in every home.
fn step(server: &Path, generation: u32, rng: &mut Rng) -> Result<()> {
    for (login, ..) in USERS.iter().take(3) {
        let home = server.join("home").join(login);
        let files = files_under(&home);
        // Edit a few files (append a paragraph).
        for _ in 0..3 {
            let f = &files[rng.below(files.len())];
            if f.extension().is_some_and(|e| e == "png") {
                continue;
            }
            let mut text = std::fs::read(f)?;
            text.extend_from_slice(format!("\n-- edit {generation} --\n{}", rng.text(30)).as_bytes());
            std::fs::write(f, text)?;
        }
        // A new file.
        write(
            &home.join(format!("Documents/{} (gen {generation}).txt", WORDS[rng.below(WORDS.len())])),
            rng.text(100).as_bytes(),
        )?;
        // Deletions: two files, and in generation 2 a whole project folder.
        let files = files_under(&home);
        for _ in 0..2 {
            let f = &files[rng.below(files.len())];
            let _ = std::fs::remove_file(f);
        }
        if generation == 2 {
            let projects = home.join("Projects");
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(&projects)?.flatten().map(|e| e.path()).collect();
            dirs.sort();
            if let Some(d) = dirs.first() {
                std::fs::remove_dir_all(d)?;
            }
        }
    }
    // The quarterly report is always lost at the end: the demo's first thing to restore.
    if generation == 3 {
        let _ = std::fs::remove_file(server.join("home/alice/Documents/Quarterly report.md"));
    }
    Ok(())
}

/// Port 8080 if free, else any free port.
fn pick_listen(wanted: Option<SocketAddr>) -> Result<SocketAddr> {
    if let Some(a) = wanted {
        return Ok(a);
    }
    let free =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 8080)).or_else(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(free.local_addr()?)
}

pub fn run(a: DemoArgs) -> Result<ExitCode> {
    let dir = std::path::absolute(&a.dir)?;
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!("{} exists and is not a demo directory; choose another with --dir", dir.display());
        }
        if !empty {
            outln!("Starting fresh: removing the previous demo in {}", dir.display());
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    // The user's alone, whatever the umask: the demo's catalog is in it.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(&dir)?;
    std::fs::write(dir.join(MARKER), "made by `rewind demo`; removed and rebuilt by the next run\n")?;
    let server = dir.join("fileserver");
    let repo_path = dir.join("repo");

    outln!("Building a sample file server in {} ...", server.display());
    // Encrypted, as every repository is by default, with a raw key kept beside it (a real
    // deployment keeps the key apart from the repository).
    let key_path = dir.join("repo.key");
    let (secret, key_text) = rewind_store::Secret::new_raw_key();
    std::fs::write(&key_path, key_text.as_bytes())?;
    let key = NewKey::Encrypted { secret, kdf: rewind_store::KdfParams::default(), content_identity_of: None };
    Repository::init(&repo_path, ChunkerParams::default(), CompressionParams::default(), key)
        .with_context(|| format!("creating the repository {}", repo_path.display()))?;
    let repo_arg = RepoArg {
        repo: repo_path.clone(),
        key: KeyArgs { key_file: Some(key_path.clone()), ..KeyArgs::default() },
        catalog: None,
    };
    let mut rng = Rng::new(0x5eed_2026_0001);
    let generations = 4u32;
    for generation in 0..generations {
        let started = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
        if generation == 0 {
            make_files(&server, &mut rng)?;
        } else {
            step(&server, generation, &mut rng)?;
        }
        age_files(&server, started, generation, &mut rng)?;
        if generation > 0 {
            // Snapshots are named by their time: keep them apart.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let repo = open_indexed(&repo_arg)?;
        let opts = BackupOptions { paths: vec![server.clone()], host: "fileserver".into(), ..Default::default() };
        let report = |p: &Path, e: &rewind_store::Error| eprintln!("rewind: skipped {}: {e}", p.display());
        let saved = backup(&repo, &opts, &BackupProgress::default(), &report).context("backing up the demo")?;
        outln!("  backup {} of {generations}: snapshot {}", generation + 1, saved.id.short());
    }
    let repo = open_indexed(&repo_arg)?;
    // The demo's catalog stays in its folder, which the next demo removes.
    let catalog_path = dir.join("catalog.sqlite");
    let mut cat = rewind_catalog::Catalog::open(&catalog_path, &repo.repo().config().id.to_hex())
        .context("opening the catalog")?;
    let view = rewind_store::View::new(repo.clone()).context("reading the snapshots")?;
    cat.sync_view(&view).context("building the catalog")?;

    // Portal: a file realm of the demo users, homes as backed up, the `home` rule.
    let mut users = String::new();
    for (i, (login, name, role, password)) in USERS.iter().enumerate() {
        let hash = rewind_portal::hash_password(password)?;
        let home = server.join("home").join(login);
        users.push_str(&format!(
            "[users.{login}]\nhash = \"{hash}\"\nrole = \"{role}\"\nuid = {uid}\ngids = [{uid}]\nhome = \"{home}\"\ndisplay_name = \"{name}\"\n\n",
            uid = 2001 + i,
            home = home.display()
        ));
    }
    std::fs::write(dir.join("users.toml"), users)?;
    let listen = pick_listen(a.listen)?;
    let config = format!(
        "listen = \"{listen}\"\nrepository = \"{repo}\"\nrepository_key_file = \"repo.key\"\naudit_log = \"audit.jsonl\"\ncatalog = \"catalog.sqlite\"\n\n[session]\nkey_file = \"session.key\"\n\n\
         [authz]\nrules = [\"home\"]\n\n[[realm]]\nkind = \"file\"\nname = \"demo\"\nusers_file = \"users.toml\"\n",
        repo = repo_path.display()
    );
    let config_path = dir.join("portal.toml");
    std::fs::write(&config_path, config)?;
    let config = rewind_portal::Config::load(&config_path)?;

    outln!();
    outln!("rewind demo: {generations} backups of a file server with 3 users' homes, with edits and deletions.");
    outln!("  data:        {} (rebuilt from scratch by the next `rewind demo`)", dir.display());
    outln!();
    outln!("  Open http://{listen}/ and sign in as:");
    for (login, _, role, password) in USERS {
        outln!("    {login:<6} password {password:<11} ({role})");
    }
    outln!();
    outln!("  alice lost 'Quarterly report.md': she finds it under Recently deleted.");
    outln!("  The same backups as a filesystem (needs FUSE):");
    // The binary that runs now (`cargo run` leaves it in target/), so the command works as printed.
    let rewind = std::env::current_exe().map(|e| e.display().to_string()).unwrap_or_else(|_| "rewind".into());
    outln!(
        "    mkdir -p /tmp/rewind-mnt && {rewind} mount --repo {} --key-file {} /tmp/rewind-mnt",
        repo_path.display(),
        key_path.display()
    );
    outln!("  Portal configuration: {} (run it again with `rewind serve --config ...`)", config_path.display());
    outln!("  Stop with Ctrl-C.");
    outln!();
    crate::cmd::tune_allocator(None);
    rewind_portal::serve_blocking(config)?;
    Ok(ExitCode::SUCCESS)
}
