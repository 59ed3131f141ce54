//! Sessions: a signed JWT (HS256) in an HttpOnly, SameSite=Strict cookie, checked in exactly one
//! place: the [`Session`] extractor that every protected handler takes.
//!
//! - The token carries the identity (so sessions keep working while the directory is down), a
//!   session id (revoked at logout), a CSRF token (echoed in `X-CSRF-Token` on every
//!   state-changing request), the login time (a session ends `max_age` after it, however active)
//!   and, for helpdesk staff acting for a user, that user and the reason.
//! - Only HS256 with our key is accepted: `alg: none`, another algorithm, another key, a past
//!   expiry or an altered claim all fail verification.
//! - A token older than half its lifetime is replaced on the next request (sliding expiry). That
//!   renewal asks the user's realm again: roles and account state follow the directory within a
//!   token's lifetime. A removed or disabled account ends the session there; while the realm
//!   cannot be asked, the session keeps its roles for `directory_grace_secs` after the last
//!   answer, then is refused (503) until it answers.
//! - When that check is due is a claim of its own (`rck`), set only by a renewal: endpoints that
//!   hand out a new token (acting for a user, and back) keep it, and keep the token's times, so
//!   no request can put the directory's answer off.
//! - Logouts are recorded in the repository (`revoked/`, store/FORMAT.md "Revocations") until
//!   the session could have ended anyway: a restart does not bring a logged-out token back, and
//!   every replica serving the repository (with the same key) reads them every few seconds
//!   ([`Keys::poll_revocations`], off the request path) and refuses them too.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::{Identity, Role};
use crate::error::ApiError;
use crate::state::AppState;

/// Helpdesk staff acting for a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acting {
    pub user: Identity,
    pub reason: String,
    pub since: i64,
}

/// What the token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub csrf: String,
    pub iat: i64,
    pub exp: i64,
    pub auth_time: i64,
    pub id: Identity,
    #[serde(default)]
    pub act: Option<Acting>,
    /// When the realm last confirmed the identity (login, or a renewal that reached it).
    #[serde(default)]
    pub chk: i64,
    /// When the realm must be asked again: the first request at or after it renews the session
    /// (0 in tokens of older portals: at once). Only a renewal moves it.
    #[serde(default)]
    pub rck: i64,
}

impl Claims {
    /// Whether the next request renews the session (and asks the realm): the check is due, or
    /// half of the token's lifetime has passed.
    pub fn renewal_due(&self, ttl: i64, now: i64) -> bool {
        now >= self.rck || self.iat + ttl / 2 <= now
    }
}

/// The signing key and token lifetimes.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub ttl: i64,
    pub max_age: i64,
    pub cookie_name: String,
    pub cookie_secure: bool,
    /// Taken by every request (`decode`): held for map operations only, never for I/O.
    revoked: Mutex<HashMap<String, i64>>,
    /// Where revocations are recorded and read: the repository every replica serves.
    shared: Option<rewind_store::Repository>,
    /// Names of the records in `shared` already read (or written here): a poll reads only others.
    seen: Mutex<HashSet<String>>,
    /// Records written while the map's lock was free, for tests.
    #[cfg(test)]
    appends_off_lock: std::sync::atomic::AtomicUsize,
}

/// How often a portal reads the revocations of the others: every few seconds, and at least
/// four times per token lifetime.
pub fn revocation_poll_interval(ttl_secs: u64) -> std::time::Duration {
    std::time::Duration::from_secs((ttl_secs / 4).clamp(1, 5))
}

pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), &mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Read the key file, or create it once with 64 random bytes, mode 0600.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::read(path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "{}: session key file is readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                );
            }
            if bytes.len() < 32 {
                anyhow::bail!("{}: session key is shorter than 32 bytes", path.display());
            }
            Ok(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; 64];
            rand::Rng::fill(&mut rand::rng(), &mut key[..]);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).ok();
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&key)?;
            f.sync_all()?;
            tracing::info!("generated a new session key in {}", path.display());
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl Keys {
    pub fn new(secret: &[u8], cfg: &crate::config::SessionConfig, tls: bool) -> Keys {
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl: cfg.ttl_secs as i64,
            max_age: cfg.max_age_secs as i64,
            cookie_name: cfg.cookie_name.clone(),
            cookie_secure: cfg.cookie_secure || tls,
            revoked: Mutex::new(HashMap::new()),
            shared: None,
            seen: Mutex::new(HashSet::new()),
            #[cfg(test)]
            appends_off_lock: Default::default(),
        }
    }

    /// Refuse the sessions of `<key_file>.revoked`, where portals before revocations lived in
    /// the repository kept them (read once; no longer written).
    pub fn with_legacy_revocations(self, path: &Path) -> anyhow::Result<Keys> {
        use anyhow::Context;
        let t = now();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut r = self.revoked.lock();
                for line in text.lines() {
                    if let Some((sid, until)) = line.split_once(' ')
                        && let Ok(until) = until.parse::<i64>()
                        && until > t
                    {
                        r.insert(sid.to_string(), until);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        Ok(self)
    }

    /// Record logouts in `repo` and refuse the sessions its records name (read now, then at
    /// each [`Keys::poll_revocations`]).
    pub fn with_shared_revocations(mut self, repo: rewind_store::Repository) -> anyhow::Result<Keys> {
        use anyhow::Context;
        let location = repo.location();
        self.shared = Some(repo);
        let n = self.poll_revocations().with_context(|| format!("reading the session revocations of {location}"))?;
        tracing::debug!("{n} revoked sessions in {location}");
        Ok(self)
    }

    /// Read the revocation records other portals (or this one before a restart) wrote since the
    /// last poll, and remove those past their time; returns how many were new. Blocks on the
    /// repository: call from a thread of its own. No lock is held across a read.
    pub fn poll_revocations(&self) -> Result<usize, rewind_store::Error> {
        use rewind_store::revocation_until;
        let Some(repo) = &self.shared else { return Ok(0) };
        let t = now();
        let names = repo.revocation_names()?;
        let unseen: Vec<&String> = {
            let seen = self.seen.lock();
            names.iter().filter(|n| !seen.contains(*n)).collect()
        };
        let (mut found, mut read) = (Vec::new(), Vec::new());
        for name in unseen {
            match revocation_until(name) {
                Some(until) if until > t => match repo.load_revocation(name) {
                    Ok(r) => {
                        found.push(r);
                        read.push(name.clone());
                    }
                    // Removed since the listing: past its time.
                    Err(rewind_store::Error::NotFound(_)) => {}
                    Err(e) => {
                        tracing::warn!("ignoring a revocation record: {e}");
                        read.push(name.clone());
                    }
                },
                // Past its time (removed below), or not a record's name: nothing to read.
                _ => read.push(name.clone()),
            }
        }
        {
            let mut r = self.revoked.lock();
            r.retain(|_, until| *until > t);
            for rev in &found {
                r.insert(rev.sid.clone(), rev.until);
            }
        }
        {
            let listed: HashSet<&String> = names.iter().collect();
            let mut seen = self.seen.lock();
            seen.retain(|n| listed.contains(n));
            seen.extend(read);
        }
        for name in names.iter().filter(|n| revocation_until(n).is_some_and(|until| until <= t)) {
            if let Err(e) = repo.delete_revocation(name) {
                tracing::debug!("cannot remove an old revocation record: {e}");
            }
        }
        Ok(found.len())
    }

    /// Claims for a fresh login.
    pub fn new_claims(&self, id: Identity) -> Claims {
        let t = now();
        Claims {
            sub: id.login.clone(),
            sid: random_token(18),
            csrf: random_token(24),
            iat: t,
            exp: t + self.ttl,
            auth_time: t,
            id,
            act: None,
            chk: t,
            rck: t + self.ttl / 2,
        }
    }

    pub fn encode(&self, claims: &Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding).map_err(ApiError::internal)
    }

    /// Verify a token: our key, HS256 only, not expired, not revoked, not past `max_age`.
    pub fn decode(&self, token: &str) -> Result<Claims, ApiError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.algorithms = vec![Algorithm::HS256];
        v.leeway = 0;
        v.validate_exp = true;
        v.set_required_spec_claims(&["exp", "sub", "iat"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| {
            tracing::debug!("session token refused: {e}");
            ApiError::Unauthenticated
        })?;
        let c = data.claims;
        let t = now();
        if c.exp <= t || c.auth_time + self.max_age <= t || c.sub != c.id.login {
            return Err(ApiError::Unauthenticated);
        }
        if self.revoked.lock().contains_key(&c.sid) {
            return Err(ApiError::Unauthenticated);
        }
        Ok(c)
    }

    /// Logout: the session id is refused until the session could have lived anyway. Refused here
    /// at once; then recorded in the repository with the map free, so requests do not wait for
    /// the storage, and the other replicas refuse it from their next poll. Blocks: async callers
    /// use [`Keys::revoke_async`].
    pub fn revoke(&self, claims: &Claims) {
        let until = claims.auth_time + self.max_age;
        {
            let mut r = self.revoked.lock();
            let t = now();
            r.retain(|_, until| *until > t);
            r.insert(claims.sid.clone(), until);
        }
        if let Some(repo) = &self.shared {
            #[cfg(test)]
            self.appends_off_lock
                .fetch_add(usize::from(self.revoked.try_lock().is_some()), std::sync::atomic::Ordering::Relaxed);
            match repo.record_revocation(&rewind_store::Revocation { sid: claims.sid.clone(), until }) {
                Ok(name) => {
                    self.seen.lock().insert(name);
                }
                Err(e) => tracing::error!("cannot record a logout in {}: {e}", repo.location()),
            }
        }
    }

    /// [`Keys::revoke`] on a blocking thread (it writes to the repository).
    pub async fn revoke_async(state: &crate::state::AppState, claims: &Claims) {
        let (st, claims) = (state.clone(), claims.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || st.keys.revoke(&claims)).await {
            tracing::error!("recording a logout failed: {e}");
        }
    }

    pub fn cookie(&self, token: &str) -> HeaderValue {
        let secure = if self.cookie_secure { "; Secure" } else { "" };
        let v = format!(
            "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            self.cookie_name, self.max_age
        );
        HeaderValue::from_str(&v).expect("cookie is ASCII")
    }

    pub fn clear_cookie(&self) -> HeaderValue {
        let secure = if self.cookie_secure { "; Secure" } else { "" };
        let v = format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}", self.cookie_name);
        HeaderValue::from_str(&v).expect("cookie is ASCII")
    }

    /// The claims refreshed: new expiry, same session, the directory check as due as it was
    /// (a renewal sets it after asking).
    pub fn refreshed(&self, c: &Claims) -> Claims {
        let t = now();
        Claims { iat: t, exp: (t + self.ttl).min(c.auth_time + self.max_age), ..c.clone() }
    }
}

