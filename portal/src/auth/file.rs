//! The `file` realm: local users in a TOML file with argon2id hashes.
//!
//! ```toml
//! [users.alice]
//! hash = "$argon2id$v=19$..."     # `rewind passwd alice`
//! role = "user"                   # user | helpdesk | admin
//! uid = 2001
//! gids = [2001]
//! home = "/home/alice"
//! hosts = ["alice-laptop"]
//! display_name = "Alice"
//! mail = "alice@example.org"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Deserialize;

use super::{AuthError, Authenticator, BoxFuture, Identity, Role};
use crate::config::FileRealmConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, FileUser>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    hash: String,
    #[serde(default = "default_role")]
    role: Role,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gids: Vec<u32>,
    #[serde(default)]
    home: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    mail: Option<String>,
}

fn default_role() -> Role {
    Role::User
}

/// An argon2id hash of `password` in PHC format, for the users file.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut salt[..]);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
        .to_string())
}

pub(crate) struct FileRealm {
    name: String,
    path: PathBuf,
    users: BTreeMap<String, FileUser>,
    /// Verified against for unknown users, so both take the same time.
    dummy_hash: String,
}

impl FileRealm {
    pub(crate) fn load(cfg: &FileRealmConfig) -> anyhow::Result<FileRealm> {
        use anyhow::Context;
        let text = std::fs::read_to_string(&cfg.users_file)
            .with_context(|| format!("realm {}: reading {}", cfg.name, cfg.users_file.display()))?;
        let file: UsersFile = toml::from_str(&text)
            .with_context(|| format!("realm {}: parsing {}", cfg.name, cfg.users_file.display()))?;
        for (login, u) in &file.users {
            let parsed = PasswordHash::new(&u.hash)
                .map_err(|e| anyhow::anyhow!("realm {}: user {login}: bad hash: {e}", cfg.name))?;
            if parsed.algorithm.as_str() != "argon2id" {
                anyhow::bail!("realm {}: user {login}: hash is not argon2id", cfg.name);
            }
        }
        Ok(FileRealm {
            name: cfg.name.clone(),
            path: cfg.users_file.clone(),
            users: file.users,
            dummy_hash: hash_password("not a password")?,
        })
    }

    fn identity(&self, login: &str, u: &FileUser) -> Identity {
        Identity {
            login: login.to_string(),
            realm: self.name.clone(),
            role: u.role,
            display_name: u.display_name.clone(),
            mail: u.mail.clone(),
            uid: u.uid,
            gids: u.gids.clone(),
            home: u.home.clone(),
            hosts: u.hosts.clone(),
        }
    }
}

impl Authenticator for FileRealm {
    fn name(&self) -> &str {
        &self.name
    }

    fn authenticate<'a>(&'a self, login: &'a str, password: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            let user = self.users.get(login);
            let hash = user.map(|u| u.hash.clone()).unwrap_or_else(|| self.dummy_hash.clone());
            let pw = password.to_string();
            // argon2 is deliberately slow: keep it off the async workers.
            let ok = tokio::task::spawn_blocking(move || {
                PasswordHash::new(&hash)
                    .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
                    .unwrap_or(false)
            })
            .await
            .map_err(|e| AuthError::Unavailable(format!("{}: {e}", self.path.display())))?;
            match (user, ok) {
                (None, _) => Err(AuthError::UnknownUser),
                (Some(_), false) => Err(AuthError::WrongPassword),
                (Some(u), true) => Ok(self.identity(login, u)),
            }
        })
    }

    fn lookup<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move { self.users.get(login).map(|u| self.identity(login, u)).ok_or(AuthError::UnknownUser) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_realm_checks_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let path = dir.path().join("users.toml");
        std::fs::write(&path, format!("[users.alice]\nhash = '{hash}'\nuid = 2001\nrole = 'helpdesk'\n")).unwrap();
        let realm = FileRealm::load(&FileRealmConfig { name: "local".into(), users_file: path }).unwrap();
        let id = realm.authenticate("alice", "s3cret").await.unwrap();
        assert_eq!((id.uid, id.role), (Some(2001), Role::Helpdesk));
        assert!(matches!(realm.authenticate("alice", "wrong").await, Err(AuthError::WrongPassword)));
        assert!(matches!(realm.authenticate("bob", "s3cret").await, Err(AuthError::UnknownUser)));
        assert!(realm.lookup("alice").await.is_ok());
    }
}
