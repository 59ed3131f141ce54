//! Sessions: a signed JWT (HS256) in an HttpOnly, SameSite=Strict cookie, checked in exactly one
//! place: the [`Session`] extractor that every protected handler takes.
//!
//! - The token carries the identity (so sessions keep working while the directory is down), a
//!   session id (revoked at logout), a CSRF token (echoed in `X-CSRF-Token` on every
//!   state-changing request), the login time (a session ends `max_age` after it, however active)
//!   and, for helpdesk staff acting for a user, that user and the reason.
//! - Only HS256 with our key is accepted: `alg: none`, another algorithm, another key, a past
//!   expiry or an altered claim all fail verification.
//! - A token older than half its lifetime is replaced on the next request (sliding expiry).
//! - Logouts are kept in `<key_file>.revoked` until the session could have ended anyway, so a
//!   restart does not bring a logged-out token back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
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
}

/// The signing key and token lifetimes.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub ttl: i64,
    pub max_age: i64,
    pub cookie_name: String,
    pub cookie_secure: bool,
    revoked: Mutex<HashMap<String, i64>>,
    /// Revoked session ids survive restarts here (`<key_file>.revoked`, lines `sid until`).
    revoked_file: Option<std::path::PathBuf>,
}

pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), &mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Replace `path` with `data`, mode 0600, through a temporary file.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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
            revoked_file: None,
        }
    }

    /// Keep revocations in `path` (loaded now, appended at each logout, pruned at start).
    pub fn with_revocations(mut self, path: &Path) -> anyhow::Result<Keys> {
        use anyhow::Context;
        let t = now();
        let mut live = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in text.lines() {
                    if let Some((sid, until)) = line.split_once(' ')
                        && let Ok(until) = until.parse::<i64>()
                        && until > t
                    {
                        live.insert(sid.to_string(), until);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let text: String = live.iter().map(|(sid, until)| format!("{sid} {until}\n")).collect();
        write_private(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        self.revoked = Mutex::new(live);
        self.revoked_file = Some(path.to_path_buf());
        Ok(self)
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
        if self.revoked.lock().expect("revoked lock").contains_key(&c.sid) {
            return Err(ApiError::Unauthenticated);
        }
        Ok(c)
    }

    /// Logout: the session id is refused until the session could have lived anyway.
    pub fn revoke(&self, claims: &Claims) {
        let mut r = self.revoked.lock().expect("revoked lock");
        let t = now();
        r.retain(|_, until| *until > t);
        let until = claims.auth_time + self.max_age;
        r.insert(claims.sid.clone(), until);
        if let Some(path) = &self.revoked_file {
            use std::io::Write;
            let appended = std::fs::OpenOptions::new().append(true).open(path).and_then(|mut f| {
                f.write_all(format!("{} {until}\n", claims.sid).as_bytes()).and_then(|_| f.sync_data())
            });
            if let Err(e) = appended {
                tracing::error!("cannot record a logout in {}: {e}", path.display());
            }
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

    /// The claims refreshed: new expiry, same session.
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

/// Whether a state-changing request comes from our own pages: the `Origin` (or, without one,
/// `Sec-Fetch-Site`) must be ours.
pub fn origin_ok(headers: &HeaderMap, allowed: &[String], tls: bool) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let own = format!("{}://{host}", if tls { "https" } else { "http" });
        return origin == own || allowed.iter().any(|a| a == origin);
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
    if let Some(cookie) = slot.0.lock().expect("slot lock").take()
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
        let claims = keys.decode(token)?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), claims.csrf.as_bytes())
                || !origin_ok(&parts.headers, &state.config.allowed_origins, state.config.tls.is_some())
            {
                return Err(ApiError::Forbidden("missing or wrong CSRF token or origin".into()));
            }
        }
        if claims.iat + keys.ttl / 2 <= now()
            && let Some(slot) = parts.extensions.get::<RefreshSlot>()
        {
            let fresh = keys.refreshed(&claims);
            if fresh.exp > claims.exp {
                *slot.0.lock().expect("slot lock") = Some(keys.cookie(&keys.encode(&fresh)?));
            }
        }
        Ok(Session { claims })
    }
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
    fn revocations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.revoked");
        let k = keys(&[7u8; 64]).with_revocations(&file).unwrap();
        let (a, b) = (k.new_claims(id()), k.new_claims(id()));
        let (ta, tb) = (k.encode(&a).unwrap(), k.encode(&b).unwrap());
        k.revoke(&a);
        let again = keys(&[7u8; 64]).with_revocations(&file).unwrap();
        assert!(again.decode(&ta).is_err(), "logged out before the restart");
        assert!(again.decode(&tb).is_ok());
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

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("portal:8080"));
        assert!(origin_ok(&h, &[], false));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://portal:8080"));
        assert!(origin_ok(&h, &[], false));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!origin_ok(&h, &[], false));
        assert!(origin_ok(&h, &["http://evil.example".into()], false));
    }
}
