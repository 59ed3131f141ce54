//! Authentication realms behind one [`Authenticator`] trait, and the [`Identity`] they produce.
//!
//! A realm answers two questions: "is this the password of this login?" ([`Authenticator::authenticate`])
//! and "who is this login?" without a password, for helpdesk staff acting for a user and for
//! re-reading a live session's roles ([`Authenticator::lookup`]). An empty password is refused
//! before any realm is asked.
//!
//! **One person, one identity.** An [`Identity`] is named by its realm and the realm's own
//! spelling of the login: the directory's `uid` value as stored (however it was typed: ` dave`,
//! `DAVE`, `ｄａｖｅ`), a file realm's configured name. Sessions, the audit log, `/api/me` and
//! access history all use that pair; two realms may each have an `alice`, and they are two
//! people. Where a typed name must be compared without a realm (failed-login budgets, a file
//! realm's names, names several realms know), it is folded as Unicode's compatibility caseless
//! matching does ([`fold_login`]), which takes every spelling a directory takes for a name (its
//! matching rules fold case and compatibility forms) to one key; a realm that found the person
//! says whom ([`LoginFailure::found`]), and that person's budget counts too.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub(crate) mod file;
pub(crate) mod ldap;

pub use file::hash_password;

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Helpdesk,
    Admin,
}

/// Who a user is, as far as authorization cares. Kept in the session token, so that sessions
/// keep working while the directory is down (for a while: see `session.directory_grace_secs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The realm's own spelling of the login (canonical: see the module docs).
    pub login: String,
    pub realm: String,
    pub role: Role,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    /// Numeric uid, for the `owner` and `readable` rules.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Primary and supplementary gids, for the `readable` rule.
    #[serde(default)]
    pub gids: Vec<u32>,
    /// Home directory as the directory knows it (rewritten to backup paths by the `home` rule).
    #[serde(default)]
    pub home: Option<String>,
    /// The user's machines, for the `host` rule.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Why a login failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown user")]
    UnknownUser,
    #[error("wrong password")]
    WrongPassword,
    #[error("empty password")]
    EmptyPassword,
    #[error("user is in no group allowed to log in")]
    NotAllowed,
    #[error("invalid login name")]
    InvalidLogin,
    #[error("account disabled")]
    Disabled,
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

/// A login that did not succeed, and whom the realm found for the name typed (its own spelling
/// of the login), when it found someone: failures count against that person however the name
/// was typed.
#[derive(Clone, Debug)]
pub struct LoginFailure {
    pub error: AuthError,
    pub found: Option<String>,
}

impl From<AuthError> for LoginFailure {
    fn from(error: AuthError) -> LoginFailure {
        LoginFailure { error, found: None }
    }
}

