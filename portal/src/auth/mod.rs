//! Authentication realms behind one [`Authenticator`] trait, and the [`Identity`] they produce.
//!
//! A realm answers two questions: "is this the password of this login?" ([`Authenticator::authenticate`])
//! and "who is this login?" without a password, for helpdesk staff acting for a user
//! ([`Authenticator::lookup`]). An empty password is refused before any realm is asked.

use std::future::Future;
use std::pin::Pin;

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
/// keep working while the directory is down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
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
#[derive(Debug, thiserror::Error)]
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
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One realm.
pub trait Authenticator: Send + Sync {
    fn name(&self) -> &str;
    /// Check a password; `password` is never empty here.
    fn authenticate<'a>(&'a self, login: &'a str, password: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>>;
    /// Find a user without a password (helpdesk acting for them).
    fn lookup<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>>;
}

/// Login names: printable, no control characters, bounded; anything else never reaches a realm.
pub fn check_login_name(login: &str) -> Result<(), AuthError> {
    if login.is_empty() || login.len() > 256 || login.chars().any(|c| c.is_control()) {
        return Err(AuthError::InvalidLogin);
    }
    Ok(())
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
        assert!(check_login_name("alice").is_ok());
        assert!(check_login_name("").is_err());
        assert!(check_login_name("a\0b").is_err());
        assert!(check_login_name(&"a".repeat(300)).is_err());
    }
}
