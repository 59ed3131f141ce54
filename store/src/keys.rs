//! Key files: `keys/<id>`, each wrapping the repository's [`MasterKey`] under one secret, so a
//! repository can be opened with any of several passwords (or raw keys), and a password changes
//! without re-encrypting anything.
//!
//! A key file is JSON: who made it and when, how its wrapping key is derived (argon2id of a
//! password with the recorded parameters and salt, or a raw 256-bit key from a file the user keeps
//! outside the repository, for unattended use), and the master key sealed under the wrapping key
//! with the repository's id as associated data. Its name is the BLAKE3 of its bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, MasterKey};
use crate::error::{Error, Result};
use crate::format::Hash;

const KEY_MAGIC: &str = "rewind-key";
const KEY_VERSION: u32 = 2;

/// What opens a key file.
pub enum Secret {
    Password(Zeroizing<String>),
    /// 32 random bytes, kept in a file outside the repository.
    RawKey(Zeroizing<[u8; 32]>),
}

impl Secret {
    pub fn password(p: impl Into<String>) -> Secret {
        Secret::Password(Zeroizing::new(p.into()))
    }

    /// A new raw key, as the text a raw key file holds (64 hex digits and a newline).
    pub fn new_raw_key() -> (Secret, Zeroizing<String>) {
        let mut k = Zeroizing::new([0u8; 32]);
        crypto::fill_random(&mut k[..]);
        let text = Zeroizing::new(format!("{}\n", hex::encode(&k[..])));
        (Secret::RawKey(k), text)
    }

    /// The raw key a raw key file holds.
    pub fn parse_raw_key(text: &str) -> Result<Secret> {
        let mut k = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut k[..])
            .map_err(|_| Error::InvalidInput("a raw key file holds 64 hex digits".into()))?;
        Ok(Secret::RawKey(k))
    }

    fn kind(&self) -> KeyKind {
        match self {
            Secret::Password(_) => KeyKind::Password,
            Secret::RawKey(_) => KeyKind::Raw,
        }
    }
}

/// Where a secret may come from, in the order tried: a raw key file, a password file (its first
/// line), a command (`sh -c`, the first line it prints), an environment variable holding the
/// password. Never the command line, where other users see it.
#[derive(Clone, Debug, Default)]
pub struct SecretSource {
    pub key_file: Option<std::path::PathBuf>,
    pub password_file: Option<std::path::PathBuf>,
    pub password_command: Option<String>,
    /// The name of the environment variable that may hold the password itself.
    pub env: Option<&'static str>,
}

impl SecretSource {
    /// The secret this source names, or `None` if it names none.
    pub fn read(&self) -> Result<Option<Secret>> {
        let bad = |what: String, e: std::io::Error| Error::Key(format!("cannot read {what}: {e}"));
        if let Some(p) = &self.key_file {
            let text = std::fs::read_to_string(p).map_err(|e| bad(format!("the key file {}", p.display()), e))?;
            return Secret::parse_raw_key(&text)
                .map(Some)
                .map_err(|e| Error::Key(format!("key file {}: {e}", p.display())));
        }
        if let Some(p) = &self.password_file {
            let text = std::fs::read_to_string(p).map_err(|e| bad(format!("the password file {}", p.display()), e))?;
            return nonempty(first_line(&text), &format!("the password file {}", p.display())).map(Some);
        }
        if let Some(cmd) = &self.password_command {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| bad(format!("the password command {cmd:?}"), e))?;
            if !out.status.success() {
                return Err(Error::Key(format!("the password command {cmd:?} failed ({})", out.status)));
            }
            return nonempty(first_line(&String::from_utf8_lossy(&out.stdout)), "the password command").map(Some);
        }
        if let Some(var) = self.env
            && let Ok(p) = std::env::var(var)
        {
            return nonempty(&p, var).map(Some);
        }
        Ok(None)
    }

    /// Whether any place is given (the environment variable, if set, included).
    pub fn given(&self) -> bool {
        self.key_file.is_some()
            || self.password_file.is_some()
            || self.password_command.is_some()
            || self.env.is_some_and(|v| std::env::var_os(v).is_some())
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn nonempty(p: &str, from: &str) -> Result<Secret> {
    if p.is_empty() {
        return Err(Error::Key(format!("{from} gives an empty password")));
    }
    Ok(Secret::password(p))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Password,
    Raw,
}

/// argon2id's cost, recorded in each password key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always "argon2id".
    pub algorithm: KdfAlgorithm,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KdfAlgorithm {
    Argon2id,
}

impl Default for KdfParams {
    /// 64 MiB and 3 passes: about a third of a second here, the cost every open pays once.
    fn default() -> Self {
        KdfParams { algorithm: KdfAlgorithm::Argon2id, memory_kib: 64 * 1024, iterations: 3, parallelism: 1 }
    }
}

/// `REPO/keys/<id>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    pub magic: String,
    pub version: u32,
    pub created: jiff::Timestamp,
    pub host: String,
    pub user: String,
    pub kind: KeyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfParams>,
    /// Base64 of 16 random bytes.
    pub salt: String,
    /// Base64 of the sealed master key.
    pub data: String,
}

impl KeyFile {
    /// Wrap `master` of repository `repo_id` under `secret`.
    pub fn wrap(master: &MasterKey, repo_id: &Hash, secret: &Secret, kdf: KdfParams) -> Result<KeyFile> {
        let mut salt = [0u8; 16];
        crypto::fill_random(&mut salt);
        let kdf = matches!(secret, Secret::Password(_)).then_some(kdf);
        let wrapping = wrapping_key(secret, &salt, kdf)?;
        let mut sealed = Vec::new();
        crypto::seal_with(&wrapping, &aad(repo_id), &master.to_bytes(), &mut sealed);
        Ok(KeyFile {
            magic: KEY_MAGIC.into(),
            version: KEY_VERSION,
            created: jiff::Timestamp::now(),
            host: crate::lock::hostname(),
            user: current_user(),
            kind: secret.kind(),
            kdf,
            salt: B64.encode(salt),
            data: B64.encode(sealed),
        })
    }

