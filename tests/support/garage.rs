//! Real Garage servers for the tests: a single node shared by the whole test binary (each test
//! takes a prefix of its own in one bucket), and throwaway clusters for the fault tests. Garage is
//! the real S3 service rewind is tested against; `scripts/test.sh` installs it when missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The test key: Garage wants `GK` and 24 hex digits, and a 64-digit secret.
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const BUCKET: &str = "rewind-tests";
pub const REGION: &str = "garage";

/// Put the test key and region in this process's environment, where the S3 backend (in process)
/// and every child (rewind commands, portals, mounts) find them, as AWS's conventions have it.
pub fn credentials_in_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once for the whole test binary, to the same values every test uses; no
        // test reads or sets these variables otherwise.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", KEY_ID);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
            std::env::set_var("AWS_REGION", REGION);
        }
    });
}

/// The `garage` binary: `REWIND_GARAGE` (which `scripts/test.sh` sets to the one it installed),
/// else on PATH or in `~/.cargo/bin`.
pub fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REWIND_GARAGE") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("garage")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/garage"));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("the garage binary is missing: the S3 tests need a real Garage (scripts/test.sh installs it with `cargo install garage`)")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

struct Node {
    config: PathBuf,
    child: Option<Child>,
    s3_port: u16,
    rpc_port: u16,
}

/// A running Garage cluster on loopback, with one bucket and one key allowed on it.
pub struct Garage {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl Garage {
    /// Start `n` nodes with replication factor `n` (1 or 3), a layout, the key and the bucket.
    pub fn start(n: usize) -> Garage {
        // Missing, it fails here, loudly, before anything is made.
        garage_bin();
        let dir = tempfile::Builder::new().prefix("rewind-garage-").tempdir().expect("tempdir");
        let secret = "3bd0b4d3bd2a4a4c0f1d6e3e1f1c2b7a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a";
        let mut nodes = Vec::new();
        for i in 0..n {
            let root = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&root).unwrap();
            let (rpc_port, s3_port) = (free_port(), free_port());
            let config = root.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = {n}\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n",
                    meta = root.join("meta").display(),
                    data = root.join("data").display(),
                ),
            )
            .unwrap();
            nodes.push(Node { config, child: None, s3_port, rpc_port });
        }
        let mut g = Garage { dir, nodes };
        for i in 0..n {
            g.start_node(i);
        }
        let ids: Vec<String> = (0..n).map(|i| g.node_id(i)).collect();
        for (i, id) in ids.iter().enumerate().skip(1) {
            g.admin_retry(&["node", "connect", &format!("{id}@127.0.0.1:{}", g.nodes[i].rpc_port)]);
        }
        for (i, id) in ids.iter().enumerate() {
            g.admin_retry(&["layout", "assign", "-z", &format!("dc{i}"), "-c", "1G", id]);
        }
        g.admin_retry(&["layout", "apply", "--version", "1"]);
        g.admin_retry(&["key", "import", "--yes", "-n", "rewind-tests", KEY_ID, SECRET]);
        g.admin_retry(&["bucket", "create", BUCKET]);
        g.admin_retry(&["bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_ID]);
        g
    }

    /// The shared single node of this test binary, started on first use.
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Statics are never dropped, so the node is started from a thread that lives as long
            // as the test binary: the kernel kills the node when that thread goes (see start_node).
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("garage-shared".into())
                .spawn(move || {
                    tx.send(Garage::start(1)).expect("test binary waits");
                    loop {
                        std::thread::park();
                    }
                })
                .expect("spawn");
            rx.recv().expect("garage started")
        })
    }

    fn start_node(&mut self, i: usize) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(self.dir.path().join(format!("node{i}.log"))).unwrap();
        let mut cmd = Command::new(garage_bin());
        // SAFETY: prctl is async-signal-safe and touches only this (forked) process.
        unsafe {
            cmd.pre_exec(|| {
                // Killed with the thread that started it: no node outlives its test binary.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .arg("-c")
            .arg(&self.nodes[i].config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.nodes[i].child = Some(child);
    }

    /// Kill node `i` at once (SIGKILL), as a machine going away.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a killed node again.
    pub fn restart_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.start_node(i);
    }

    fn admin(&self, args: &[&str]) -> std::process::Output {
        Command::new(garage_bin()).arg("-c").arg(&self.nodes[0].config).args(args).output().expect("run garage")
    }

    /// Run an admin command, retrying while the node starts up.
    fn admin_retry(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.admin(args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn node_id(&self, i: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(garage_bin())
                .arg("-c")
                .arg(&self.nodes[i].config)
                .args(["node", "id", "-q"])
                .output()
                .expect("run garage");
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && !text.trim().is_empty() {
                return text.trim().split('@').next().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "garage node id: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// A fresh repository location in the bucket, served by node 0: `s3:http://.../bucket/<prefix>`.
    pub fn repo_url(&self, name: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!("s3:{}/{BUCKET}/{name}-{}-{}", self.endpoint(0), std::process::id(), N.fetch_add(1, Ordering::Relaxed))
    }

    /// Give a command the credentials and region of this cluster.
    pub fn env(cmd: &mut Command) -> &mut Command {
        cmd.env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", REGION)
            .env_remove("AWS_PROFILE")
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
