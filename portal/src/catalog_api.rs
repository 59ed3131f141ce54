//! Search, deleted files and version history: the catalog's queries, every result checked by
//! the same policy as browsing and downloading ([`crate::authz::Policy::visible_path`] in the
//! snapshot the result would be downloaded from: its `last_seen`).
//!
//! Paging: the catalog is asked for pages and hidden results are dropped, so a page may come
//! back shorter than `limit`; `next` is an opaque cursor (the catalog offset) to continue from.
//! When only the `owner` (or only the `home`) rule is configured, the query is narrowed in SQL
//! to the user's uid (or home) first, so other users' files are not even read.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::{Value, json};

use rewind_catalog::{FileVersion, NameMatch, Order, Query};
use rewind_store::{NodeKind, SnapshotId};

use crate::api::{ClientAddr, record, subject};
use crate::authz::{Subject, WalkMemo};
use crate::config::Rule;
use crate::error::{ApiError, ApiResult};
use crate::query::Params;
use crate::session::Session;
use crate::state::AppState;

/// Most catalog rows looked at for one page, so that a search matching many hidden rows stays
/// bounded; the cursor continues where it stopped.
const MAX_SCANNED: u64 = 20_000;

fn time_param(p: &Params, key: &str) -> ApiResult<Option<jiff::Timestamp>> {
    p.get(key)?
        .map(|v| {
            v.parse::<jiff::Timestamp>()
                .or_else(|_| {
                    v.parse::<jiff::civil::Date>()
                        .map(|d| d.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).unwrap_or_default())
                })
                .map_err(|_| ApiError::BadRequest(format!("{key}: a time like 2026-01-31 or 2026-01-31T12:00:00Z")))
        })
        .transpose()
}

/// The filters common to search and deleted.
fn base_query(state: &AppState, p: &Params) -> ApiResult<Query> {
    let mut q = Query::default();
    if let Some(text) = p.get("q")?.filter(|t| !t.trim().is_empty()) {
        if text.len() > 256 {
            return Err(ApiError::BadRequest("q is too long".into()));
        }
        q.name = Some(match p.get("match")? {
            None | Some("auto") => NameMatch::guess(text),
            Some("substring") => NameMatch::Substring(text.to_string()),
            Some("glob") => NameMatch::Glob(text.to_string()),
            Some(_) => return Err(ApiError::BadRequest("match is auto, substring or glob".into())),
        });
    }
    if let Some(comps) = crate::paths::param(p, "path")?
        && !comps.is_empty()
    {
        // The catalog holds paths as lossy UTF-8.
        q.path_prefix = Some(String::from_utf8_lossy(&crate::paths::join_bytes(&comps)).into_owned());
    }
    q.host = p.get("host")?.map(str::to_string);
    q.kind = p
        .get("kind")?
        .map(|k| k.parse::<NodeKind>().map_err(|_| ApiError::BadRequest("kind: file, dir, symlink...".into())))
        .transpose()?;
    q.min_size = p.number("min_size")?;
    q.max_size = p.number("max_size")?;
    q.mtime_from = time_param(p, "modified_after")?;
    q.mtime_to = time_param(p, "modified_before")?;
    q.order = match p.get("order")? {
        None | Some("recent") => Order::RecentFirst,
        Some("oldest") => Order::OldestFirst,
        Some("path") => Order::Path,
        Some(_) => return Err(ApiError::BadRequest("order is recent, oldest or path".into())),
    };
    let max = state.config.limits.max_page.max(1) as u32;
    q.limit = p.number::<u32>("limit")?.unwrap_or(100).clamp(1, max);
    q.offset = p.number("cursor")?.unwrap_or(0);
    Ok(q)
}

/// Narrow a query in SQL where the rules allow it exactly.
fn narrow(state: &AppState, sub: &Subject, q: &mut Query) {
    if sub.all {
        return;
    }
    let rules = &state.config.authz.rules;
    if rules == &[Rule::Owner] {
        // No uid: nothing can match; u32::MAX is no one's.
        q.uid = Some(sub.uid.unwrap_or(u32::MAX));
    } else if rules == &[Rule::Home] && sub.homes.len() == 1 {
        let home = String::from_utf8_lossy(&sub.homes[0]).into_owned();
        let inside = q.path_prefix.as_ref().is_some_and(|p| p == &home || p.starts_with(&format!("{home}/")));
        if !inside {
            q.path_prefix = Some(home);
        }
    }
}

fn version_json(v: &FileVersion) -> Value {
    let mut j = serde_json::to_value(v).unwrap_or(Value::Null);
    // Where to download it from: the newest snapshot holding this version.
    j["snapshot"] = json!(v.last_seen.id);
    j
}

