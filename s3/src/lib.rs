//! A repository in an S3 bucket: AWS S3, Garage, Ceph RGW, MinIO or any service that speaks the S3
//! API, behind the store's [`Backend`] trait, so every command works on it unchanged.
//!
//! The S3 client is [OpenDAL](https://opendal.apache.org)'s (the one rustic's backends use): request
//! signing, credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_PROFILE` and the shared `~/.aws/config` and `credentials` files, retries with
//! exponential backoff and jitter on 5xx, throttling and timeouts, and paginated listings.
//!
//! Invariants:
//! - A repository file is one object under its final name, written by one PUT: S3 makes a PUT
//!   visible whole or not at all, so no partial object is ever seen (the local backend's temp
//!   file and rename give the same promise).
//! - The store is synchronous and has no async runtime; this crate owns a small tokio runtime of
//!   its own and every call waits for its request on a channel. So it may be called from any
//!   thread: rayon workers, FUSE workers, and the portal's tokio threads alike.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator, services};
use rewind_store::{Backend, Error, FileKind, Result};

/// Where an S3 repository is: `s3:http[s]://host[:port]/bucket[/prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// `http://host:port` or `https://host`.
    pub endpoint: String,
    pub bucket: String,
    /// The repository's folder in the bucket, without leading or trailing `/` ("" for the root).
    pub prefix: String,
}

/// Errors of parsing a location.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    #[error("{0:?} is not an S3 location: write s3:http[s]://host[:port]/bucket[/prefix]")]
    Syntax(String),
}

impl S3Location {
    /// Whether `s` names an S3 repository (rather than a directory).
    pub fn is_s3(s: &str) -> bool {
        s.starts_with("s3:")
    }

