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
//! disabled = false                # true: no login, and live sessions end at their renewal
//! ```
//!
//! Names are matched as [`super::fold_login`] folds them (trimmed, without regard to case or
//! compatibility forms); the identity is the name as written here (two names that fold alike
//! are refused). The file is read again when it
//! changes, so a removed or disabled user's sessions end at their next renewal.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::SystemTime;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Deserialize;

use super::{AuthError, Authenticator, BoxFuture, Identity, LoginFailure, Role};
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
    #[serde(default)]
    disabled: bool,
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

/// The users of the file, by folded name ([`super::fold_login`]), with their configured names.
struct Users {
    by_key: HashMap<String, (String, FileUser)>,
    /// When the file was read: its modification time and length.
    stamp: Option<(SystemTime, u64)>,
}

pub(crate) struct FileRealm {
    name: String,
    path: PathBuf,
    users: Mutex<Arc<Users>>,
    /// Verified against for unknown users, so both take the same time.
    dummy_hash: String,
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read_users(name: &str, path: &std::path::Path) -> anyhow::Result<Users> {
    use anyhow::Context;
    let stamp = stamp(path);
    let text = std::fs::read_to_string(path).with_context(|| format!("realm {name}: reading {}", path.display()))?;
    let file: UsersFile = toml::from_str(&text).with_context(|| format!("realm {name}: parsing {}", path.display()))?;
    let mut by_key = HashMap::new();
    for (login, u) in file.users {
        let parsed =
            PasswordHash::new(&u.hash).map_err(|e| anyhow::anyhow!("realm {name}: user {login}: bad hash: {e}"))?;
        if parsed.algorithm.as_str() != "argon2id" {
            anyhow::bail!("realm {name}: user {login}: hash is not argon2id");
        }
        if super::check_login_name(&login).is_err() || super::trim_login(&login) != login {
            anyhow::bail!("realm {name}: user {login:?}: not a valid login name");
        }
        if let Some((other, _)) = by_key.insert(super::fold_login(&login), (login.clone(), u)) {
            anyhow::bail!(
                "realm {name}: users {other:?} and {login:?} differ only in case or form: one person, one name"
            );
        }
    }
    Ok(Users { by_key, stamp })
}

impl FileRealm {
    pub(crate) fn load(cfg: &FileRealmConfig) -> anyhow::Result<FileRealm> {
        let users = read_users(&cfg.name, &cfg.users_file)?;
        Ok(FileRealm {
            name: cfg.name.clone(),
            path: cfg.users_file.clone(),
            users: Mutex::new(Arc::new(users)),
            dummy_hash: hash_password("not a password")?,
        })
    }

    /// The users, read again if the file changed since (a file that no longer reads keeps the
    /// users it had, loudly).
    fn users(&self) -> Arc<Users> {
        let mut users = self.users.lock();
        let now = stamp(&self.path);
        if now != users.stamp {
            match read_users(&self.name, &self.path) {
                Ok(fresh) => {
                    tracing::info!(realm = %self.name, "users file changed: read again");
                    *users = Arc::new(fresh);
                }
                Err(e) => {
                    tracing::error!(realm = %self.name, "users file changed but cannot be used, keeping the old users: {e:#}")
                }
            }
        }
        users.clone()
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

    fn authenticate<'a>(&'a self, login: &'a str, password: &'a str) -> BoxFuture<'a, Result<Identity, LoginFailure>> {
        Box::pin(async move {
            let users = self.users();
            let user = users.by_key.get(&super::fold_login(login));
            let hash = user.map(|u| u.1.hash.clone()).unwrap_or_else(|| self.dummy_hash.clone());
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
                (None, _) => Err(AuthError::UnknownUser.into()),
                (Some((name, _)), false) => Err(LoginFailure::of(name, AuthError::WrongPassword)),
                (Some((name, u)), true) if u.disabled => Err(LoginFailure::of(name, AuthError::Disabled)),
                (Some((name, u)), true) => Ok(self.identity(name, u)),
            }
        })
    }

    fn lookup<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            match self.users().by_key.get(&super::fold_login(login)) {
                None => Err(AuthError::UnknownUser),
                Some((_, u)) if u.disabled => Err(AuthError::Disabled),
                Some((name, u)) => Ok(self.identity(name, u)),
            }
        })
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
        let wrong = realm.authenticate("ALICE", "wrong").await.unwrap_err();
        assert!(matches!(wrong.error, AuthError::WrongPassword));
        assert_eq!(wrong.found.as_deref(), Some("alice"), "the person found, as the realm spells them");
        let unknown = realm.authenticate("bob", "s3cret").await.unwrap_err();
        assert!(matches!(unknown.error, AuthError::UnknownUser) && unknown.found.is_none());
        assert!(realm.lookup("alice").await.is_ok());
        // One name however typed; the identity is the configured spelling.
        assert_eq!(realm.authenticate(" ALICE ", "s3cret").await.unwrap().login, "alice");
        assert_eq!(realm.lookup("Alice").await.unwrap().login, "alice");
        assert_eq!(realm.lookup("\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}").await.unwrap().login, "alice", "fullwidth");
    }

    #[tokio::test]
    async fn file_realm_follows_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let hash = hash_password("pw").unwrap();
        let path = dir.path().join("users.toml");
        let write = |text: &str| {
            std::fs::write(&path, text).unwrap();
            // A new modification time even within the file system's time granularity.
            let t = std::time::SystemTime::now()
                + std::time::Duration::from_secs(std::fs::read_dir(dir.path()).unwrap().count() as u64);
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(t).unwrap();
        };
        write(&format!("[users.Bob]\nhash = '{hash}'\n[users.carol]\nhash = '{hash}'\n"));
        let realm = FileRealm::load(&FileRealmConfig { name: "local".into(), users_file: path.clone() }).unwrap();
        assert_eq!(realm.lookup("bob").await.unwrap().login, "Bob");
        write(&format!("[users.Bob]\nhash = '{hash}'\ndisabled = true\n"));
        assert!(matches!(realm.lookup("bob").await, Err(AuthError::Disabled)));
        assert!(matches!(realm.authenticate("bob", "pw").await, Err(LoginFailure { error: AuthError::Disabled, .. })));
        assert!(matches!(realm.lookup("carol").await, Err(AuthError::UnknownUser)), "removed");
        // A broken file keeps the users it had.
        write("[users.x\n");
        assert!(matches!(realm.lookup("bob").await, Err(AuthError::Disabled)));
        let dup = format!("[users.bob]\nhash = '{hash}'\n[users.BOB]\nhash = '{hash}'\n");
        std::fs::write(&path, dup).unwrap();
        let e = FileRealm::load(&FileRealmConfig { name: "local".into(), users_file: path }).err().unwrap();
        assert!(e.to_string().contains("differ only in case"), "{e}");
    }
}
