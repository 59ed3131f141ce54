//! Downloads: one file streamed chunk by chunk (Range, ETag, safe Content-Disposition), and
//! folders or selections as a zip stream. Neither buffers a whole file nor writes a temp file;
//! repository reads go through a semaphore so memory stays flat under many downloads.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use rewind_store::{FileReader, Node, NodeKind};

use crate::api::{ClientAddr, audit_not_found, parse_snapshot, record, resolve, subject};
use crate::audit::Record;
use crate::authz::{Access, Resolved, Subject};
use crate::error::{ApiError, ApiResult};
use crate::query::Params;
use crate::session::Session;
use crate::state::AppState;

/// Size of the pieces an archive is written in.
const PIECE: usize = 256 * 1024;

/// Counts a stream as active and writes its audit record (with the bytes really sent) when it
/// ends, finished or not.
struct StreamGuard {
    state: AppState,
    record: Record,
    sent: u64,
    expected: Option<u64>,
    finished: bool,
}

impl StreamGuard {
    fn new(state: AppState, record: Record, expected: Option<u64>) -> StreamGuard {
        state.metrics.streams_active.fetch_add(1, Relaxed);
        StreamGuard { state, record, sent: 0, expected, finished: false }
    }

    fn finish(&mut self, ok: bool) {
        self.finished = ok;
    }