impl LoginFailure {
    /// `error`, for the person the realm knows as `login`.
    pub fn of(login: &str, error: AuthError) -> LoginFailure {
        LoginFailure { error, found: Some(login.to_string()) }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One realm.
pub trait Authenticator: Send + Sync {
    fn name(&self) -> &str;
    /// Check a password; `password` is never empty here.
    fn authenticate<'a>(&'a self, login: &'a str, password: &'a str) -> BoxFuture<'a, Result<Identity, LoginFailure>>;
    /// Find a user without a password (helpdesk acting for them; a session's renewal).
    fn lookup<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>>;
    /// Whether [`Authenticator::lookup`] can work at all (an LDAP realm without a service
    /// account cannot): sessions of a realm that cannot are not re-checked at renewal.
    fn can_lookup(&self) -> bool {
        true
    }
}

/// Login names: printable, no control characters, bounded; anything else never reaches a realm.
/// Give it the trimmed name ([`trim_login`]).
pub fn check_login_name(login: &str) -> Result<(), AuthError> {
    if login.is_empty() || login.len() > 256 || login.chars().any(|c| c.is_control()) {
        return Err(AuthError::InvalidLogin);
    }
    Ok(())
}

/// A typed login without the spaces around it: no realm spells a login with them.
pub fn trim_login(typed: &str) -> &str {
    typed.trim()
}

/// The key of a typed login where neither case nor compatibility forms may matter (failed-login
/// budgets, a file realm's names, names that several realms know): trimmed, then the key of
/// Unicode's compatibility caseless match (D146: NFKD(toCasefold(NFKD(toCasefold(NFD(x)))))),
/// composed (NFKC). ` dave`, `DAVE`, `ｄａｖｅ` (fullwidth), `𝐝𝐚𝐯𝐞` (mathematical bold) and
/// `ⓓave` are one name, as they are to a directory's matching rules.
pub fn fold_login(typed: &str) -> String {
    crate::fold::caseless(trim_login(typed)).trim().to_string()
}

/// The highest role any of `groups` maps to; `None` if `map.user` restricts logins and none matches.
pub(crate) fn role_from_groups(map: &crate::config::RoleMap, groups: &[String]) -> Option<Role> {
    let has = |list: &[String]| groups.iter().any(|g| list.iter().any(|want| want.eq_ignore_ascii_case(g)));
    if has(&map.admin) {
        Some(Role::Admin)
    } else if has(&map.helpdesk) {
        Some(Role::Helpdesk)
    } else if map.user.is_empty() || has(&map.user) {
        Some(Role::User)
    } else {
        None
    }
}

/// What a lookup for a renewal found: `None` when the realm cannot look users up.
type Looked = Result<Option<Identity>, AuthError>;

/// A lookup running or done (with the time of its answer, seconds since the epoch), and when
/// it started.
type LookupCell = (Instant, Arc<tokio::sync::OnceCell<(Looked, i64)>>);

/// Realm lookups for session renewals: the requests of one page, which all renew at once, ask
/// the realm once, and an answer (also "unavailable") is reused for a moment.
#[derive(Default)]
pub struct Lookups {
    cells: Mutex<HashMap<(String, String), LookupCell>>,
}

/// How long a lookup's answer is reused.
const LOOKUP_REUSE: Duration = Duration::from_secs(2);

impl Lookups {
    /// The identity of `login` in `realm` as the realm says now, and when it said so (seconds
    /// since the epoch); an error of [`AuthError::UnknownUser`] also when the realm is no
    /// longer configured.
    pub async fn lookup(&self, realms: &[Box<dyn Authenticator>], realm: &str, login: &str) -> (Looked, i64) {
        let now = || jiff::Timestamp::now().as_second();
        let Some(r) = realms.iter().find(|r| r.name() == realm) else { return (Err(AuthError::UnknownUser), now()) };
        if !r.can_lookup() {
            return (Ok(None), now());
        }
        let cell = {
            let mut cells = self.cells.lock();
            if cells.len() > 10_000 {
                cells.retain(|_, (at, _)| at.elapsed() < LOOKUP_REUSE);
            }
            let key = (realm.to_string(), login.to_string());
            match cells.get(&key) {
                Some((at, cell)) if at.elapsed() < LOOKUP_REUSE => cell.clone(),
                _ => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    cells.insert(key, (Instant::now(), cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_init(|| async { (r.lookup(login).await.map(Some), now()) }).await.clone()
    }
}

/// Build the realms of a configuration.
pub fn build_realms(cfg: &crate::config::Config) -> anyhow::Result<Vec<Box<dyn Authenticator>>> {
    let mut out: Vec<Box<dyn Authenticator>> = Vec::new();
    for r in &cfg.realms {
        match r {
            crate::config::RealmConfig::File(f) => out.push(Box::new(file::FileRealm::load(f)?)),
            crate::config::RealmConfig::Ldap(l) => out.push(Box::new(ldap::LdapRealm::new(l)?)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoleMap;

    #[test]
    fn roles_pick_the_highest() {
        let map = RoleMap { admin: vec!["cn=admins".into()], helpdesk: vec!["cn=hd".into()], user: vec![] };
        assert_eq!(role_from_groups(&map, &["CN=HD".into(), "cn=admins".into()]), Some(Role::Admin));
        assert_eq!(role_from_groups(&map, &["cn=hd".into()]), Some(Role::Helpdesk));
        assert_eq!(role_from_groups(&map, &[]), Some(Role::User));
        let only = RoleMap { user: vec!["cn=staff".into()], ..map };
        assert_eq!(role_from_groups(&only, &["cn=other".into()]), None);
    }

    #[test]
    fn login_names() {
        assert_eq!(fold_login(" DaVe "), "dave");
        assert_eq!(fold_login("Ärger"), "ärger");
        // Compatibility forms and full case folding.
        for typed in
            ["\u{ff44}\u{ff41}\u{ff56}\u{ff45}", "\u{1d41d}\u{1d41a}\u{1d42f}\u{1d41e}", "\u{24d3}ave", "\u{3000}DAVE"]
        {
            assert_eq!(fold_login(typed), "dave", "{typed:?}");
        }
        assert_eq!(fold_login("Straße"), fold_login("STRASSE"));
        assert_eq!(fold_login("A\u{30a}"), fold_login("\u{c5}"), "canonically equivalent");
        assert_ne!(fold_login("dave"), fold_login("dove"));
        assert!(check_login_name("alice").is_ok());
        assert!(check_login_name("").is_err());
        assert!(check_login_name("a\0b").is_err());
        assert!(check_login_name(&"a".repeat(300)).is_err());
    }
}