    /// The master key, if `secret` is this file's; `Ok(None)` when it is not (a wrong password
    /// and a damaged file cannot be told apart: both fail authentication).
    pub fn unwrap(&self, repo_id: &Hash, secret: &Secret) -> Result<Option<MasterKey>> {
        if secret.kind() != self.kind {
            return Ok(None);
        }
        let salt = B64.decode(&self.salt).map_err(|_| Error::corrupt("key file", "salt is not base64"))?;
        let mut sealed = B64.decode(&self.data).map_err(|_| Error::corrupt("key file", "data is not base64"))?;
        let wrapping = wrapping_key(secret, &salt, self.kdf)?;
        if !crypto::open_with(&wrapping, &aad(repo_id), &mut sealed) {
            return Ok(None);
        }
        let plain = Zeroizing::new(sealed);
        MasterKey::from_bytes(&plain)
            .map(Some)
            .ok_or_else(|| Error::corrupt("key file", "master key has the wrong length"))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("key file serializes");
        v.push(b'\n');
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyFile> {
        let k: KeyFile = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("key file", e.to_string()))?;
        if k.magic != KEY_MAGIC {
            return Err(Error::corrupt("key file", format!("magic is {:?}", k.magic)));
        }
        if k.version != KEY_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "key file".into(),
                found: k.version,
                supported: KEY_VERSION,
            });
        }
        if k.kind == KeyKind::Password && k.kdf.is_none() {
            return Err(Error::corrupt("key file", "a password key without KDF parameters"));
        }
        Ok(k)
    }

    /// The file's name: the BLAKE3 of its bytes.
    pub fn name_of(bytes: &[u8]) -> String {
        Hash::of(bytes).to_hex()
    }
}

fn aad(repo_id: &Hash) -> Vec<u8> {
    let mut a = b"rewind v2 key file ".to_vec();
    a.extend_from_slice(&repo_id.0);
    a
}

/// The key that seals the master key: argon2id of a password, or a keyed BLAKE3 of a raw key.
fn wrapping_key(secret: &Secret, salt: &[u8], kdf: Option<KdfParams>) -> Result<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    match secret {
        Secret::Password(password) => {
            let params = kdf.ok_or_else(|| Error::corrupt("key file", "no KDF parameters"))?;
            if params.memory_kib > 4 * 1024 * 1024 || params.iterations > 100 || params.parallelism > 64 {
                return Err(Error::corrupt("key file", "KDF parameters out of range"));
            }
            let p = argon2::Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32))
                .map_err(|e| Error::corrupt("key file", format!("KDF parameters: {e}")))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p)
                .hash_password_into(password.as_bytes(), salt, &mut out[..])
                .map_err(|e| Error::corrupt("key file", format!("KDF: {e}")))?;
        }
        Secret::RawKey(k) => {
            let mut h = blake3::Hasher::new_keyed(k);
            h.update(b"rewind v2 raw key wrap");
            h.update(salt);
            out.copy_from_slice(h.finalize().as_bytes());
        }
    }
    Ok(out)
}

fn current_user() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams { memory_kib: 64, iterations: 1, ..KdfParams::default() }
    }

    #[test]
    fn a_password_key_opens_with_its_password_only() {
        let master = MasterKey::random();
        let repo = Hash::of(b"repo");
        let kf = KeyFile::wrap(&master, &repo, &Secret::password("correct horse"), cheap()).unwrap();
        let kf = KeyFile::decode(&kf.encode()).unwrap();
        assert_eq!(kf.unwrap(&repo, &Secret::password("correct horse")).unwrap().unwrap(), master);
        assert!(kf.unwrap(&repo, &Secret::password("wrong")).unwrap().is_none());
        assert!(kf.unwrap(&Hash::of(b"other repo"), &Secret::password("correct horse")).unwrap().is_none());
        let (raw, _) = Secret::new_raw_key();
        assert!(kf.unwrap(&repo, &raw).unwrap().is_none());
        assert!(!String::from_utf8_lossy(&kf.encode()).contains("correct horse"));
    }

    #[test]
    fn a_raw_key_file_round_trips() {
        let master = MasterKey::random();
        let repo = Hash::of(b"repo");
        let (secret, text) = Secret::new_raw_key();
        let kf = KeyFile::wrap(&master, &repo, &secret, KdfParams::default()).unwrap();
        assert!(kf.kdf.is_none());
        let again = Secret::parse_raw_key(&text).unwrap();
        assert_eq!(kf.unwrap(&repo, &again).unwrap().unwrap(), master);
        assert!(Secret::parse_raw_key("nothex").is_err());
    }

    #[test]
    fn damaged_or_unknown_key_files_are_refused() {
        let kf = KeyFile::wrap(&MasterKey::random(), &Hash::of(b"r"), &Secret::password("p"), cheap()).unwrap();
        let mut v = kf.clone();
        v.version = 3;
        assert!(matches!(KeyFile::decode(&v.encode()), Err(Error::UnsupportedVersion { .. })));
        let mut big = kf.clone();
        big.kdf = Some(KdfParams { memory_kib: u32::MAX, ..cheap() });
        assert!(big.unwrap(&Hash::of(b"r"), &Secret::password("p")).is_err());
        assert!(KeyFile::decode(b"{}").is_err());
    }
}
