//! What every handler shares.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use rewind_store::View;
use tokio::sync::Semaphore;

use crate::audit::AuditLog;
use crate::auth::{Authenticator, Lookups};
use crate::authz::Policy;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::Keys;
use crate::throttle::Throttle;

pub struct Portal {
    pub config: Config,
    pub view: Arc<View>,
    pub realms: Vec<Box<dyn Authenticator>>,
    pub keys: Keys,
    pub policy: Policy,
    pub audit: AuditLog,
    pub user_throttle: Throttle,
    pub addr_throttle: Throttle,
    pub metrics: Metrics,
    /// Bounds concurrent repository reads (each decompresses a chunk): memory stays flat however
    /// many downloads run.
    pub reads: Arc<Semaphore>,
    pub catalog: crate::catalog::Catalog,
    /// Seals the paging cursors of search and deleted.
    pub cursors: crate::cursor::CursorKey,
    /// Realm lookups of session renewals, shared by requests running at once.
    pub lookups: Lookups,
}

/// Cheap to clone; the router's state.
#[derive(Clone)]
pub struct AppState(pub Arc<Portal>);

impl Deref for AppState {
    type Target = Portal;
    fn deref(&self) -> &Portal {
        &self.0
    }
}

/// The scratch file of decompressed chunks (see `chunk_spill_mib`), created private and unlinked
/// at once: nobody else can open it, and it is gone when the portal exits however it ends.
fn spill_file(config: &Config) -> anyhow::Result<Option<std::fs::File>> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    if config.chunk_spill_mib == 0 {
        return Ok(None);
    }
    let dir = match &config.chunk_spill_dir {
        Some(d) => d.clone(),
        None => {
            let tmp = std::env::temp_dir();
            if is_tmpfs(&tmp) {
                tracing::info!("no chunk spill file: {} is a tmpfs (set chunk_spill_dir)", tmp.display());
                return Ok(None);
            }
            tmp
        }
    };
    let name = dir.join(format!(".rewind-portal-spill-{:016x}", rand::random::<u64>()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&name)
        .with_context(|| format!("creating the chunk spill file {}", name.display()))?;
    std::fs::remove_file(&name).with_context(|| format!("unlinking {}", name.display()))?;
    tracing::info!("chunk spill file in {} (up to {} MiB)", dir.display(), config.chunk_spill_mib);
    Ok(Some(file))
}

fn is_tmpfs(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data, for which all zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statfs struct to fill.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    // The two types differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    let tmpfs = st.f_type as i64 == libc::TMPFS_MAGIC as i64;
    ok && tmpfs
}

impl AppState {
    /// Open the repository, realms, key, audit log and catalog named by a configuration.
    pub fn new(config: Config) -> anyhow::Result<AppState> {
        use anyhow::Context;
        let storage = rewind_s3::storage_at(&config.repository)
            .with_context(|| format!("opening repository {}", config.repository.display()))?;
        let secret = match rewind_store::Repository::head_in(&*storage)
            .with_context(|| format!("opening repository {}", config.repository.display()))?
            .encryption
        {
            rewind_store::Encryption::None => None,
            _ => Some(config.repository_secret().read()?.with_context(|| {
                format!(
                    "repository {} is encrypted: set repository_password_file or repository_key_file in the config, or REWIND_PASSWORD_FILE, REWIND_KEY_FILE or REWIND_PASSWORD",
                    config.repository.display()
                )
            })?),
        };
        let repo = rewind_store::Repository::open_in(storage, secret.as_ref())
            .with_context(|| format!("opening repository {}", config.repository.display()))?;
        // No opened groups kept: a group holds the files of other users, and whether one of them
        // was read lately must not show in how fast a user's own file comes (store/FORMAT.md,
        // "Groups"). Each read of a small file opens its group (about half a millisecond).
        let caches = rewind_store::CacheSizes {
            chunk_bytes: config.chunk_cache_mib << 20,
            tree_bytes: 32 << 20,
            group_bytes: 0,
        };
        let view = Arc::new(View::new(repo.open_indexed(caches)?)?);
        if let Some(file) = spill_file(&config)? {
            view.repo().set_chunk_spill(file, config.chunk_spill_mib << 20);
        }
        let secret = match (&config.session.key, &config.session.key_file) {
            (Some(k), _) => {
                use base64::Engine;
                let k =
                    base64::engine::general_purpose::STANDARD.decode(k.trim()).context("session.key is not base64")?;
                anyhow::ensure!(k.len() >= 32, "session.key must be at least 32 bytes");
                k
            }
            (None, Some(p)) => crate::session::load_or_create_key(p)?,
            (None, None) => anyhow::bail!("no session key configured"),
        };
        let cursors = crate::cursor::CursorKey::derive(&secret);
        let mut keys = Keys::new(&secret, &config.session, config.tls.is_some());
        if let Some(p) = &config.session.key_file {
            let mut name = p.as_os_str().to_owned();
            name.push(".revoked");
            keys = keys.with_legacy_revocations(std::path::Path::new(&name))?;
        }
        // Logouts live in the repository, where every replica serving it reads them.
        keys = keys.with_shared_revocations(view.repo().repo().clone())?;
        let realms = crate::auth::build_realms(&config)?;
        if config.public_url.is_none() && config.allowed_hosts.is_empty() {
            tracing::warn!(
                "public_url is not set: logins and other state-changing requests are answered only for IP addresses and localhost (set public_url to the address users reach the portal at)"
            );
        }
        let audit = AuditLog::open(&config.audit_log)?;
        let window = Duration::from_secs(config.limits.window_secs);
        let catalog = crate::catalog::Catalog::open(&config, view.clone())?;
        let reads =
            Arc::new(Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) * 2 + 2));
        let state = AppState(Arc::new(Portal {
            policy: Policy::new(&config.authz, config.realms.len()),
            user_throttle: Throttle::new(config.limits.failures_per_user, window),
            addr_throttle: Throttle::new(config.limits.failures_per_address, window),
            config,
            view,
            realms,
            keys,
            audit,
            metrics: Metrics::default(),
            reads,
            catalog,
            cursors,
            lookups: Lookups::default(),
        }));
        // The logouts of the other replicas, read every few seconds (off the request path).
        let st = state.clone();
        let every = crate::session::revocation_poll_interval(st.config.session.ttl_secs);
        std::thread::Builder::new().name("revocations".into()).spawn(move || {
            loop {
                std::thread::sleep(every);
                if let Err(e) = st.keys.poll_revocations() {
                    tracing::warn!("cannot read the session revocations: {e}");
                }
            }
        })?;
        // What lies below every folder of every snapshot, summed up before users ask (off the
        // request path: see `reach`); a snapshot asked for first waits for its own.
        let st = state.clone();
        std::thread::Builder::new().name("reach".into()).spawn(move || {
            for (_, e) in st.view.snapshots().into_iter().rev() {
                if let Err(err) = st.policy.prepare(&st.view, e.snapshot.tree) {
                    tracing::warn!("snapshot {}: cannot sum up its folders yet: {err}", e.id.short());
                }
            }
        })?;
        Ok(state)
    }
}
