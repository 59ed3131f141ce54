//! The `ldap` realm: search-then-bind with a service account (or bind with a DN template), over
//! StartTLS or `ldaps://` verified against a CA file, with roles from group membership.
//!
//! Every login opens its own connection: binds change a connection's identity, and a fresh
//! connection also tells at once when the directory is down (-> [`AuthError::Unavailable`]).
//!
//! The identity's login is the entry's own login attribute (`uid`) as stored, not what was
//! typed: the directory matches ` dave` and `DAVE` to the entry of `dave`, and that entry is one
//! person. A disabled account is one the `user_filter` does not find (add a condition such as
//! `(!(pwdAccountLockedTime=*))`): it cannot log in, and its live sessions end at renewal.

use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use super::{AuthError, Authenticator, BoxFuture, Identity, LoginFailure, role_from_groups};
use crate::config::LdapConfig;

pub(crate) struct LdapRealm {
    cfg: LdapConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    service_password: Option<String>,
}

/// RFC 4515 escaping of a value placed in a filter: `\`, `*`, `(`, `)` and NUL become `\XX`.
pub(crate) fn escape_filter(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' | '*' | '(' | ')' | '\0' => out.push_str(&format!("\\{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// RFC 4514 escaping of a value placed in a DN.
pub(crate) fn escape_dn(value: &str) -> String {
    ldap3::dn_escape(value).into_owned()
}

fn unavailable(e: impl std::fmt::Display) -> AuthError {
    AuthError::Unavailable(e.to_string())
}

impl LdapRealm {
    pub(crate) fn new(cfg: &LdapConfig) -> anyhow::Result<LdapRealm> {
        use anyhow::Context;
        let needs_tls = cfg.url.starts_with("ldaps://") || cfg.starttls;
        let tls = if needs_tls {
            let mut roots = rustls::RootCertStore::empty();
            match &cfg.ca_file {
                Some(path) => {
                    use rustls::pki_types::{CertificateDer, pem::PemObject};
                    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                        .with_context(|| format!("realm {}: reading {}", cfg.name, path.display()))?
                        .collect::<Result<_, _>>()
                        .with_context(|| format!("realm {}: parsing {}", cfg.name, path.display()))?;
                    if certs.is_empty() {
                        anyhow::bail!("realm {}: no certificate in {}", cfg.name, path.display());
                    }
                    for c in certs {
                        roots.add(c).with_context(|| format!("realm {}: bad CA certificate", cfg.name))?;
                    }
                }
                None => anyhow::bail!(
                    "realm {}: TLS needs ca_file (the CA that signed the directory's certificate)",
                    cfg.name
                ),
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .context("TLS versions")?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(config))
        } else {
            None
        };
        let service_password = match (&cfg.bind_password_file, &cfg.bind_password_env) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("realm {}: reading {}", cfg.name, path.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            (None, Some(var)) => {
                Some(std::env::var(var).with_context(|| format!("realm {}: environment variable {var}", cfg.name))?)
            }
            (None, None) => None,
        };
        if cfg.bind_dn.is_some() && service_password.as_deref().is_none_or(str::is_empty) {
            anyhow::bail!("realm {}: bind_dn needs a non-empty bind_password_file or bind_password_env", cfg.name);
        }
        Ok(LdapRealm { cfg: cfg.clone(), tls, service_password })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.timeout_secs.max(1))
    }

    async fn connect(&self) -> Result<ldap3::Ldap, AuthError> {
        let mut settings = LdapConnSettings::new().set_conn_timeout(self.timeout()).set_starttls(self.cfg.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.cfg.url).await.map_err(unavailable)?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!("ldap connection ended: {e}");
            }
        });
        ldap.with_timeout(self.timeout());
        Ok(ldap)
    }

    fn attrs(&self) -> Vec<String> {
        let a = &self.cfg.attributes;
        vec![
            a.login.clone(),
            a.uid_number.clone(),
            a.gid_number.clone(),
            a.home.clone(),
            a.display_name.clone(),
            a.mail.clone(),
            // memberOf from dynlist/overlays is returned only when asked for by name.
            a.member_of.clone(),
            a.hosts.clone(),
        ]
    }

    /// Find the user's entry with the service account (or read it at the templated DN).
    async fn find_user(&self, ldap: &mut ldap3::Ldap, login: &str) -> Result<Option<SearchEntry>, AuthError> {
        if let (Some(dn), Some(pw)) = (&self.cfg.bind_dn, &self.service_password) {
            ldap.with_timeout(self.timeout());
            let r = ldap.simple_bind(dn, pw).await.map_err(unavailable)?;
            if r.rc != 0 {
                return Err(AuthError::Unavailable(format!("service account bind failed: {}", r)));
            }
        }
        let (base, scope, filter) = match (&self.cfg.bind_dn, &self.cfg.user_dn_template) {
            (None, Some(t)) => (t.replace("{login}", &escape_dn(login)), Scope::Base, "(objectClass=*)".to_string()),
            _ => (
                self.cfg.base_dn.clone(),
                Scope::Subtree,
                self.cfg.user_filter.replace("{login}", &escape_filter(login)),
            ),
        };
        ldap.with_timeout(self.timeout());
        let found = ldap.search(&base, scope, &filter, self.attrs()).await.map_err(unavailable)?;
        if found.1.rc == 32 {
            return Ok(None); // noSuchObject
        }
        let (entries, res) = found.success().map_err(unavailable)?;
        let _ = res;
        let mut entries: Vec<SearchEntry> = entries.into_iter().map(SearchEntry::construct).collect();
        if entries.len() > 1 {
            tracing::warn!(realm = %self.cfg.name, "user filter matched {} entries for one login; refused", entries.len());
            return Ok(None);
        }
        Ok(entries.pop())
    }

    /// Groups (DNs and names) and their gids, from `memberOf` and the optional group search.
    async fn groups(
        &self,
        ldap: &mut ldap3::Ldap,
        login: &str,
        entry: &SearchEntry,
    ) -> Result<(Vec<String>, Vec<u32>), AuthError> {
        let a = &self.cfg.attributes;
        let mut names: Vec<String> = first_all(entry, &a.member_of);
        let mut gids = Vec::new();
        if let (Some(base), Some(filter)) = (&self.cfg.group_base_dn, &self.cfg.group_filter) {
            let filter = filter.replace("{login}", &escape_filter(login)).replace("{dn}", &escape_filter(&entry.dn));
            ldap.with_timeout(self.timeout());
            let (rs, _) = ldap
                .search(base, Scope::Subtree, &filter, vec![a.group_gid_number.clone(), a.group_name.clone()])
                .await
                .map_err(unavailable)?
                .success()
                .map_err(unavailable)?;
            for e in rs.into_iter().map(SearchEntry::construct) {
                if let Some(g) = first(&e, &a.group_gid_number).and_then(|v| v.parse().ok()) {
                    gids.push(g);
                }
                if let Some(n) = first(&e, &a.group_name) {
                    names.push(n);
                }
                names.push(e.dn);
            }
        }
        Ok((names, gids))
    }

    /// The entry's own spelling of its login (its login attribute), or the name as typed for an
    /// entry without one.
    fn login_of(&self, typed: &str, entry: &SearchEntry) -> String {
        let a = &self.cfg.attributes;
        match first(entry, &a.login) {
            Some(l) => l,
            None => {
                tracing::warn!(realm = %self.cfg.name, dn = %entry.dn, "entry has no {} attribute; using the login as typed", a.login);
                typed.to_string()
            }
        }
    }

    async fn identity(&self, ldap: &mut ldap3::Ldap, typed: &str, entry: &SearchEntry) -> Result<Identity, AuthError> {
        let a = &self.cfg.attributes;
        let login = self.login_of(typed, entry);
        let (groups, mut gids) = self.groups(ldap, &login, entry).await?;
        let role = role_from_groups(&self.cfg.roles, &groups).ok_or(AuthError::NotAllowed)?;
        if let Some(g) = first(entry, &a.gid_number).and_then(|v| v.parse().ok()) {
            gids.insert(0, g);
        }
        gids.dedup();
        Ok(Identity {
            login,
            realm: self.cfg.name.clone(),
            role,
            display_name: first(entry, &a.display_name),
            mail: first(entry, &a.mail),
            uid: first(entry, &a.uid_number).and_then(|v| v.parse().ok()),
            gids,
            home: first(entry, &a.home),
            hosts: first_all(entry, &a.hosts),
        })
    }
}