/// The session token from the `Cookie` header.
pub fn cookie_token<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The host a request names: its `Host` header, or the authority of its URI (HTTP/2).
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> &'a str {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// Whether the portal answers state-changing requests for the `Host` a request names: the host
/// of `public_url`, one of `allowed_hosts`, or, without those, an IP address or `localhost`
/// (with a port or without). A page that rebinds its own DNS name to the portal's address
/// sends that name, so it is refused.
pub fn host_ok(headers: &HeaderMap, uri: &Uri, cfg: &crate::config::Config) -> bool {
    let host = request_host(headers, uri).to_ascii_lowercase();
    if let Some(Ok((_, public))) = cfg.public_url.as_deref().map(crate::config::public_origin)
        && host == public
    {
        return true;
    }
    if cfg.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
        return true;
    }
    if cfg.public_url.is_some() || !cfg.allowed_hosts.is_empty() {
        return false;
    }
    // A name without its port: `[::1]:8080`, `127.0.0.1:8080`, `localhost`.
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host.as_str(), |(n, _)| n),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()
}

/// Whether a state-changing request comes from our own pages: the `Origin` (or, without one,
/// `Sec-Fetch-Site`) must be ours: `public_url`'s, the request's own host's (when the portal
/// answers for it, [`host_ok`]) or one of `allowed_origins`.
pub fn origin_ok(headers: &HeaderMap, uri: &Uri, cfg: &crate::config::Config) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let own = format!("{}://{}", if cfg.tls.is_some() { "https" } else { "http" }, request_host(headers, uri));
        let public = cfg.public_url.as_deref().and_then(|u| crate::config::public_origin(u).ok()).map(|(o, _)| o);
        return (origin.eq_ignore_ascii_case(&own) && host_ok(headers, uri, cfg))
            || public.is_some_and(|p| origin.eq_ignore_ascii_case(&p))
            || cfg.allowed_origins.iter().any(|a| a == origin);
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin" || site == "none",
        // Scripts and curl send neither; the CSRF token (or a JSON body for login) protects them.
        None => true,
    }
}