    fn add(&mut self, n: u64) {
        self.sent += n;
        self.state.metrics.bytes_sent.fetch_add(n, Relaxed);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.state.metrics.streams_active.fetch_sub(1, Relaxed);
        // With a known length the server may stop polling once it has sent every byte.
        let complete = match self.expected {
            Some(e) => e == self.sent,
            None => self.finished,
        };
        self.record.outcome = if complete { "ok".into() } else { "incomplete".into() };
        self.record.bytes = Some(self.sent);
        self.state.audit.write(std::mem::take(&mut self.record));
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: `Ok(None)` means "send everything"
/// (no Range; several ranges, which we may ignore; a header that is not a valid range, which
/// RFC 9110 says to ignore), `Err` means 416 (a valid range that lies outside the file).
fn parse_range(h: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(h) = h else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    let (start, end) = if a.is_empty() {
        // A suffix: the last n bytes.
        let Some(n) = b.parse::<u64>().ok().filter(|_| digits(b)) else { return Ok(None) };
        if n == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size)
    } else {
        let Some(start) = a.parse::<u64>().ok().filter(|_| digits(a)) else { return Ok(None) };
        let end = if b.is_empty() {
            size
        } else {
            let Some(last) = b.parse::<u64>().ok().filter(|_| digits(b)) else { return Ok(None) };
            if last < start {
                return Ok(None);
            }
            last.saturating_add(1).min(size)
        };
        (start, end)
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Whether an `If-None-Match` list holds `etag` (weak comparison, as RFC 9110 asks for it: `W/`
/// tags match their strong twin) or is `*`.
fn none_match(list: &str, etag: &str) -> bool {
    list.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// A name as a downloaded file or a zip entry may carry it: backslashes (a separator to
/// Windows and its extractors), colons (drive letters, alternate streams), slashes and control
/// characters become `_`.
pub(crate) fn safe_name(name: &str) -> String {
    name.chars().map(|c| if c.is_control() || matches!(c, '\\' | '/' | ':') { '_' } else { c }).collect()
}

/// `attachment; filename="ascii"; filename*=UTF-8''percent-encoded`, of the [`safe_name`].
pub(crate) fn content_disposition(name: &str) -> HeaderValue {
    let name = safe_name(name);
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() && !matches!(c, '"' | '%' | ';') || c == ' ' { c } else { '_' })
        .collect();
    let mut enc = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{enc}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

fn content_type(name: &str) -> HeaderValue {
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let text = if mime.type_() == mime_guess::mime::TEXT && mime.get_param("charset").is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// Headers every download carries: never rendered in the portal's origin.
fn harden(h: &mut HeaderMap) {
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
}

/// How far ahead of a download chunks are decompressed in parallel.
const READAHEAD_BYTES: u64 = 16 << 20;

/// Warm the chunks after `pos` (up to `end`) on other threads, as far as read permits are free
/// right now: a lone download uses every core, many downloads do not multiply the work.
fn read_ahead(state: &AppState, r: &Arc<FileReader>, pos: u64, end: u64, warmed: &mut usize) {
    let Some(idx) = r.chunk_index(pos) else { return };
    let plan = r.plan_ahead(idx, READAHEAD_BYTES, end);
    let mut j = (*warmed).max(plan.start);
    while j < plan.end {
        let Ok(permit) = state.reads.clone().try_acquire_owned() else { break };
        let r = r.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _ = r.warm(j);
        });
        j += 1;
    }
    *warmed = j;
}

/// A decompressed chunk from the cache, shared into the response without a copy.
struct SharedChunk(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The bytes from `pos` to the end of the chunk holding it (at most up to `end`). A chunk the
/// read-ahead has decompressed is taken from the cache here; otherwise it is fetched on a
/// blocking thread, holding a read permit.
async fn read_piece(
    state: &AppState,
    r: Arc<FileReader>,
    pos: u64,
    end: u64,
) -> std::io::Result<(Arc<FileReader>, Bytes)> {
    let (data, range) = match r.cached_piece(pos, end) {
        Some(piece) => piece.map_err(std::io::Error::other)?,
        None => {
            let _permit = state.reads.clone().acquire_owned().await.map_err(std::io::Error::other)?;
            let reader = r.clone();
            tokio::task::spawn_blocking(move || reader.piece(pos, end))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?
        }
    };
    Ok((r, Bytes::from_owner(SharedChunk(data)).slice(range)))
}

/// `GET /api/download?snapshot=ID&path=/a/b/file` (or `path_b64=`).
pub async fn download(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    client: ClientAddr,
    method: Method,
    headers: HeaderMap,
    s: Session,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref())?;
    let snapshot = parse_snapshot(&state, p.require("snapshot")?).await?;
    let path = crate::paths::param(&p, "path")?
        .ok_or_else(|| ApiError::BadRequest("parameter path (or path_b64) is required".into()))?;
    let shown = String::from_utf8_lossy(&crate::paths::join_bytes(&path)).into_owned();
    let sub = subject(&state, &s);
    let st = state.clone();
    let found = tokio::task::spawn_blocking(move || -> ApiResult<(Resolved, FileReader)> {
        let res = resolve(&st, &sub, snapshot, &path)?;
        let is_file = res.node.as_ref().is_some_and(|n| res.access == Access::Visible && n.kind == NodeKind::File);
        if !is_file {
            return Err(match &res.node {
                Some(n) if res.access == Access::Visible => {
                    ApiError::BadRequest(format!("{} is not a file", n.name_lossy()))
                }
                _ => ApiError::BadRequest("not a file; use /api/archive for folders".into()),
            });
        }
        let reader = st.view.open(&res.entry)?;
        Ok((res, reader))
    })
    .await?;
    let (res, reader) = audit_not_found(&state, &s, &client, "download", Some(snapshot), || vec![shown], found)?;
    let node = res.node.clone().expect("a file");
    let size = reader.size();
    let etag = format!("\"{}\"", node.content_id().expect("a file").to_hex());
    let name = node.name_lossy().into_owned();

    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| none_match(v, &etag)) {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
        return Ok(resp);
    }
    let if_range_ok = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == etag);
    let range_header = if if_range_ok { headers.get(header::RANGE).and_then(|v| v.to_str().ok()) } else { None };
    let range = parse_range(range_header, size).map_err(|_| ApiError::RangeNotSatisfiable { size })?;
    let (start, end) = range.unwrap_or((0, size));

    // HEAD: the headers only; nothing is read or sent, so nothing is audited as a download.
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let mut rec = record(&s, "download", &client);
        let snap = state.view.snapshot(&snapshot);
        rec.host = snap.map(|e| e.snapshot.host);
        rec.snapshot = Some(snapshot.to_hex());
        rec.paths = vec![String::from_utf8_lossy(&res.walk.path).into_owned()];
        state.metrics.downloads.fetch_add(1, Relaxed);
        let guard = StreamGuard::new(state.clone(), rec, Some(end - start));
        let st = state.clone();
        let stream = futures_util::stream::try_unfold(
            (Arc::new(reader), start, guard, 0usize),
            move |(r, pos, mut guard, mut warmed)| {
                let st = st.clone();
                async move {
                    if pos >= end {
                        guard.finish(true);
                        return Ok(None);
                    }
                    read_ahead(&st, &r, pos, end, &mut warmed);
                    let (r, piece) = read_piece(&st, r, pos, end).await?;
                    if piece.is_empty() {
                        return Err(std::io::Error::other("file shorter than its index says"));
                    }
                    guard.add(piece.len() as u64);
                    let next = pos + piece.len() as u64;
                    Ok::<_, std::io::Error>(Some((piece, (r, next, guard, warmed))))
                }
            },
        );
        Body::from_stream(stream)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::CONTENT_TYPE, content_type(&name));
    h.insert(header::CONTENT_DISPOSITION, content_disposition(&name));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    harden(h);
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)).expect("ascii"),
        );
    }
    Ok(resp)
}

