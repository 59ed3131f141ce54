//! Folders and selections as one zip stream, written as it is read.

use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;

use rewind_store::{Node, NodeKind};

use super::headers::{content_disposition, harden, safe_name};
use super::{PIECE, StreamGuard};
use crate::api::{ClientAddr, audit_not_found, parse_snapshot, record, resolve, subject};
use crate::authz::{Access, Resolved, Subject};
use crate::error::{ApiError, ApiResult};
use crate::query::Params;
use crate::session::Session;
use crate::state::AppState;

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
        // This request's own groups of small files (the view keeps none: see state.rs): a
        // folder's files, one after another, open each group once.
        let _groups = rewind_store::GroupScope::enter();
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
}