/// Set by [`refresh_layer`] so that the extractor can hand back a refreshed token.
#[derive(Clone, Default)]
pub(crate) struct RefreshSlot(Arc<Mutex<Option<HeaderValue>>>);

/// Middleware: gives the [`Session`] extractor a place to put a refreshed cookie and sets it on
/// the response.
pub(crate) async fn refresh_layer(mut req: Request, next: Next) -> Response {
    let slot = RefreshSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut resp = next.run(req).await;
    if let Some(cookie) = slot.0.lock().take()
        && !resp.headers().contains_key(header::SET_COOKIE)
    {
        resp.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    resp
}

/// A valid session. Taking it as a handler argument is what makes a handler protected.
#[derive(Clone, Debug)]
pub struct Session {
    pub claims: Claims,
}

impl Session {
    /// Who is logged in.
    pub fn actor(&self) -> &Identity {
        &self.claims.id
    }

    /// Whose files are shown: the user acted for, or the actor.
    pub fn subject(&self) -> &Identity {
        self.claims.act.as_ref().map(|a| &a.user).unwrap_or(&self.claims.id)
    }

    /// Admins (not acting for anyone) see everything.
    pub fn sees_all(&self) -> bool {
        self.claims.act.is_none() && self.claims.id.role == Role::Admin
    }

    pub fn acting(&self) -> Option<&Acting> {
        self.claims.act.as_ref()
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Session, ApiError> {
        let keys = &state.keys;
        let token = cookie_token(&parts.headers, &keys.cookie_name).ok_or(ApiError::Unauthenticated)?;
        let mut claims = keys.decode(token)?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            if !host_ok(&parts.headers, &parts.uri, &state.config) {
                return Err(ApiError::Forbidden("this portal does not answer for that host name (public_url)".into()));
            }
            let sent = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), claims.csrf.as_bytes())
                || !origin_ok(&parts.headers, &parts.uri, &state.config)
            {
                return Err(ApiError::Forbidden("missing or wrong CSRF token or origin".into()));
            }
        }
        if claims.renewal_due(keys.ttl, now()) {
            let slot = parts.extensions.get::<RefreshSlot>().cloned();
            match renew(state, &claims).await {
                Renewal::Renewed(fresh) => {
                    if let Some(slot) = slot
                        && fresh.exp > claims.exp
                    {
                        *slot.0.lock() = Some(keys.cookie(&keys.encode(&fresh)?));
                    }
                    claims = *fresh;
                }
                Renewal::Ended(why) => {
                    Keys::revoke_async(state, &claims).await;
                    state.audit.write(crate::audit::Record {
                        event: "session_end".into(),
                        outcome: format!("ended: {why}"),
                        actor: claims.id.login.clone(),
                        realm: Some(claims.id.realm.clone()),
                        ..crate::audit::Record::default()
                    });
                    if let Some(slot) = slot {
                        *slot.0.lock() = Some(keys.clear_cookie());
                    }
                    return Err(ApiError::Unauthenticated);
                }
                Renewal::Unavailable => {
                    return Err(ApiError::Unavailable(
                        "your account cannot be checked with the directory right now; try again later".into(),
                    ));
                }
            }
        }
        Ok(Session { claims })
    }
}