    pub fn parse(s: &str) -> std::result::Result<S3Location, LocationError> {
        let bad = || LocationError::Syntax(s.to_string());
        let rest = s.strip_prefix("s3:").ok_or_else(bad)?;
        let (scheme, rest) = rest.split_once("://").ok_or_else(bad)?;
        if scheme != "http" && scheme != "https" {
            return Err(bad());
        }
        let (host, path) = rest.split_once('/').ok_or_else(bad)?;
        let path = path.trim_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let valid_bucket = !bucket.is_empty()
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if host.is_empty() || host.contains(['?', '#', '@']) || !valid_bucket || path.contains("//") {
            return Err(bad());
        }
        Ok(S3Location {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3:{}/{}", self.endpoint, self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// How to reach the service, beyond what the location says.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// The signing region; by default `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile's, else
    /// `us-east-1`.
    pub region: Option<String>,
    /// Address buckets as `bucket.host` (AWS's default) instead of `host/bucket` (the default
    /// here, which every S3 service accepts, Garage and MinIO included).
    pub virtual_host_style: bool,
    /// The AWS profile to read credentials from (else `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// An access key id and secret to use instead of the environment's and the profile's.
    pub credentials: Option<(String, String)>,
}

/// The storage of the repository at `location`: an S3 location (`s3:...`, with
/// [`S3Options::from_env`]) or a local directory. What every program that opens a repository by
/// name calls: the command line and the portal.
pub fn storage_at(location: &std::path::Path) -> Result<std::sync::Arc<dyn Backend>> {
    match location.to_str().filter(|s| S3Location::is_s3(s)) {
        Some(s) => {
            let l = S3Location::parse(s).map_err(|e| Error::InvalidInput(e.to_string()))?;
            Ok(std::sync::Arc::new(S3Backend::new(&l, &S3Options::from_env())?))
        }
        None => Ok(std::sync::Arc::new(rewind_store::LocalBackend::new(location))),
    }
}

impl S3Options {
    /// Options from the environment beyond the AWS conventions the client reads itself:
    /// `REWIND_S3_VIRTUAL_HOST_STYLE=1` addresses buckets as `bucket.host`.
    pub fn from_env() -> S3Options {
        let on = |v: &str| matches!(std::env::var(v).as_deref(), Ok("1" | "true" | "yes"));
        S3Options { virtual_host_style: on("REWIND_S3_VIRTUAL_HOST_STYLE"), ..S3Options::default() }
    }
}

/// A repository in a bucket.
pub struct S3Backend {
    op: Operator,
    location: S3Location,
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

impl S3Backend {
    /// A backend for `location`. Makes no request: a missing bucket or wrong credentials are
    /// reported by the first call (see [`S3Backend::probe`]).
    pub fn new(location: &S3Location, opts: &S3Options) -> Result<S3Backend> {
        // OpenDAL's HTTP client is reqwest over rustls; its TLS takes the process's default
        // provider, which is ring, as everywhere in rewind (unless someone installed one first).
        // Both calls are first-install-wins, so a second backend changes nothing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal_http_transport_reqwest::install_default();
        let region = opts
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty());
        let mut builder = services::S3::default()
            .endpoint(&location.endpoint)
            .bucket(&location.bucket)
            .root(&format!("/{}", location.prefix));
        if let Some(r) = &region {
            builder = builder.region(r);
        } else {
            // No region anywhere: the profile may have one; else the S3 default.
            builder = builder.region("us-east-1");
        }
        if let Some(p) = &opts.profile {
            builder = builder.profile(p);
        }
        if let Some((id, secret)) = &opts.credentials {
            builder = builder.access_key_id(id).secret_access_key(secret);
        }
        if opts.virtual_host_style {
            builder = builder.enable_virtual_host_style();
        }
        let op = Operator::new(builder)
            .map_err(|e| remote_error(location, "", e))?
            // Timeouts first, so that a request that hangs is retried like one that failed.
            .layer(TimeoutLayer::new().with_timeout(Duration::from_secs(120)).with_io_timeout(Duration::from_secs(30)))
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(8))
                    .with_max_times(6),
            );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Io { path: PathBuf::from(location.to_string()), source: e })?;
        Ok(S3Backend { op, location: location.clone(), rt: Some(rt) })
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// Check that the bucket exists and the credentials may list it: one clear error otherwise.
    pub fn probe(&self) -> Result<()> {
        let op = self.op.clone();
        self.call("", async move { op.list_with("/").limit(1).await.map(|_| ()) })
    }

    /// Run one request on our runtime and wait for it. Works from any thread, async or not: the
    /// caller blocks on a channel, never enters the runtime.
    fn call<T: Send + 'static>(
        &self,
        key: &str,
        fut: impl Future<Output = opendal::Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.as_ref().expect("runtime lives until drop").spawn(async move {
            let _ = tx.send(fut.await);
        });
        let result = rx.recv().map_err(|_| Error::Io {
            path: PathBuf::from(format!("{}/{key}", self.location)),
            source: io::Error::other("the S3 client stopped"),
        })?;
        result.map_err(|e| remote_error(&self.location, key, e))
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which is not allowed on an async thread (the
        // portal may drop us on one); nothing of ours is left running, so do not wait.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One error of the store for one of OpenDAL's: not found stays not found (the store relies on
/// it: a pack a prune removed is looked up again), a missing bucket and refused credentials say
/// so, and the rest names the object and the service's own code and message, on one line.
fn remote_error(location: &S3Location, key: &str, e: opendal::Error) -> Error {
    let path = PathBuf::from(if key.is_empty() { location.to_string() } else { format!("{location}/{key}") });
    let answer = service_answer(&e);
    if answer.as_ref().is_some_and(|(code, _)| code == "NoSuchBucket") {
        return Error::InvalidInput(format!(
            "bucket {:?} does not exist at {} (create it first)",
            location.bucket, location.endpoint
        ));
    }
    let kind = match e.kind() {
        ErrorKind::NotFound => return Error::NotFound(format!("{} (in {location})", key_display(key))),
        ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
        ErrorKind::ConfigInvalid => io::ErrorKind::InvalidInput,
        ErrorKind::AlreadyExists | ErrorKind::ConditionNotMatch => io::ErrorKind::AlreadyExists,
        _ => io::ErrorKind::Other,
    };
    let detail = match answer {
        Some((code, message)) if code.contains("AccessKey") || code.contains("Signature") || code == "AccessDenied" => {
            format!(
                "the service refused the credentials ({code}: {message}); check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION"
            )
        }
        Some((code, message)) => format!("{code}: {message}"),
        // No answer from the service (connection refused, timeout...): OpenDAL's own words,
        // without its multi-line context.
        None => {
            // The innermost cause says it best ("Connection refused").
            let mut cause = std::error::Error::source(&e);
            let mut last = None;
            while let Some(c) = cause {
                last = Some(c.to_string());
                cause = c.source();
            }
            match last {
                Some(l) => format!("{}: {l}", e.message()),
                None => e.message().to_string(),
            }
        }
    };
    Error::Io { path, source: io::Error::new(kind, detail.replace('\n', " ")) }
}

/// The S3 error code and message of a refused request, when the service sent one.
fn service_answer(e: &opendal::Error) -> Option<(String, String)> {
    let text = format!("{e:?}");
    let field = |name: &str| {
        let start = text.find(&format!("{name}: \""))? + name.len() + 3;
        let len = text[start..].find('"')?;
        Some(text[start..start + len].to_string())
    };
    Some((field("code")?, field("message").unwrap_or_default()))
}

fn key_display(key: &str) -> String {
    match key.split_once('/') {
        Some(("data", rest)) => format!("pack {}", rest.rsplit('/').next().unwrap_or(rest)),
        Some((dir, name)) => format!("{} {name}", dir.trim_end_matches('s')),
        None => key.to_string(),
    }
}

impl Backend for S3Backend {
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let key = kind.relative_path(name);
        let op = self.op.clone();
        let k = key.clone();
        self.call(&key, async move { op.read(&k).await.map(|b| b.to_vec()) })
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = kind.relative_path(name);
        let op = self.op.clone();
        let k = key.clone();
        let end = offset + len as u64;
        let read = self.call(&key, async move { op.read_with(&k).range(offset..end).await.map(|b| b.to_vec()) });
        match read {
            Ok(b) if b.len() == len => Ok(b),
            // A range over the end (OpenDAL wants the whole range; the contract is a short read,
            // as from a file): clamp it to the object's length and read again. The store reads
            // exact blob ranges, so this is the rare case.
            Ok(_) | Err(Error::Io { .. }) => {
                let size = self.len(kind, name)?;
                if offset >= size {
                    return Ok(Vec::new());
                }
                let end = end.min(size);
                let op = self.op.clone();
                let k = key.clone();
                self.call(&key, async move { op.read_with(&k).range(offset..end).await.map(|b| b.to_vec()) })
            }
            Err(e) => Err(e),
        }
    }

    fn len(&self, kind: FileKind, name: &str) -> Result<u64> {
        let key = kind.relative_path(name);
        let op = self.op.clone();
        let k = key.clone();
        self.call(&key, async move { op.stat(&k).await.map(|m| m.content_length()) })
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let key = kind.relative_path(name);
        let op = self.op.clone();
        let k = key.clone();
        let body = data.to_vec();
        // One PUT of the whole object (up to 5 GiB; packs are 16 MiB): atomic on every S3.
        self.call(&key, async move { op.write(&k, body).await.map(|_| ()) })
    }

    fn list(&self, kind: FileKind) -> Result<Vec<String>> {
        if kind == FileKind::Config {
            return Ok(vec!["config".into()]);
        }
        let dir = format!("{}/", kind.dir());
        let op = self.op.clone();
        let d = dir.clone();
        let entries = self.call(&dir, async move { op.list_with(&d).recursive(true).await });
        let entries = match entries {
            Ok(e) => e,
            // No object of that kind yet.
            Err(Error::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out: Vec<String> = entries
            .iter()
            .filter(|e| e.metadata().is_file())
            .filter_map(|e| e.path().rsplit('/').next().map(str::to_string))
            .filter(|n| !n.is_empty() && !n.starts_with('.'))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let key = kind.relative_path(name);
        let op = self.op.clone();
        let k = key.clone();
        match self.call(&key, async move { op.delete(&k).await }) {
            Err(Error::NotFound(_)) => Ok(()),
            r => r,
        }
    }

    /// A conditional PUT (`If-None-Match: *`), after a look: services that honour the header
    /// (AWS S3, MinIO, Ceph RGW) give exactly one winner among concurrent callers; one that
    /// ignores it (Garage 2.5) still refuses a name that already exists when we look, and the
    /// read-back below catches a racing writer that put last. The store uses this only for a new
    /// repository's config (FORMAT.md, "Object storage").
    fn put_new(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let exists = || Error::AlreadyExists(PathBuf::from(format!("{}/{}", self.location, kind.relative_path(name))));
        match self.len(kind, name) {
            Ok(_) => return Err(exists()),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let key = kind.relative_path(name);
        let op = self.op.clone();
        let k = key.clone();
        let body = data.to_vec();
        match self.call(&key, async move { op.write_with(&k, body).if_not_exists(true).await.map(|_| ()) }) {
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => return Err(exists()),
            r => r?,
        }
        if self.get(kind, name)? != data {
            return Err(exists());
        }
        Ok(())
    }

    fn modified(&self, kind: FileKind, name: &str) -> Result<std::time::SystemTime> {
        let key = kind.relative_path(name);
        let op = self.op.clone();
        let k = key.clone();
        let meta = self.call(&key, async move { op.stat(&k).await })?;
        meta.last_modified().map(std::time::SystemTime::from).ok_or_else(|| Error::Io {
            path: PathBuf::from(format!("{}/{key}", self.location)),
            source: io::Error::other("the service gave no Last-Modified time"),
        })
    }

    fn location(&self) -> String {
        self.location.to_string()
    }

    /// A new repository needs a reachable bucket with nothing of a repository under the prefix.
    fn prepare_new(&self) -> Result<()> {
        self.probe()?;
        let op = self.op.clone();
        let taken = self.call("", async move { op.list_with("/").limit(1).await })?;
        if taken.iter().any(|e| e.path() != "/" && !e.path().is_empty()) {
            return Err(Error::AlreadyExists(PathBuf::from(self.location.to_string())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let l = S3Location::parse("s3:http://127.0.0.1:3900/backups/site-a/repo1").unwrap();
        assert_eq!(l.endpoint, "http://127.0.0.1:3900");
        assert_eq!(l.bucket, "backups");
        assert_eq!(l.prefix, "site-a/repo1");
        assert_eq!(l.to_string(), "s3:http://127.0.0.1:3900/backups/site-a/repo1");
        let l = S3Location::parse("s3:https://s3.example.com/b/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("b", ""));
        for bad in [
            "s3:ftp://h/b",
            "s3:http://h",
            "s3:http:///b",
            "s3:http://h/",
            "s3:http://h/Bucket",
            "http://h/b",
            "s3:http://h/b//x",
            "s3:http://u@h/b",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad} parsed");
        }
        assert!(S3Location::is_s3("s3:http://h/b") && !S3Location::is_s3("/srv/repo"));
    }

    #[test]
    fn not_found_names_the_object() {
        let l = S3Location::parse("s3:http://h/b/p").unwrap();
        let e = remote_error(&l, "data/ab/abcd", opendal::Error::new(ErrorKind::NotFound, "gone"));
        assert!(matches!(&e, Error::NotFound(m) if m.starts_with("pack abcd")), "{e}");
        let e = remote_error(&l, "index/x", opendal::Error::new(ErrorKind::PermissionDenied, "InvalidAccessKeyId"));
        assert!(matches!(&e, Error::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied), "{e}");
    }
}