fn visible(state: &AppState, sub: &Subject, v: &FileVersion, memo: &mut WalkMemo) -> ApiResult<bool> {
    if sub.all {
        return Ok(true);
    }
    let Ok(id) = SnapshotId::from_hex(&v.last_seen.id) else { return Ok(false) };
    state.policy.visible_path(&state.view, sub, id, &v.path, memo)
}

/// Pages of the catalog, filtered, until `limit` visible results or the scan bound.
fn filtered(state: &AppState, sub: &Subject, q: Query, deleted: bool) -> ApiResult<(Vec<Value>, Option<u64>)> {
    let catalog = &state.catalog;
    let want = q.limit as usize;
    let mut out = Vec::new();
    let mut offset = q.offset;
    let mut scanned = 0u64;
    let mut memo = WalkMemo::default();
    loop {
        let mut page_q = q.clone();
        page_q.offset = offset;
        page_q.limit = if sub.all { q.limit } else { 500 };
        let page = catalog.page(&page_q, deleted)?;
        for (i, v) in page.items.iter().enumerate() {
            if visible(state, sub, v, &mut memo)? {
                out.push(version_json(v));
                if out.len() == want {
                    let next = offset + i as u64 + 1;
                    let more = page.next_offset.is_some() || i + 1 < page.items.len();
                    return Ok((out, more.then_some(next)));
                }
            }
        }
        scanned += page.items.len() as u64;
        match page.next_offset {
            None => return Ok((out, None)),
            Some(n) if scanned >= MAX_SCANNED => return Ok((out, Some(n))),
            Some(n) => offset = n,
        }
    }
}

fn audit_search(state: &AppState, s: &Session, client: &ClientAddr, event: &str, raw: Option<&str>) {
    // Every search made for someone else is audited; one's own searches are not.
    if s.acting().is_some() {
        let mut r = record(s, event, client);
        r.query = raw.map(str::to_string);
        state.audit.write(r);
    }
}

async fn list(
    state: AppState,
    s: Session,
    client: ClientAddr,
    raw: Option<String>,
    deleted: bool,
) -> ApiResult<Json<Value>> {
    let p = Params::parse(raw.as_deref())?;
    let mut q = base_query(&state, &p)?;
    if deleted {
        q.deleted_since = time_param(&p, "since")?;
    }
    let sub = subject(&state, &s);
    narrow(&state, &sub, &mut q);
    audit_search(&state, &s, &client, if deleted { "deleted" } else { "search" }, raw.as_deref());
    let st = state.clone();
    let (items, next) = tokio::task::spawn_blocking(move || filtered(&st, &sub, q, deleted)).await??;
    Ok(Json(json!({ "items": items, "next": next.map(|n| n.to_string()) })))
}

/// `GET /api/search?q=report&host=&path=&kind=&min_size=&max_size=&modified_after=&modified_before=&order=&limit=&cursor=`.
pub async fn search(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    client: ClientAddr,
    s: Session,
) -> ApiResult<Json<Value>> {
    list(state, s, client, q, false).await
}

/// `GET /api/deleted?since=2026-01-01&...` (the search filters apply).
pub async fn deleted(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    client: ClientAddr,
    s: Session,
) -> ApiResult<Json<Value>> {
    list(state, s, client, q, true).await
}

/// `GET /api/history?path=/a/b&host=H`: the path's versions the subject may see, newest first.
pub async fn history(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    client: ClientAddr,
    s: Session,
) -> ApiResult<Json<Value>> {
    let p = Params::parse(raw.as_deref())?;
    let comps = crate::paths::param(&p, "path")?
        .ok_or_else(|| ApiError::BadRequest("parameter path (or path_b64) is required".into()))?;
    if comps.is_empty() {
        return Err(ApiError::BadRequest("history of the root".into()));
    }
    // The catalog holds paths as lossy UTF-8.
    let path = String::from_utf8_lossy(&crate::paths::join_bytes(&comps)).into_owned();
    let host = p.get("host")?.map(str::to_string);
    let sub = subject(&state, &s);
    audit_search(&state, &s, &client, "history", raw.as_deref());
    let st = state.clone();
    let items = tokio::task::spawn_blocking(move || -> ApiResult<Vec<Value>> {
        let catalog = &st.catalog;
        let versions = catalog.with(|c| c.history(host.as_deref(), &path, None))?;
        let mut out = Vec::new();
        let mut memo = WalkMemo::default();
        for v in &versions {
            if visible(&st, &sub, v, &mut memo)? {
                out.push(version_json(v));
            }
        }
        Ok(out)
    })
    .await??;
    if items.is_empty() {
        return Err(ApiError::NotFound);
    }
    Ok(Json(json!({ "items": items })))
}
