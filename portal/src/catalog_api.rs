//! Search, deleted files and version history: the catalog's queries, narrowed to the subject's
//! view in SQL ([`crate::authz::Policy::scope`]: the same rules as browsing and downloading),
//! every result then checked by the policy itself in the snapshot it would be downloaded from
//! (its `last_seen`).
//!
//! The promise: every answer equals the answer the user would get from a repository where
//! everything they may not see was never backed up. So nothing in an answer may depend on a
//! hidden row: a page holds the next `limit` visible results; `next` is there exactly when a
//! further visible result exists (looked ahead for, never guessed from rows scanned); the cursor
//! is the sealed catalog position of the last result shown ([`crate::cursor`]), never a count of
//! rows. Hidden rows are not even read where the rules can exclude them in SQL (all of them:
//! uid, home paths, hosts, and for `readable` the catalog's access classes and folder contexts;
//! and everything inside disk images, which no scope sees); there is no scan bound whose
//! stopping point could depend on them.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::{Value, json};

use rewind_catalog::{FileVersion, NameMatch, Order, Query};
use rewind_store::{NodeKind, SnapshotId};

use crate::api::{ClientAddr, record, subject};
use crate::authz::{Subject, WalkMemo};
use crate::error::{ApiError, ApiResult};
use crate::query::Params;
use crate::session::Session;
use crate::state::AppState;

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
fn base_query(p: &Params) -> ApiResult<Query> {
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
        q.path_prefix = Some(crate::paths::join_bytes(&comps));
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
    Ok(q)
}

/// What a cursor is bound to: the endpoint, who asks (and for whom), and every parameter but
/// the cursor and the page size, in a canonical order.
fn binding(endpoint: &str, s: &Session, p: &Params) -> Vec<u8> {
    let (actor, subject) = (s.actor(), s.subject());
    let mut params: Vec<(&str, &str)> = p.pairs().filter(|(k, _)| *k != "cursor" && *k != "limit").collect();
    params.sort();
    let fields: Vec<String> = [endpoint, &actor.realm, &actor.login, &subject.realm, &subject.login]
        .iter()
        .map(|f| f.to_string())
        .chain(params.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    serde_json::to_vec(&fields).expect("strings serialize")
}

/// A result as the API shows it: the catalog version, where to download it from, and, as
/// browse gives it, `path_b64` when its path cannot be given as `path` (not UTF-8, a backslash
/// or a control character).
fn version_json(v: &FileVersion) -> Value {
    let mut j = serde_json::to_value(v).unwrap_or(Value::Null);
    // Where to download it from: the newest snapshot holding this version.
    j["snapshot"] = json!(v.last_seen.id);
    if crate::paths::needs_b64(v.path_bytes()) {
        j["path_b64"] = json!(crate::paths::to_b64(v.path_bytes()));
    }
    j
}

/// Checks catalog results against the policy, in the snapshot each names.
struct Checker<'a> {
    state: &'a AppState,
    sub: &'a Subject,
    memo: WalkMemo,
    /// The view was refreshed for a snapshot it did not know yet (once per request).
    refreshed: bool,
}

impl Checker<'_> {
    fn visible(&mut self, v: &FileVersion) -> ApiResult<bool> {
        if self.sub.all {
            return Ok(true);
        }
        let Ok(id) = SnapshotId::from_hex(&v.last_seen.id) else { return Ok(false) };
        // The catalog may hold a snapshot that came after the view last looked: look again
        // rather than hide the user's newest files.
        if !self.refreshed && !self.state.view.contains(&id) {
            self.refreshed = true;
            self.state.view.refresh()?;
        }
        self.state.policy.visible_path(&self.state.view, self.sub, id, v.path_bytes(), &mut self.memo)
    }
}

/// The `want` visible results after `q.after`, and whether a further one exists: catalog pages
/// (already narrowed to the subject's scope) are checked one by one, and the look-ahead is for
/// one more *visible* result.
fn filtered(
    state: &AppState,
    sub: &Subject,
    mut q: Query,
    deleted: bool,
    want: usize,
) -> ApiResult<(Vec<FileVersion>, bool)> {
    let mut check = Checker { state, sub, memo: WalkMemo::default(), refreshed: false };
    let mut out = Vec::new();
    loop {
        q.limit = (want + 1 - out.len()).min(rewind_catalog::MAX_LIMIT as usize) as u32;
        let page = state.catalog.page(&q, deleted)?;
        for v in &page.items {
            if check.visible(v)? {
                out.push(v.clone());
                if out.len() > want {
                    out.truncate(want);
                    return Ok((out, true));
                }
            }
        }
        match (page.next_offset, page.items.last()) {
            (Some(_), Some(last)) => q.after = Some(last.position(q.order)),
            _ => return Ok((out, false)),
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
    let mut q = base_query(&p)?;
    if deleted {
        q.deleted_since = time_param(&p, "since")?;
    }
    let endpoint = if deleted { "deleted" } else { "search" };
    let bound = binding(endpoint, &s, &p);
    if let Some(c) = p.get("cursor")? {
        q.after = Some(state.cursors.open(&bound, c)?);
    }
    let max = state.config.limits.max_page.max(1);
    let want = p.number::<usize>("limit")?.unwrap_or(100).clamp(1, max);
    let sub = subject(&state, &s);
    q.scope = state.policy.scope(&sub);
    audit_search(&state, &s, &client, endpoint, raw.as_deref());
    let st = state.clone();
    let order = q.order;
    let (items, more) = tokio::task::spawn_blocking(move || filtered(&st, &sub, q, deleted, want)).await??;
    let next = match items.last() {
        Some(last) if more => Some(state.cursors.seal(&bound, &last.position(order))),
        _ => None,
    };
    let items: Vec<Value> = items.iter().map(version_json).collect();
    Ok(Json(json!({ "items": items, "next": next })))
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
    let path = crate::paths::join_bytes(&comps);
    let host = p.get("host")?.map(str::to_string);
    let sub = subject(&state, &s);
    audit_search(&state, &s, &client, "history", raw.as_deref());
    let st = state.clone();
    let denied_path = String::from_utf8_lossy(&path).into_owned();
    let items = tokio::task::spawn_blocking(move || -> ApiResult<Vec<Value>> {
        let scope = st.policy.scope(&sub);
        let versions = st.catalog.with(|c| c.history(host.as_deref(), &path, scope.as_ref()))?;
        let mut check = Checker { state: &st, sub: &sub, memo: WalkMemo::default(), refreshed: false };
        let mut out = Vec::new();
        for v in &versions {
            if check.visible(v)? {
                out.push(version_json(v));
            }
        }
        Ok(out)
    })
    .await??;
    if items.is_empty() {
        crate::api::audit_denied(&state, &s, &client, "history", None, vec![denied_path]);
        return Err(ApiError::NotFound);
    }
    Ok(Json(json!({ "items": items })))
}
