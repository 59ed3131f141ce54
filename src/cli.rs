//! The command line, as clap derive structs. One variant per command; the code of each lives in
//! `cmd/<name>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "rewind", version, about = "Deduplicating backups you can browse, mount and restore from")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The repository, from `--repo` or `REWIND_REPO`, and what opens it.
#[derive(Args, Debug, Clone)]
pub struct RepoArg {
    /// Repository: a directory, or s3:http[s]://host[:port]/bucket[/prefix]
    #[arg(long, short = 'r', env = "REWIND_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub key: KeyArgs,
    /// The file catalog behind find, deleted and history [default: catalog.sqlite in the repository's cache folder]
    #[arg(long, env = "REWIND_CATALOG", value_name = "FILE")]
    pub catalog: Option<PathBuf>,
}

/// Where an encrypted repository's password or raw key comes from; never the command line.
/// Without any of these, `REWIND_PASSWORD` is used, else the password is asked on the terminal.
#[derive(Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// Read the password from the first line of FILE
    #[arg(long, env = "REWIND_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Run COMMAND (with sh -c) and take the first line it prints as the password
    #[arg(long, env = "REWIND_PASSWORD_COMMAND", value_name = "COMMAND")]
    pub password_command: Option<String>,
    /// Open the repository with a raw key file instead of a password (see `rewind key add`)
    #[arg(long, env = "REWIND_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new, empty repository
    Init(InitArgs),
    /// Back up files and directories into a new snapshot
    Backup(BackupArgs),
    /// List snapshots
    Snapshots(SnapshotsArgs),
    /// List the files of a snapshot
    Ls(LsArgs),
    /// Restore a snapshot, or a path in it, into a directory
    Restore(RestoreArgs),
    /// Verify the repository's structure and, with --read-data, every stored byte
    Check(CheckArgs),
    /// Recreate the index from the packs
    RebuildIndex(RepoArg),
    /// Remove stale locks (of processes that are gone or unrefreshed for 30 minutes)
    Unlock(UnlockArgs),
    /// Remove snapshots by retention policy or by id (their data goes with `prune`)
    Forget(ForgetArgs),
    /// Delete data no snapshot uses; safe while backups, mounts and the portal run
    Prune(PruneArgs),
    /// Copy snapshots to another repository, with only the data it lacks
    Copy(CopyArgs),
    /// Mount every snapshot read-only (FUSE) and serve it until unmounted or interrupted
    Mount(MountArgs),
    /// Run the restore portal (web server) configured by a portal.toml
    Serve(ServeArgs),
    /// Print an argon2id hash of a password (read from stdin) for the portal's file realm
    Passwd(PasswdArgs),
    /// Search every version of every file in every snapshot, by name (substring or glob)
    Find(crate::cmd::catalog::FindArgs),
    /// Files deleted: in an earlier snapshot, absent from their host's latest
    Deleted(crate::cmd::catalog::DeletedArgs),
    /// Every version of one path, with the snapshots that held it
    History(crate::cmd::catalog::HistoryArgs),
    /// Maintain the file catalog behind find, deleted and history
    #[command(subcommand)]
    Catalog(crate::cmd::catalog::CatalogCommand),
    /// Try rewind: a sample file server with history, backed up and served by the portal
    Demo(DemoArgs),
    /// Manage the keys (passwords, raw key files) of an encrypted repository
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the key files; `*` marks the one that opened the repository
    List(KeyListArgs),
    /// Add a key: a new password (asked, or --new-password-file/--new-password-command/
    /// REWIND_NEW_PASSWORD), or a new raw key file written to --new-raw-key-file
    Add(KeyAddArgs),
    /// Remove a key file (not the last one, nor the one in use)
    Remove(KeyRemoveArgs),
    /// Change the password: add a key with the new password, then remove the one in use
    Passwd(KeyAddArgs),
}

