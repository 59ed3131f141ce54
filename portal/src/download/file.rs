//! One file, streamed chunk by chunk with read-ahead (Range, ETag).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use rewind_store::{FileReader, NodeKind};

use super::StreamGuard;
use super::headers::{content_disposition, content_type, harden, none_match, parse_range};
use crate::api::{ClientAddr, audit_not_found, parse_snapshot, record, resolve, subject};
use crate::authz::{Access, Resolved};
use crate::error::{ApiError, ApiResult};
use crate::query::Params;
use crate::session::Session;
use crate::state::AppState;

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