/// Bytes written by the zip writer, sent to the response in pieces through a bounded channel.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn zip_time(t: rewind_store::Time) -> zip::DateTime {
    jiff::Timestamp::from_second(t.sec)
        .ok()
        .map(|ts| ts.to_zoned(jiff::tz::TimeZone::UTC))
        .and_then(|z| {
            zip::DateTime::from_date_and_time(
                z.year() as u16,
                z.month() as u8,
                z.day() as u8,
                z.hour() as u8,
                z.minute() as u8,
                z.second() as u8,
            )
            .ok()
        })
        .unwrap_or_default()
}

/// Whether Windows keeps a name stem (lowercase) for a device: `con`, `nul`, `com1`... (with
/// superscript digits too), whatever extension follows (`nul.txt`).
fn reserved(stem: &str) -> bool {
    let port = |prefix: &str| {
        let mut digit = stem.strip_prefix(prefix).unwrap_or("").chars();
        matches!((digit.next(), digit.next()), (Some('1'..='9' | '\u{b9}' | '\u{b2}' | '\u{b3}'), None))
    };
    matches!(stem, "con" | "prn" | "aux" | "nul" | "conin$" | "conout$") || port("com") || port("lpt")
}

/// A [`safe_name`] as a zip entry may carry it to every common extractor, Windows' included:
/// trailing dots and spaces (which Windows drops, making `notes.` and `notes` one file) become
/// `_`, and a device name (`CON`, `nul.txt`, `COM1`) gets `_` after its stem. (`<>"|?*`, which
/// Windows refuses in names, are kept: they are no path syntax, and 7-Zip and Windows' own
/// extractor replace or skip them there, while every other system restores them as they were.)
fn zip_name(raw: &str) -> String {
    let mut name = safe_name(raw);
    let kept = name.trim_end_matches(['.', ' ']).len();
    name.replace_range(kept.., &"_".repeat(name.len() - kept));
    // Windows ignores what follows the first dot, and spaces before it, when it names devices.
    let stem = name.split('.').next().unwrap_or("").trim_end_matches(' ').to_lowercase();
    if reserved(&stem) {
        let at = name.find('.').unwrap_or(name.len());
        name.insert(at, '_');
    }
    name
}

/// The names of one folder's entries in a zip: [`zip_name`]s, made distinct as the strictest
/// extractors compare them (case-insensitive file systems: NTFS, APFS; compatibility forms
/// too, [`crate::fold::caseless`]), so that no extractor overwrites one entry with another:
/// `report.txt` after `Report.txt` becomes `report (2).txt`, `a_b` after `a\\b` `a_b (2)`.
#[derive(Default)]
struct EntryNames(std::collections::HashSet<String>);

impl EntryNames {
    fn name(&mut self, raw: &str) -> String {
        let safe = zip_name(raw);
        let mut name = safe.clone();
        let (stem, ext) = match safe.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => (stem.to_string(), format!(".{ext}")),
            _ => (safe.clone(), String::new()),
        };
        let mut n = 1;
        while !self.0.insert(crate::fold::caseless(&name)) {
            n += 1;
            name = format!("{stem} ({n}){ext}");
        }
        name
    }
}

