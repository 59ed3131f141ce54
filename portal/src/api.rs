//! The JSON API (documented in `portal/API.md`). Every handler that shows repository content
//! takes a [`Session`] and goes through [`crate::authz::Policy`]; nothing here decides visibility.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use rewind_store::{Node, NodeKind, SnapshotEntry, SnapshotId};

use crate::audit::Record;
use crate::auth::{AuthError, Identity, LoginFailure, Role, check_login_name, fold_login, trim_login};
use crate::authz::{Access, Resolved, Subject};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::paths;
use crate::query::Params;
use crate::session::{Acting, Session, host_ok, now, origin_ok};
use crate::state::AppState;

/// The client's address, when the server knows it (not in `oneshot` tests). Behind a proxy
/// listed in `trusted_proxies`, the rightmost `X-Forwarded-For` address that is not itself a
/// trusted proxy; the header is ignored from anyone else.
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<ClientAddr, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let trusted = &state.config.trusted_proxies;
        let Some(peer) = peer.filter(|p| trusted.contains(p)) else { return Ok(ClientAddr(peer)) };
        let forwarded: Vec<IpAddr> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        Ok(ClientAddr(Some(forwarded.into_iter().rev().find(|a| !trusted.contains(a)).unwrap_or(peer))))
    }
}

impl ClientAddr {
    fn text(&self) -> Option<String> {
        self.0.map(|a| a.to_string())
    }
}

/// The subject of a session, as the policy sees it.
pub(crate) fn subject(state: &AppState, s: &Session) -> Subject {
    if s.sees_all() { Subject::everything() } else { state.policy.subject(s.subject()) }
}

/// Audit record skeleton for a session's action.
pub(crate) fn record(s: &Session, event: &str, client: &ClientAddr) -> Record {
    Record {
        event: event.into(),
        outcome: "ok".into(),
        actor: s.actor().login.clone(),
        realm: Some(s.actor().realm.clone()),
        for_user: s.acting().map(|a| a.user.login.clone()),
        for_realm: s.acting().map(|a| a.user.realm.clone()),
        reason: s.acting().map(|a| a.reason.clone()),
        client: client.text(),
        ..Record::default()
    }
}

/// Audit a path the user was told does not exist, as event `denied` with outcome
/// `<action>: not found` (rate-limited per actor and person acted for: see
/// [`crate::audit::AuditLog::denied`]).
pub(crate) fn audit_denied(
    state: &AppState,
    s: &Session,
    client: &ClientAddr,
    action: &str,
    snapshot: Option<SnapshotId>,
    paths: Vec<String>,
) {
    let mut r = record(s, "denied", client);
    r.outcome = format!("{action}: not found");
    r.snapshot = snapshot.map(|id| id.to_hex());
    r.host = snapshot.and_then(|id| state.view.snapshot(&id)).map(|e| e.snapshot.host);
    r.paths = paths;
    state.audit.denied(r);
}