/// What a renewal found.
enum Renewal {
    /// New claims: a later expiry, and the identity (roles, groups, home...) as the realm says now.
    Renewed(Box<Claims>),
    /// The account is gone or disabled, or its realm is no longer configured: the session ends.
    Ended(String),
    /// The realm cannot be asked and the last answer is older than the grace.
    Unavailable,
}

/// Renew a session: ask the realm of the user (and of the user acted for) again.
async fn renew(state: &AppState, c: &Claims) -> Renewal {
    use crate::auth::AuthError;
    let t = now();
    let grace = state.config.session.directory_grace_secs as i64;
    let mut fresh = state.keys.refreshed(c);
    let last_answer = if c.chk > 0 { c.chk } else { c.auth_time };
    let (found, answered) = state.lookups.lookup(&state.realms, &c.id.realm, &c.id.login).await;
    fresh.rck = t + state.keys.ttl / 2;
    match found {
        Ok(Some(id)) => {
            fresh.id = id;
            fresh.chk = answered;
        }
        // The realm cannot look users up (no service account): the session keeps what it has.
        Ok(None) => fresh.chk = answered,
        Err(AuthError::Unavailable(m)) => {
            if t - last_answer > grace {
                tracing::warn!(user = %c.id.login, realm = %c.id.realm, "session refused: directory unavailable past the grace: {m}");
                return Renewal::Unavailable;
            }
            // Ask again by the end of the grace at the latest.
            fresh.rck = fresh.rck.min(last_answer + grace + 1);
            tracing::info!(user = %c.id.login, realm = %c.id.realm, "session renewed without the directory (within the grace): {m}");
        }
        Err(e) => return Renewal::Ended(e.to_string()),
    }
    if let Some(act) = &mut fresh.act {
        match state.lookups.lookup(&state.realms, &act.user.realm, &act.user.login).await.0 {
            Ok(Some(user)) => act.user = user,
            Ok(None) | Err(AuthError::Unavailable(_)) => {}
            Err(e) => {
                tracing::info!(user = %act.user.login, realm = %act.user.realm, "acting ends: {e}");
                fresh.act = None;
            }
        }
    }
    if fresh.id.role < Role::Helpdesk {
        fresh.act = None;
    }
    // The token names its user: the realm's spelling could have changed.
    fresh.sub = fresh.id.login.clone();
    Renewal::Renewed(Box::new(fresh))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionConfig;

    fn id() -> Identity {
        Identity {
            login: "alice".into(),
            realm: "r".into(),
            role: Role::User,
            display_name: None,
            mail: None,
            uid: Some(2001),
            gids: vec![2001],
            home: None,
            hosts: vec![],
        }
    }

    fn keys(secret: &[u8]) -> Keys {
        Keys::new(secret, &SessionConfig::default(), false)
    }

    #[test]
    fn round_trip_and_refusals() {
        let k = keys(&[7u8; 64]);
        let c = k.new_claims(id());
        let t = k.encode(&c).unwrap();
        assert_eq!(k.decode(&t).unwrap(), c);

        // another key
        assert!(keys(&[8u8; 64]).decode(&t).is_err());
        // alg none
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = t.split('.').nth(1).unwrap();
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(k.decode(&none).is_err());
        // altered claims, old signature
        let mut evil = c.clone();
        evil.id.uid = Some(0);
        let evil_payload = b64(&serde_json::to_string(&evil).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        assert!(k.decode(&format!("{}.{evil_payload}.{}", parts[0], parts[2])).is_err());
        // expired
        let mut old = c.clone();
        old.exp = now() - 1;
        assert!(k.decode(&k.encode(&old).unwrap()).is_err());
        // past max age though refreshed
        let mut ancient = c.clone();
        ancient.auth_time = now() - k.max_age - 1;
        assert!(k.decode(&k.encode(&ancient).unwrap()).is_err());
        // revoked
        k.revoke(&c);
        assert!(k.decode(&t).is_err());
    }

    #[test]
    fn only_a_renewal_puts_the_directory_check_off() {
        let k = keys(&[7u8; 64]);
        let c = k.new_claims(id());
        let t = now();
        assert!(!c.renewal_due(k.ttl, t));
        assert!(c.renewal_due(k.ttl, t + k.ttl / 2));
        // A refreshed token (a new expiry) is as due for the check as before.
        let mut old = c.clone();
        old.iat -= 100;
        old.rck = t - 1;
        let fresh = k.refreshed(&old);
        assert!(fresh.iat >= t && fresh.renewal_due(k.ttl, t));
        // Tokens of older portals have no `rck`: checked at their next request.
        let mut v = serde_json::to_value(&c).unwrap();
        v.as_object_mut().unwrap().remove("rck");
        let legacy: Claims = serde_json::from_value(v).unwrap();
        assert!(legacy.renewal_due(k.ttl, t));
    }

    /// A request that panics while it holds the revocation list does not fail every later one.
    #[test]
    fn a_panic_under_the_revocation_lock_does_not_poison_it() {
        let k = std::sync::Arc::new(keys(&[7u8; 64]));
        let c = k.new_claims(id());
        let k2 = k.clone();
        let panicked = std::thread::spawn(move || {
            let _r = k2.revoked.lock();
            panic!("a request fails")
        });
        assert!(panicked.join().is_err());
        assert!(k.decode(&k.encode(&c).unwrap()).is_ok());
        k.revoke(&c);
        assert!(k.decode(&k.encode(&c).unwrap()).is_err());
    }

    /// Two replicas (or one before and after a restart) on one repository: a logout on one is
    /// refused by the other from its next poll; records past their time are removed unread.
    #[test]
    fn revocations_are_shared_through_the_repository() {
        use rewind_store::{NewKey, Repository};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let repo = Repository::init(&path, Default::default(), Default::default(), NewKey::None).unwrap();
        let open = || Repository::open(&path, None).unwrap();
        let a = keys(&[7u8; 64]).with_shared_revocations(open()).unwrap();
        let b = keys(&[7u8; 64]).with_shared_revocations(open()).unwrap();
        let (x, y) = (a.new_claims(id()), a.new_claims(id()));
        let (tx, ty) = (a.encode(&x).unwrap(), a.encode(&y).unwrap());
        assert_eq!(b.decode(&tx).unwrap(), x, "one key: a session of one replica works on the other");
        a.revoke(&x);
        a.revoke(&y);
        assert_eq!(
            a.appends_off_lock.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "written under the lock of every request"
        );
        assert!(a.decode(&tx).is_err(), "refused at once where it ended");
        assert!(b.decode(&tx).is_ok(), "the other replica has not read it yet");
        assert_eq!(b.poll_revocations().unwrap(), 2);
        assert!(b.decode(&tx).is_err() && b.decode(&ty).is_err());
        assert_eq!(b.poll_revocations().unwrap(), 0, "records are read once");
        assert_eq!(a.poll_revocations().unwrap(), 0, "its own records are not read back");
        let again = keys(&[7u8; 64]).with_shared_revocations(open()).unwrap();
        assert!(again.decode(&tx).is_err(), "logged out before the restart");
        assert!(again.decode(&again.encode(&again.new_claims(id())).unwrap()).is_ok());
        // A record past its time is removed, unread.
        let old = repo.record_revocation(&rewind_store::Revocation { sid: "old".into(), until: now() - 1 }).unwrap();
        assert_eq!(again.poll_revocations().unwrap(), 0);
        assert!(!repo.revocation_names().unwrap().contains(&old));
        assert_eq!(repo.revocation_names().unwrap().len(), 2);
    }

    #[test]
    fn legacy_revocation_files_are_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.revoked");
        let k = keys(&[7u8; 64]);
        let c = k.new_claims(id());
        std::fs::write(&file, format!("{} {}\nbad line\n", c.sid, now() + 100)).unwrap();
        let k = k.with_legacy_revocations(&file).unwrap();
        assert!(k.decode(&k.encode(&c).unwrap()).is_err());
        assert!(k.decode(&k.encode(&k.new_claims(id())).unwrap()).is_ok());
        assert!(keys(&[7u8; 64]).with_legacy_revocations(&dir.path().join("none")).is_ok());
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        let a = load_or_create_key(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_key(&p).unwrap(), a);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_key(&p).is_err());
    }

    #[test]
    fn cookie_flags() {
        let k = Keys::new(&[1; 32], &SessionConfig { cookie_secure: true, ..SessionConfig::default() }, false);
        let c = k.cookie("abc");
        let s = c.to_str().unwrap();
        assert!(s.contains("HttpOnly") && s.contains("SameSite=Strict") && s.contains("Secure"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("x=1; rewind_session=tok; y=2"));
        assert_eq!(cookie_token(&h, "rewind_session"), Some("tok"));
    }

    fn config(extra: &str) -> crate::config::Config {
        toml::from_str(&format!(
            "listen = \"127.0.0.1:0\"\nrepository = \"/r\"\naudit_log = \"/a\"\n{extra}\n[session]\nkey_file = \"/k\"\n[[realm]]\nkind = \"file\"\nname = \"local\"\nusers_file = \"/u\"\n"
        ))
        .unwrap()
    }

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn origins() {
        let uri = Uri::from_static("/api/login");
        let plain = config("");
        assert!(origin_ok(&headers("portal:8080", None), &uri, &plain), "scripts send no origin");
        assert!(origin_ok(&headers("127.0.0.1:8080", Some("http://127.0.0.1:8080")), &uri, &plain));
        assert!(!origin_ok(&headers("127.0.0.1:8080", Some("http://evil.example")), &uri, &plain));
        // A rebound name: its own origin, but not a host this portal answers for.
        assert!(!origin_ok(&headers("evil.example", Some("http://evil.example")), &uri, &plain));
        let allowed = config("allowed_origins = [\"http://evil.example\"]");
        assert!(origin_ok(&headers("127.0.0.1:8080", Some("http://evil.example")), &uri, &allowed));
        let public = config("public_url = \"https://backup.example.org\"");
        assert!(origin_ok(&headers("backup.example.org", Some("https://backup.example.org")), &uri, &public));
        assert!(!origin_ok(&headers("127.0.0.1:8080", Some("http://127.0.0.1:8080")), &uri, &public));
    }

    #[test]
    fn hosts() {
        let uri = Uri::from_static("/api/login");
        let plain = config("");
        for ok in ["127.0.0.1:8080", "127.0.0.1", "[::1]:8080", "localhost:80", "LOCALHOST"] {
            assert!(host_ok(&headers(ok, None), &uri, &plain), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "", "localhost.evil"] {
            assert!(!host_ok(&headers(bad, None), &uri, &plain), "{bad}");
        }
        let public = config("public_url = \"https://Backup.example.org\"\nallowed_hosts = [\"backup:8443\"]");
        assert!(host_ok(&headers("backup.example.org", None), &uri, &public));
        assert!(host_ok(&headers("BACKUP:8443", None), &uri, &public));
        assert!(!host_ok(&headers("127.0.0.1:8080", None), &uri, &public), "configured: only those");
        // HTTP/2 names the host in the URI's authority.
        assert!(host_ok(&HeaderMap::new(), &Uri::from_static("https://backup.example.org/api/x"), &public));
    }
}