fn first(e: &SearchEntry, attr: &str) -> Option<String> {
    e.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(attr)).and_then(|(_, v)| v.first().cloned())
}

fn first_all(e: &SearchEntry, attr: &str) -> Vec<String> {
    e.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(attr)).map(|(_, v)| v.clone()).unwrap_or_default()
}

impl Authenticator for LdapRealm {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn authenticate<'a>(&'a self, login: &'a str, password: &'a str) -> BoxFuture<'a, Result<Identity, LoginFailure>> {
        Box::pin(async move {
            // An empty password is an unauthenticated bind, which many directories accept.
            if password.is_empty() {
                return Err(AuthError::EmptyPassword.into());
            }
            let mut ldap = self.connect().await?;
            let result = async {
                if let (None, Some(template)) = (&self.cfg.bind_dn, &self.cfg.user_dn_template) {
                    // Bind as the user first, then read their own entry as them.
                    let dn = template.replace("{login}", &escape_dn(login));
                    ldap.with_timeout(self.timeout());
                    // Without a service account nobody is found before the bind: a failure is
                    // the typed name's only.
                    let r = ldap.simple_bind(&dn, password).await.map_err(unavailable)?;
                    match r.rc {
                        0 => {}
                        49 => return Err(AuthError::WrongPassword.into()),
                        32 | 34 => return Err(AuthError::UnknownUser.into()),
                        _ => return Err(AuthError::Unavailable(format!("bind: {r}")).into()),
                    }
                    let entry = self.find_user(&mut ldap, login).await?.ok_or(AuthError::UnknownUser)?;
                    let found = self.login_of(login, &entry);
                    return self.identity(&mut ldap, login, &entry).await.map_err(|e| LoginFailure::of(&found, e));
                }
                let entry = self.find_user(&mut ldap, login).await?.ok_or(AuthError::UnknownUser)?;
                // Whom the directory found for the name typed, however it was typed.
                let found = self.login_of(login, &entry);
                let failed = |e: AuthError| LoginFailure::of(&found, e);
                ldap.with_timeout(self.timeout());
                let r = ldap.simple_bind(&entry.dn, password).await.map_err(|e| failed(unavailable(e)))?;
                match r.rc {
                    0 => {}
                    49 => return Err(failed(AuthError::WrongPassword)), // invalidCredentials
                    32 if self.cfg.bind_dn.is_none() => return Err(AuthError::UnknownUser.into()),
                    _ => return Err(failed(AuthError::Unavailable(format!("bind: {r}")))),
                }
                // Read attributes and groups as the service account where there is one (the
                // user may not read their own groups).
                if let (Some(dn), Some(pw)) = (&self.cfg.bind_dn, &self.service_password) {
                    ldap.with_timeout(self.timeout());
                    let bound = ldap.simple_bind(dn, pw).await.map_err(unavailable);
                    bound.and_then(|r| r.success().map_err(unavailable)).map_err(failed)?;
                }
                self.identity(&mut ldap, login, &entry).await.map_err(failed)
            }
            .await;
            let _ = ldap.unbind().await;
            result
        })
    }

    fn can_lookup(&self) -> bool {
        self.cfg.bind_dn.is_some()
    }

    fn lookup<'a>(&'a self, login: &'a str) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            if self.cfg.bind_dn.is_none() {
                return Err(AuthError::Unavailable("looking users up needs a service account (bind_dn)".into()));
            }
            let mut ldap = self.connect().await?;
            let result = async {
                let entry = self.find_user(&mut ldap, login).await?.ok_or(AuthError::UnknownUser)?;
                self.identity(&mut ldap, login, &entry).await
            }
            .await;
            let _ = ldap.unbind().await;
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_escaping_follows_rfc4515() {
        assert_eq!(escape_filter("alice"), "alice");
        assert_eq!(escape_filter("*"), "\\2a");
        assert_eq!(escape_filter(")(uid=*"), "\\29\\28uid=\\2a");
        assert_eq!(escape_filter("a\\00b"), "a\\5c00b");
        assert_eq!(escape_filter("a\0b"), "a\\00b");
    }

    #[test]
    fn dn_escaping_follows_rfc4514() {
        assert_eq!(escape_dn("a,ou=x"), "a\\2cou\\3dx");
    }
}