/// A handler's answer, with its 404 audited as a denial.
pub(crate) fn audit_not_found<T>(
    state: &AppState,
    s: &Session,
    client: &ClientAddr,
    action: &str,
    snapshot: Option<SnapshotId>,
    paths: impl FnOnce() -> Vec<String>,
    r: ApiResult<T>,
) -> ApiResult<T> {
    if matches!(r, Err(ApiError::NotFound)) {
        audit_denied(state, s, client, action, snapshot, paths());
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Login, logout, me, acting for a user

#[derive(Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub realm: Option<String>,
}

fn me_json(state: &AppState, s: &crate::session::Claims) -> Value {
    let id = &s.id;
    json!({
        "login": id.login,
        "realm": id.realm,
        "display_name": id.display_name,
        "mail": id.mail,
        "role": id.role,
        "uid": id.uid,
        "gids": id.gids,
        "acting_for": s.act.as_ref().map(|a| json!({
            "login": a.user.login,
            "realm": a.user.realm,
            "display_name": a.user.display_name,
            "reason": a.reason,
            "since": jiff::Timestamp::from_second(a.since).map(|t| t.to_string()).unwrap_or_default(),
        })),
        "csrf_token": s.csrf,
        "expires": jiff::Timestamp::from_second(s.exp).map(|t| t.to_string()).unwrap_or_default(),
        "session_ends": jiff::Timestamp::from_second(s.auth_time + state.keys.max_age).map(|t| t.to_string()).unwrap_or_default(),
        "catalog": state.catalog.available(),
    })
}

/// The failure budget of a name as typed ([`fold_login`]: ` dave`, `DAVE` and `ｄａｖｅ` are one).
fn name_key(typed: &str) -> String {
    format!("name\n{}", fold_login(typed))
}

/// The failure budget of a person a realm found, whatever spelling of their name was typed.
fn person_key(realm: &str, login: &str) -> String {
    format!("person\n{realm}\n{}", fold_login(login))
}

/// `POST /api/login`.
///
/// Every attempt that does not log in counts toward the failure budgets of its name (folded:
/// ` dave`, `DAVE` and `ｄａｖｅ` are `dave`), of the person a realm found for it (a directory
/// may take spellings that no folding foresees: its own answer says whom it found), and of its
/// address, whatever the reason: a wrong password, an unknown user, a realm that could not be
/// asked. A person whose budget is spent is refused (429) whatever the password. An unavailable
/// realm answers 503 whatever the other realms said, so that no answer tells a wrong password
/// from a realm down.
pub async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    uri: Uri,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut rec = Record {
        event: "login".into(),
        actor: req.username.clone(),
        realm: req.realm.clone(),
        client: client.text(),
        ..Record::default()
    };
    let fail = |rec: &mut Record, outcome: &str, e: ApiError| -> ApiError {
        rec.outcome = outcome.into();
        state.audit.write(rec.clone());
        e
    };
    if !host_ok(&headers, &uri, &state.config) {
        return Err(fail(
            &mut rec,
            "refused: foreign host",
            ApiError::Forbidden("this portal does not answer for that host name (public_url)".into()),
        ));
    }
    if !origin_ok(&headers, &uri, &state.config) {
        return Err(fail(&mut rec, "refused: foreign origin", ApiError::Forbidden("foreign origin".into())));
    }
    let login = trim_login(&req.username);
    let user_key = name_key(&req.username);
    let addr_key = client.text().unwrap_or_else(|| "unknown".into());
    if let Some(wait) = state.user_throttle.check(&user_key).or_else(|| state.addr_throttle.check(&addr_key)) {
        state.metrics.logins_throttled.fetch_add(1, Relaxed);
        return Err(fail(&mut rec, "refused: throttled", ApiError::Throttled(wait)));
    }
    // From here every failure counts, whatever its reason; also for the people realms found.
    let mut people: Vec<String> = Vec::new();
    let failed = |rec: &mut Record, reason: &str, e: ApiError, people: &[String]| -> ApiError {
        state.user_throttle.fail(&user_key);
        for p in people {
            state.user_throttle.fail(p);
        }
        state.addr_throttle.fail(&addr_key);
        fail(rec, reason, e)
    };
    if check_login_name(login).is_err() {
        state.metrics.logins_failed.fetch_add(1, Relaxed);
        return Err(failed(&mut rec, "refused: invalid login name", ApiError::BadCredentials, &[]));
    }
    if req.password.is_empty() {
        state.metrics.logins_failed.fetch_add(1, Relaxed);
        return Err(failed(&mut rec, "failed: empty password", ApiError::BadCredentials, &[]));
    }
    let mut outcome: Option<AuthError> = None;
    let mut identity = None;
    for realm in &state.realms {
        if req.realm.as_deref().is_some_and(|r| r != realm.name()) {
            continue;
        }
        match realm.authenticate(login, &req.password).await {
            Ok(id) => {
                identity = Some(id);
                break;
            }
            Err(LoginFailure { error: e, found }) => {
                tracing::info!(realm = realm.name(), user = %login, "login failed: {e}");
                if let Some(person) = found {
                    people.push(person_key(realm.name(), &person));
                }
                // Keep the most telling failure: unavailable > wrong password > unknown user.
                let rank = |e: &AuthError| match e {
                    AuthError::Unavailable(_) => 3,
                    AuthError::WrongPassword | AuthError::NotAllowed | AuthError::Disabled => 2,
                    _ => 1,
                };
                if outcome.as_ref().is_none_or(|o| rank(&e) > rank(o)) {
                    outcome = Some(e);
                }
            }
        }
    }
    // Whoever the realms found, their budget decides too, whatever the password (so a spent
    // budget is no oracle either).
    let found = identity.iter().map(|id| person_key(&id.realm, &id.login));
    if let Some(wait) = people.iter().cloned().chain(found).find_map(|p| state.user_throttle.check(&p)) {
        state.metrics.logins_throttled.fetch_add(1, Relaxed);
        return Err(fail(&mut rec, "refused: throttled", ApiError::Throttled(wait)));
    }
    let Some(id) = identity else {
        return Err(match outcome {
            Some(AuthError::Unavailable(m)) => {
                state.metrics.logins_unavailable.fetch_add(1, Relaxed);
                tracing::warn!("login refused, directory unavailable: {m}");
                failed(
                    &mut rec,
                    &format!("unavailable: {m}"),
                    ApiError::Unavailable("the directory cannot be reached; try again later".into()),
                    &people,
                )
            }
            Some(e) => {
                state.metrics.logins_failed.fetch_add(1, Relaxed);
                failed(&mut rec, &format!("failed: {e}"), ApiError::BadCredentials, &people)
            }
            None => {
                state.metrics.logins_failed.fetch_add(1, Relaxed);
                failed(&mut rec, "failed: no such realm", ApiError::BadCredentials, &people)
            }
        });
    };
    // Realms asked before the one that knew the password refused someone: that counts for them.
    for p in &people {
        state.user_throttle.fail(p);
    }
    state.user_throttle.clear(&user_key);
    state.user_throttle.clear(&person_key(&id.realm, &id.login));
    state.metrics.logins_ok.fetch_add(1, Relaxed);
    rec.outcome = "ok".into();
    rec.actor = id.login.clone();
    rec.realm = Some(id.realm.clone());
    rec.reason = Some(format!("realm {} role {:?}", id.realm, id.role).to_lowercase());
    state.audit.write(rec);
    let claims = state.keys.new_claims(id);
    let token = state.keys.encode(&claims)?;
    let mut resp = Json(me_json(&state, &claims)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, state.keys.cookie(&token));
    Ok(resp)
}