/// Whether a symlink's target points down from the link's own folder: relative, with no `..`
/// (nor `\\`, a separator to Windows tools, nor `:`, which names a drive there). Such links
/// stay inside the folder the zip is extracted into, also through one another: a target with
/// `..` could climb through another link (`sub -> ..`, then `x -> sub/..`), which no lexical
/// check of one target sees.
fn link_points_below(target: &str) -> bool {
    !target.is_empty()
        && !target.starts_with('/')
        && !target.contains(['\\', ':'])
        && target.split('/').all(|c| c != "..")
}

/// Walks the selection and writes the zip; runs on a blocking thread.
struct ArchiveJob {
    state: AppState,
    sub: Subject,
    files: u64,
    bytes: u64,
}

type Zip = zip::ZipWriter<zip::write::StreamWriter<ChannelWriter>>;

impl ArchiveJob {
    fn options(node: &Node) -> zip::write::SimpleFileOptions {
        let compressed = matches!(
            std::path::Path::new(&*node.name_lossy())
                .extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase())
                .as_deref(),
            Some(
                "jpg"
                    | "jpeg"
                    | "png"
                    | "gif"
                    | "zip"
                    | "gz"
                    | "xz"
                    | "zst"
                    | "bz2"
                    | "mp4"
                    | "mkv"
                    | "mp3"
                    | "7z"
                    | "webp"
            )
        );
        let opts = zip::write::SimpleFileOptions::default()
            .last_modified_time(zip_time(node.mtime))
            .unix_permissions(node.mode & 0o777)
            .large_file(node.size >= 0xFFFF_FFFF);
        if compressed || node.kind != NodeKind::File {
            opts.compression_method(zip::CompressionMethod::Stored)
        } else {
            opts.compression_method(zip::CompressionMethod::Deflated).compression_level(Some(1))
        }
    }

    fn add(&mut self, zip: &mut Zip, res: &Resolved, name: &str) -> ApiResult<()> {
        let node = res.node.as_ref().expect("not the root");
        let io = |e: zip::result::ZipError| ApiError::Internal(format!("zip: {e}"));
        match (node.kind, res.access) {
            (NodeKind::File, Access::Visible) => {
                zip.start_file(name, Self::options(node)).map_err(io)?;
                let r = self.state.view.open(&res.entry)?;
                let mut pos = 0u64;
                let mut buf = vec![0u8; PIECE];
                while pos < r.size() {
                    let n = {
                        let _permit = tokio::runtime::Handle::current()
                            .block_on(self.state.reads.clone().acquire_owned())
                            .map_err(ApiError::internal)?;
                        r.read_at(pos, &mut buf)?
                    };
                    if n == 0 {
                        return Err(ApiError::Corrupt(format!("{name}: shorter than its index says")));
                    }
                    zip.write_all(&buf[..n]).map_err(|e| ApiError::Internal(format!("zip: {e}")))?;
                    pos += n as u64;
                }
                self.files += 1;
                self.bytes += pos;
            }
            (NodeKind::Symlink, Access::Visible) => {
                let target = String::from_utf8_lossy(&node.target);
                if link_points_below(&target) {
                    zip.add_symlink(name, target, Self::options(node)).map_err(io)?;
                } else {
                    // Any other link (absolute, or climbing) is a small file holding its target,
                    // as git stores links where it cannot make them: extracting the zip never
                    // leaves a link that an extractor, or a program later, follows out of it.
                    zip.start_file(name, Self::options(node).unix_permissions(0o644)).map_err(io)?;
                    zip.write_all(&node.target).map_err(|e| ApiError::Internal(format!("zip: {e}")))?;
                }
                self.files += 1;
            }
            (NodeKind::Dir, _) => {
                // A folder's own mode when it is the user's; a folder shown only as the way to
                // their files is one they can enter, and says nothing of its real mode.
                let mode = if res.access == Access::Visible { node.mode & 0o777 } else { 0o755 };
                let opts = Self::options(node).unix_permissions(mode);
                let opts = if res.access == Access::Visible {
                    opts
                } else {
                    opts.last_modified_time(zip::DateTime::default())
                };
                zip.add_directory(format!("{name}/"), opts).map_err(io)?;
                let mut names = EntryNames::default();
                for child in self.state.policy.children(&self.state.view, &self.sub, res)? {
                    let Some(node) = &child.node else { continue };
                    let child_name = names.name(&node.name_lossy());
                    self.add(zip, &child, &format!("{name}/{child_name}"))?;
                }
            }
            // Devices, fifos and sockets have no content to restore.
            _ => {}
        }
        Ok(())
    }
}