#[derive(Args, Debug)]
pub struct KeyListArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct KeyAddArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub new: NewKeyArgs,
}

#[derive(Args, Debug)]
pub struct KeyRemoveArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// The key file's id (a unique prefix will do)
    pub id: String,
}

/// Where a new password or raw key comes from.
#[derive(Args, Debug, Clone, Default)]
pub struct NewKeyArgs {
    /// Read the new password from the first line of FILE
    #[arg(long, env = "REWIND_NEW_PASSWORD_FILE", value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    /// Run COMMAND (with sh -c) and take the first line it prints as the new password
    #[arg(long, value_name = "COMMAND")]
    pub new_password_command: Option<String>,
    /// Make a new raw key instead of a password, and write it to FILE (which must not exist)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["new_password_file", "new_password_command"])]
    pub new_raw_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where to create the repository (an empty or missing directory)
    #[arg(env = "REWIND_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// Smallest chunk, bytes
    #[arg(long, hide = true)]
    pub chunk_min: Option<u32>,
    /// Average chunk, bytes
    #[arg(long, hide = true)]
    pub chunk_avg: Option<u32>,
    /// Largest chunk, bytes
    #[arg(long, hide = true)]
    pub chunk_max: Option<u32>,
    /// zstd level
    #[arg(long, hide = true)]
    pub compression_level: Option<i32>,
    /// Store everything in plaintext (format version 1): anyone who can read the repository
    /// reads every file in it
    #[arg(long)]
    pub insecure_no_encryption: bool,
    /// Cut and name content as the repository FROM does (its chunker and id keys), so that
    /// `rewind copy` between the two deduplicates; FROM opens with --from-password-file,
    /// --from-key-file or REWIND_FROM_PASSWORD, else with the new repository's password
    #[arg(long, value_name = "FROM", conflicts_with = "insecure_no_encryption")]
    pub copy_chunker_params: Option<PathBuf>,
    #[command(flatten)]
    pub from_key: FromKeyArgs,
    /// Where the new repository's password comes from (as for any command; asked twice on a
    /// terminal otherwise)
    #[command(flatten)]
    pub key: KeyArgs,
    /// Protect the repository with a new raw key, written to FILE (which must not exist),
    /// instead of a password: for unattended backups
    #[arg(long, value_name = "FILE", conflicts_with = "insecure_no_encryption")]
    pub new_raw_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

/// The cost of a password's key derivation, recorded in its key file.
#[derive(Args, Debug, Clone, Default)]
pub struct KdfArgs {
    /// argon2id memory, KiB (the tests make it small)
    #[arg(long, hide = true, env = "REWIND_KDF_MEMORY_KIB", default_value_t = 64 * 1024)]
    pub kdf_memory_kib: u32,
    /// argon2id passes
    #[arg(long, hide = true, env = "REWIND_KDF_ITERATIONS", default_value_t = 3)]
    pub kdf_iterations: u32,
}

/// What opens a second repository (`init --copy-chunker-params`).
#[derive(Args, Debug, Clone, Default)]
pub struct FromKeyArgs {
    #[arg(long, env = "REWIND_FROM_PASSWORD_FILE", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    #[arg(long, value_name = "COMMAND")]
    pub from_password_command: Option<String>,
    #[arg(long, env = "REWIND_FROM_KEY_FILE", value_name = "FILE")]
    pub from_key_file: Option<PathBuf>,
}

/// What opens the target of `copy`.
#[derive(Args, Debug, Clone, Default)]
pub struct ToKeyArgs {
    /// Read the target's password from FILE [default: the source's password or key]
    #[arg(long, env = "REWIND_TO_PASSWORD_FILE", value_name = "FILE")]
    pub to_password_file: Option<PathBuf>,
    #[arg(long, value_name = "COMMAND")]
    pub to_password_command: Option<String>,
    #[arg(long, env = "REWIND_TO_KEY_FILE", value_name = "FILE")]
    pub to_key_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Host name recorded in the snapshot [default: this machine's]
    #[arg(long)]
    pub host: Option<String>,
    /// Tag for the snapshot (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Leave out entries matching GLOB: without `/` it matches names, with `/` absolute paths
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Read every file, even those unchanged since the parent snapshot
    #[arg(long)]
    pub force: bool,
    /// Print the new snapshot as JSON
    #[arg(long)]
    pub json: bool,
    /// Files and directories to back up
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Only this host's snapshots
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Snapshot id prefix, or `latest`
    pub snapshot: String,
    /// Directory or file inside the snapshot
    pub path: Option<String>,
    /// With `latest`: the newest of this host's snapshots
    #[arg(long)]
    pub host: Option<String>,
    /// List subdirectories too
    #[arg(long, short = 'R')]
    pub recursive: bool,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// SNAPSHOT or SNAPSHOT:PATH (snapshot id prefix or `latest`)
    #[arg(value_name = "SNAPSHOT[:PATH]")]
    pub what: String,
    /// Directory to restore into (created if missing)
    #[arg(long, short = 't')]
    pub target: PathBuf,
    /// With `latest`: the newest of this host's snapshots
    #[arg(long)]
    pub host: Option<String>,
    /// Do not restore owners even when running as root
    #[arg(long)]
    pub no_owners: bool,
    /// What to do with entries that exist in the target: replace them (always), replace files
    /// whose content differs (if-changed), or keep them (never). Without it, restore refuses to
    /// replace anything
    #[arg(long, value_name = "WHEN", value_enum)]
    pub overwrite: Option<OverwriteArg>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum OverwriteArg {
    Always,
    IfChanged,
    Never,
}

#[derive(Args, Debug)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Remove every lock, live ones too: only when no rewind process uses the repository
    #[arg(long)]
    pub remove_all: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Read every blob back and verify its BLAKE3
    #[arg(long)]
    pub read_data: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The portal's configuration (see portal/portal.example.toml)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to build the demo (rebuilt from scratch on every run)
    #[arg(long, default_value = "rewind-demo")]
    pub dir: PathBuf,
    /// Address for the portal [default: 127.0.0.1:8080, or a free port if that is taken]
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
pub struct PasswdArgs {
    /// Print a ready `[users.NAME]` entry for this login name
    pub user: Option<String>,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Memory for decompressed chunks, e.g. 256M or 1G
    #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: u64,
    /// Let every local user in; the kernel checks the snapshot's modes and owners
    #[arg(long)]
    pub allow_other: bool,
    /// Do not ask idle CPUs to poll instead of sleeping while requests flow (as root, the
    /// mount holds a CPU latency request of 0 during bursts of requests, for faster walks)
    #[arg(long)]
    pub no_latency_hint: bool,
    /// An empty directory to mount on
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

/// A size in bytes: a number with an optional K, M, G or T suffix (powers of 1024; `iB` or `B`
/// may follow).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size like 512M or 2G"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Snapshots to remove (id prefixes); without them, apply the --keep-* policy
    pub snapshots: Vec<String>,
    /// Only this host's snapshots
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_last: usize,
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_hourly: usize,
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_daily: usize,
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_weekly: usize,
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_monthly: usize,
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_yearly: usize,
    /// Keep everything this recent, relative to the group's newest snapshot (e.g. 30d, 1y6m, 36h)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Say what would be removed, remove nothing
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Say what would be freed, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Rewrite at most this percentage of the repository to free partly used packs
    #[arg(long, default_value_t = 50, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub max_repack: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// The target repository
    #[arg(long, value_name = "REPO2")]
    pub to: PathBuf,
    #[command(flatten)]
    pub to_key: ToKeyArgs,
    /// Snapshots to copy (id prefixes or `latest`); default: all (of --host)
    pub snapshots: Vec<String>,
    #[arg(long)]
    pub host: Option<String>,
}