/// `POST /api/logout`.
pub async fn logout(State(state): State<AppState>, client: ClientAddr, s: Session) -> ApiResult<Response> {
    crate::session::Keys::revoke_async(&state, &s.claims).await;
    state.audit.write(record(&s, "logout", &client));
    let mut resp = Json(json!({ "ok": true })).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, state.keys.clear_cookie());
    Ok(resp)
}

/// `GET /api/me`.
pub async fn me(State(state): State<AppState>, s: Session) -> Json<Value> {
    Json(me_json(&state, &s.claims))
}

/// `GET /api/me/access`: who acted for me, when and why.
pub async fn my_access(State(state): State<AppState>, s: Session) -> ApiResult<Json<Value>> {
    if s.acting().is_some() {
        return Err(ApiError::Forbidden("not while acting for a user".into()));
    }
    let (realm, login) = (s.actor().realm.clone(), s.actor().login.clone());
    let legacy = state.realms.len() == 1;
    let st = state.clone();
    let records = tokio::task::spawn_blocking(move || st.audit.acted_for(&realm, &login, legacy, 500))
        .await?
        .map_err(ApiError::internal)?;
    let items: Vec<Value> = records
        .into_iter()
        .map(|r| json!({ "time": r.time, "by": r.actor, "by_realm": r.realm, "event": r.event, "outcome": r.outcome, "reason": r.reason, "host": r.host, "snapshot": r.snapshot, "paths": r.paths, "query": r.query }))
        .collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
pub struct ActRequest {
    pub user: String,
    /// The user's realm; needed when several realms know the name.
    #[serde(default)]
    pub realm: Option<String>,
    pub reason: String,
}

/// `POST /api/act`: helpdesk (or admin) starts acting for a user, with a reason. Every refusal
/// is audited too. The user is found in the realm given, or else in every realm: a name two
/// realms know needs the realm (409), and while a realm cannot be asked, a name without one is
/// not guessed to be another realm's user (503). Names are compared as realms match them: a file
/// realm by [`fold_login`], and each realm that found nobody for the name typed is asked again
/// for the found person's own spelling (a directory takes spellings no folding foresees).
pub async fn act_start(
    State(state): State<AppState>,
    client: ClientAddr,
    s: Session,
    ApiJson(req): ApiJson<ActRequest>,
) -> ApiResult<Response> {
    let mut rec = record(&s, "act_start", &client);
    rec.for_user = Some(req.user.clone());
    rec.for_realm = req.realm.clone();
    rec.reason = Some(req.reason.trim().to_string());
    let refuse = |mut rec: Record, outcome: &str, e: ApiError| -> ApiError {
        rec.outcome = outcome.to_string();
        state.audit.denied(rec);
        e
    };
    if s.actor().role < Role::Helpdesk {
        return Err(refuse(
            rec,
            "refused: not helpdesk",
            ApiError::Forbidden("only helpdesk staff and admins act for users".into()),
        ));
    }
    let reason = req.reason.trim();
    if reason.len() < 3 || reason.len() > 200 || reason.chars().any(|c| c.is_control()) {
        return Err(refuse(
            rec,
            "refused: no reason",
            ApiError::BadRequest("give a reason (a ticket reference), 3 to 200 characters".into()),
        ));
    }
    let user = trim_login(&req.user);
    if check_login_name(user).is_err() {
        return Err(refuse(rec, "refused: invalid user name", ApiError::BadRequest("invalid user name".into())));
    }
    if let Some(r) = &req.realm
        && !state.realms.iter().any(|realm| realm.name() == r)
    {
        return Err(refuse(rec, "refused: no such realm", ApiError::BadRequest(format!("no realm is called {r:?}"))));
    }
    let mut found: Vec<Identity> = Vec::new();
    let mut unavailable: Vec<String> = Vec::new();
    for realm in state.realms.iter().filter(|r| req.realm.as_deref().is_none_or(|want| want == r.name())) {
        match realm.lookup(user).await {
            Ok(id) => found.push(id),
            Err(AuthError::Unavailable(m)) => {
                tracing::warn!(realm = realm.name(), "acting: realm unavailable: {m}");
                unavailable.push(realm.name().to_string());
            }
            Err(_) => {}
        }
    }
    if req.realm.is_none() && found.len() == 1 && found[0].login != user {
        let person = found[0].clone();
        for realm in state.realms.iter().filter(|r| r.name() != person.realm) {
            match realm.lookup(&person.login).await {
                Ok(id) => found.push(id),
                Err(AuthError::Unavailable(m)) => {
                    tracing::warn!(realm = realm.name(), "acting: realm unavailable: {m}");
                    if !unavailable.iter().any(|u| u == realm.name()) {
                        unavailable.push(realm.name().to_string());
                    }
                }
                Err(_) => {}
            }
        }
    }
    if found.len() > 1 {
        let realms: Vec<String> = found.iter().map(|i| i.realm.clone()).collect();
        return Err(refuse(
            rec,
            "refused: name in several realms",
            ApiError::Ambiguous { user: user.to_string(), realms },
        ));
    }
    if !unavailable.is_empty() {
        // Without an answer from every realm asked, the user found (if any) may not be the one meant.
        let why = format!("unavailable: {}", unavailable.join(", "));
        return Err(refuse(
            rec,
            &why,
            ApiError::Unavailable("the directory cannot be reached; try again later".into()),
        ));
    }
    let Some(user) = found.pop() else {
        return Err(refuse(rec, "failed: unknown user", ApiError::NotFound));
    };
    rec.for_user = Some(user.login.clone());
    rec.for_realm = Some(user.realm.clone());
    state.audit.write(rec);
    // The same token times and directory check: acting is no renewal.
    let mut claims = s.claims.clone();
    claims.act = Some(Acting { user, reason: reason.to_string(), since: now() });
    let token = state.keys.encode(&claims)?;
    let mut resp = Json(me_json(&state, &claims)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, state.keys.cookie(&token));
    Ok(resp)
}

/// `POST /api/act/stop`.
pub async fn act_stop(State(state): State<AppState>, client: ClientAddr, s: Session) -> ApiResult<Response> {
    if s.acting().is_some() {
        state.audit.write(record(&s, "act_stop", &client));
    }
    let mut claims = s.claims.clone();
    claims.act = None;
    let token = state.keys.encode(&claims)?;
    let mut resp = Json(me_json(&state, &claims)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, state.keys.cookie(&token));
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// Hosts, snapshots, browsing

#[derive(Serialize)]
struct SnapshotJson {
    id: String,
    short_id: String,
    name: String,
    host: String,
    time: String,
    tags: Vec<String>,
}

fn snapshot_json(state: &AppState, e: &SnapshotEntry) -> SnapshotJson {
    SnapshotJson {
        id: e.id.to_hex(),
        short_id: e.id.short(),
        name: state.view.snapshot_name(&e.id).unwrap_or_default(),
        host: e.snapshot.host.clone(),
        time: e.snapshot.time.to_string(),
        tags: e.snapshot.tags.clone(),
    }
}

/// The snapshots the subject sees anything in, oldest first.
fn visible_snapshots(state: &AppState, sub: &Subject) -> ApiResult<Vec<SnapshotEntry>> {
    state.view.refresh_if_stale();
    let mut out = Vec::new();
    for (_, e) in state.view.snapshots() {
        if state.policy.snapshot_visible(&state.view, sub, e.id)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// `GET /api/hosts`.
pub async fn hosts(State(state): State<AppState>, s: Session) -> ApiResult<Json<Value>> {
    let sub = subject(&state, &s);
    let st = state.clone();
    let snaps = tokio::task::spawn_blocking(move || visible_snapshots(&st, &sub)).await??;
    let mut hosts: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for e in &snaps {
        let h = hosts.entry(e.snapshot.host.clone()).or_default();
        h.0 += 1;
        h.1 = e.snapshot.time.to_string();
    }
    let items: Vec<Value> =
        hosts.into_iter().map(|(h, (n, latest))| json!({ "host": h, "snapshots": n, "latest": latest })).collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /api/snapshots?host=H`.
pub async fn snapshots(State(state): State<AppState>, RawQuery(q): RawQuery, s: Session) -> ApiResult<Json<Value>> {
    let p = Params::parse(q.as_deref())?;
    let host = p.get("host")?.map(str::to_string);
    let sub = subject(&state, &s);
    let st = state.clone();
    let snaps = tokio::task::spawn_blocking(move || visible_snapshots(&st, &sub)).await??;
    let items: Vec<SnapshotJson> = snaps
        .iter()
        .rev()
        .filter(|e| host.as_deref().is_none_or(|h| e.snapshot.host == h))
        .map(|e| snapshot_json(&state, e))
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// A snapshot parameter: a full id, or a unique prefix of at least 8 hex digits. Looked up
/// on a blocking thread: the snapshot list may be read again from the repository.
pub(crate) async fn parse_snapshot(state: &AppState, text: &str) -> ApiResult<SnapshotId> {
    if text.len() < 8 || text.len() > 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest("snapshot must be a snapshot id (at least 8 hex digits)".into()));
    }
    let (st, text) = (state.clone(), text.to_ascii_lowercase());
    tokio::task::spawn_blocking(move || find_snapshot(&st, &text)).await?
}

fn find_snapshot(state: &AppState, text: &str) -> ApiResult<SnapshotId> {
    state.view.refresh_if_stale();
    // Not found is a 404, several a 400.
    Ok(state.view.find_snapshot(text)?)
}

fn time_text(t: rewind_store::Time) -> String {
    jiff::Timestamp::new(t.sec, t.nsec as i32).map(|t| t.to_string()).unwrap_or_default()
}

/// An entry as the API shows it. Passthrough folders show their name and nothing else. A path
/// that is not UTF-8 is shown lossily and also as `path_b64`, which the path parameters take.
pub(crate) fn entry_json(node: &Node, path: &[u8], access: Access) -> Value {
    let mut v = entry_json_text(node, path, access);
    if paths::needs_b64(path) {
        v["path_b64"] = json!(paths::to_b64(path));
    }
    v
}

fn entry_json_text(node: &Node, path: &[u8], access: Access) -> Value {
    let name = node.name_lossy();
    let path = String::from_utf8_lossy(path);
    match access {
        Access::Passthrough => json!({ "name": name, "path": path, "kind": "dir", "passthrough": true }),
        Access::Visible => {
            let mut v = json!({
                "name": name,
                "path": path,
                "kind": node.kind.as_str(),
                "size": if node.kind == NodeKind::File { node.size } else { 0 },
                "mtime": time_text(node.mtime),
                "mode": format!("{:04o}", node.mode & 0o7777),
                "uid": node.uid,
                "gid": node.gid,
                "user": node.user,
                "group": node.group,
                "passthrough": false,
            });
            // The `content` of this version in search, deleted and history answers.
            if let Some(c) = node.content_id() {
                v["content_id"] = json!(c.to_hex());
            }
            if node.kind == NodeKind::Symlink {
                v["target"] = json!(String::from_utf8_lossy(&node.target));
            }
            v
        }
    }
}

/// Resolve `snapshot` + checked path components ([`paths::param`]) for the session (blocking:
/// reads trees).
pub(crate) fn resolve(state: &AppState, sub: &Subject, snapshot: SnapshotId, comps: &[Vec<u8>]) -> ApiResult<Resolved> {
    state.policy.resolve(&state.view, sub, snapshot, comps)
}

/// `GET /api/browse?snapshot=ID&path=/a/b` (or `path_b64=`).
pub async fn browse(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    client: ClientAddr,
    s: Session,
) -> ApiResult<Json<Value>> {
    let p = Params::parse(q.as_deref())?;
    let snapshot = parse_snapshot(&state, p.require("snapshot")?).await?;
    let path = paths::param(&p, "path")?.unwrap_or_default();
    let shown = String::from_utf8_lossy(&paths::join_bytes(&path)).into_owned();
    let sub = subject(&state, &s);
    let st = state.clone();
    let found = tokio::task::spawn_blocking(move || -> ApiResult<_> {
        let dir = resolve(&st, &sub, snapshot, &path)?;
        if dir.node.as_ref().is_some_and(|n| !n.is_dir()) {
            return Err(ApiError::BadRequest("not a folder; use /api/download".into()));
        }
        let children = st.policy.children(&st.view, &sub, &dir)?;
        Ok((dir, children))
    })
    .await?;
    let (dir, children) = audit_not_found(&state, &s, &client, "browse", Some(snapshot), || vec![shown], found)?;
    let entries: Vec<Value> =
        children.iter().filter_map(|c| c.node.as_ref().map(|n| entry_json(n, &c.walk.path, c.access))).collect();
    let snap = state.view.snapshot(&snapshot).ok_or(ApiError::NotFound)?;
    let this = match &dir.node {
        Some(n) => entry_json(n, &dir.walk.path, dir.access),
        None => json!({ "name": "", "path": "/", "kind": "dir", "passthrough": dir.access == Access::Passthrough }),
    };
    let mut out = json!({
        "snapshot": snapshot_json(&state, &snap),
        "path": if dir.walk.path.is_empty() { "/".to_string() } else { String::from_utf8_lossy(&dir.walk.path).into_owned() },
        "dir": this,
        "entries": entries,
    });
    if paths::needs_b64(&dir.walk.path) {
        out["path_b64"] = json!(paths::to_b64(&dir.walk.path));
    }
    Ok(Json(out))
}

/// `GET /healthz`: the repository can be listed.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let st = state.clone();
    match tokio::task::spawn_blocking(move || st.view.repo().repo().snapshot_ids()).await {
        // Still 200 (the portal serves): a load balancer needs no catalog; scripts and tests
        // that do can wait for the plain "ok".
        Ok(Ok(_)) if state.catalog.building() => (StatusCode::OK, "ok (catalog being built)\n").into_response(),
        Ok(Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "repository unreadable\n").into_response(),
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