/// `GET /api/archive?snapshot=ID&path=/a&path=/b` (and/or `path_b64=`): a zip of folders and files (each named by
/// its last component), holding only what the subject may see.
pub async fn archive(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    client: ClientAddr,
    s: Session,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref())?;
    let snapshot = parse_snapshot(&state, p.require("snapshot")?).await?;
    let paths = crate::paths::params_all(&p, "path")?;
    if paths.is_empty() || paths.len() > state.config.limits.max_selection {
        return Err(ApiError::BadRequest(format!("give 1 to {} path parameters", state.config.limits.max_selection)));
    }
    let shown: Vec<String> =
        paths.iter().map(|p| String::from_utf8_lossy(&crate::paths::join_bytes(p)).into_owned()).collect();
    let sub = subject(&state, &s);
    // Resolve everything before answering, so that a refused path is a 404, not a broken zip.
    let st = state.clone();
    let sub2 = sub.clone();
    let found = tokio::task::spawn_blocking(move || -> ApiResult<Vec<Resolved>> {
        let mut v = Vec::new();
        for path in &paths {
            let r = resolve(&st, &sub2, snapshot, path)?;
            if r.node.is_none() {
                return Err(ApiError::BadRequest("the snapshot root cannot be archived; pick folders".into()));
            }
            v.push(r);
        }
        Ok(v)
    })
    .await?;
    let items = audit_not_found(&state, &s, &client, "archive", Some(snapshot), || shown, found)?;
    // Distinct as case-insensitive file systems see them, too.
    let mut names: Vec<String> = items
        .iter()
        .map(|r| crate::fold::caseless(&zip_name(&r.node.as_ref().expect("checked").name_lossy())))
        .collect();
    names.sort();
    names.dedup();
    if names.len() != items.len() {
        return Err(ApiError::BadRequest("two selected entries have the same name".into()));
    }
    let archive_name = if items.len() == 1 {
        format!("{}.zip", items[0].node.as_ref().expect("checked").name_lossy())
    } else {
        "selection.zip".into()
    };

    let mut rec = record(&s, "archive", &client);
    rec.host = state.view.snapshot(&snapshot).map(|e| e.snapshot.host);
    rec.snapshot = Some(snapshot.to_hex());
    rec.paths = items.iter().map(|r| String::from_utf8_lossy(&r.walk.path).into_owned()).collect();
    state.metrics.archives.fetch_add(1, Relaxed);
    let guard = StreamGuard::new(state.clone(), rec, None);

    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let st = state.clone();
    let done = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut job = ArchiveJob { state: st, sub, files: 0, bytes: 0 };
        let mut zip = zip::ZipWriter::new_stream(ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(PIECE) });
        let result = (|| -> ApiResult<()> {
            for r in &items {
                let name = zip_name(&r.node.as_ref().expect("checked").name_lossy());
                job.add(&mut zip, r, &name)?;
            }
            let mut w = zip.finish().map_err(|e| ApiError::Internal(format!("zip: {e}")))?.into_inner();
            w.flush().map_err(|e| ApiError::Internal(format!("zip: {e}")))?;
            Ok(())
        })();
        if let Err(e) = &result {
            tracing::warn!("archive stopped: {e}");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        result.map_err(|e| e.to_string())
    });
    let stream = futures_util::stream::unfold((rx, guard, Some(done)), |(mut rx, mut guard, done)| async move {
        match rx.recv().await {
            Some(Ok(b)) => {
                guard.add(b.len() as u64);
                Some((Ok(b), (rx, guard, done)))
            }
            Some(Err(e)) => Some((Err(e), (rx, guard, None))),
            None => {
                if let Some(d) = done {
                    guard.finish(matches!(d.await, Ok(Ok(()))));
                }
                None
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    h.insert(header::CONTENT_DISPOSITION, content_disposition(&archive_name));
    harden(h);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 10))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 100))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 100))));
        assert_eq!(parse_range(Some("bytes=95-200"), 100), Ok(Some((95, 100))));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        // Valid ranges outside the file: 416.
        assert!(parse_range(Some("bytes=100-"), 100).is_err());
        assert!(parse_range(Some("bytes=-0"), 100).is_err());
        // Headers that are no valid range are ignored: the whole file.
        for invalid in ["bytes=5-4", "bytes=x-", "bytes=-", "bytes=5", "bytes=+5-6", "bytes=0-1x", "items=0-1"] {
            assert_eq!(parse_range(Some(invalid), 100), Ok(None), "{invalid}");
        }
    }

    #[test]
    fn weak_etags_match_if_none_match() {
        let tag = "\"abc\"";
        assert!(none_match("\"abc\"", tag));
        assert!(none_match("W/\"abc\"", tag));
        assert!(none_match("\"x\", W/\"abc\"", tag));
        assert!(none_match("*", tag));
        assert!(!none_match("\"abcd\", W/\"ab\"", tag));
    }

    #[test]
    fn zip_names_are_safe_and_distinct() {
        let mut n = EntryNames::default();
        assert_eq!(n.name("..\\..\\evil.txt"), ".._.._evil.txt");
        assert_eq!(n.name("C:report.txt"), "C_report.txt");
        assert_eq!(n.name("a\u{1b}[31mb"), "a_[31mb");
        assert_eq!(n.name("x\\y.txt"), "x_y.txt");
        assert_eq!(n.name("x_y.txt"), "x_y (2).txt");
        assert_eq!(n.name("x:y.txt"), "x_y (3).txt");
        assert_eq!(n.name("dir"), "dir");
        assert_eq!(n.name("dir"), "dir (2)");
        // As case-insensitive extractors and Windows see names.
        let mut n = EntryNames::default();
        assert_eq!(n.name("Report.txt"), "Report.txt");
        assert_eq!(n.name("report.txt"), "report (2).txt");
        assert_eq!(n.name("REPORT (2).TXT"), "REPORT (2) (2).TXT");
        assert_eq!(n.name("notes"), "notes");
        assert_eq!(n.name("notes."), "notes_");
        assert_eq!(n.name("notes_"), "notes_ (2)");
        assert_eq!(n.name("todo "), "todo_");
        assert_eq!(n.name("\u{ff54}\u{ff4f}\u{ff44}\u{ff4f}_"), "\u{ff54}\u{ff4f}\u{ff44}\u{ff4f}_ (2)", "fullwidth");
        assert_eq!(n.name("what?.txt"), "what?.txt");
        for (device, safe) in [
            ("CON", "CON_"),
            ("nul.txt", "nul_.txt"),
            ("Com1.tar.gz", "Com1_.tar.gz"),
            ("aux .txt", "aux _.txt"),
            ("lpt\u{b9}", "lpt\u{b9}_"),
            ("LPT\u{b3}.log", "LPT\u{b3}_.log"),
            ("console", "console"),
            ("com10", "com10"),
        ] {
            assert_eq!(zip_name(device), safe, "{device:?}");
        }
    }

    #[test]
    fn links_that_point_below_their_folder() {
        assert!(link_points_below("report.txt"));
        assert!(link_points_below("sub/./x"));
        assert!(link_points_below("."));
        for out in ["../beside", "a/../../etc", "/etc/passwd", "..\\..\\x", "C:x", "", ".."] {
            assert!(!link_points_below(out), "{out:?}");
        }
    }

    #[test]
    fn dispositions_are_safe() {
        let v = content_disposition("a\"b;c\r\n.txt");
        let s = v.to_str().unwrap();
        assert!(!s.contains('\r') && !s.contains('\n'));
        assert!(s.starts_with("attachment; filename=\"a_b_c__.txt\""), "{s}");
        assert!(s.contains("filename*=UTF-8''a%22b%3Bc__.txt"), "{s}");
        let s = content_disposition("..\\x\u{7}y.txt").to_str().unwrap().to_string();
        assert!(!s.contains('\\') && !s.contains("%5C") && !s.contains("%07"), "{s}");
        let s = content_disposition("résumé.pdf").to_str().unwrap().to_string();
        assert!(s.contains("filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"), "{s}");
        assert_eq!(content_type("x.txt").to_str().unwrap(), "text/plain; charset=utf-8");
        assert_eq!(content_type("x.unknownext").to_str().unwrap(), "application/octet-stream");
    }
}
