//! Passwords and raw keys of encrypted repositories: where they come from (never the command
//! line: files, a command, the environment, or the terminal), and `rewind key`.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use rewind_store::{KdfParams, KeyKind, Repository, Secret, SecretSource};

use crate::cli::{
    FromKeyArgs, KdfArgs, KeyAddArgs, KeyArgs, KeyCommand, KeyListArgs, KeyRemoveArgs, NewKeyArgs, ToKeyArgs,
};

pub fn source(k: &KeyArgs) -> SecretSource {
    SecretSource {
        key_file: k.key_file.clone(),
        password_file: k.password_file.clone(),
        password_command: k.password_command.clone(),
        env: Some("REWIND_PASSWORD"),
    }
}

pub fn from_source(k: &FromKeyArgs) -> SecretSource {
    SecretSource {
        key_file: k.from_key_file.clone(),
        password_file: k.from_password_file.clone(),
        password_command: k.from_password_command.clone(),
        env: Some("REWIND_FROM_PASSWORD"),
    }
}

pub fn to_source(k: &ToKeyArgs) -> SecretSource {
    SecretSource {
        key_file: k.to_key_file.clone(),
        password_file: k.to_password_file.clone(),
        password_command: k.to_password_command.clone(),
        env: Some("REWIND_TO_PASSWORD"),
    }
}

fn new_key_source(n: &NewKeyArgs) -> SecretSource {
    SecretSource {
        key_file: None,
        password_file: n.new_password_file.clone(),
        password_command: n.new_password_command.clone(),
        env: Some("REWIND_NEW_PASSWORD"),
    }
}

fn password(p: &str) -> Result<Secret> {
    if p.is_empty() {
        bail!("the password is empty");
    }
    Ok(Secret::password(p))
}

/// Ask on the terminal, if there is one.
fn prompt(question: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on");
    }
    rpassword::prompt_password(question).context("reading the password from the terminal")
}

/// The secret that opens the repository at `path`: from `source`, else asked on the terminal.
pub fn secret_for(path: &Path, source: &SecretSource) -> Result<Secret> {
    if let Some(s) = source.read()? {
        return Ok(s);
    }
    let hint = "give its password with REWIND_PASSWORD, REWIND_PASSWORD_FILE, --password-file or --password-command, or its raw key with --key-file";
    let p = prompt(&format!("password for {}: ", path.display()))
        .with_context(|| format!("repository {} is encrypted: {hint}", path.display()))?;
    password(&p)
}

/// Open the repository a command names, asking for its secret only if it is encrypted.
pub fn open(path: &Path, key: &KeyArgs) -> Result<Repository> {
    open_with(path, &source(key))
}

/// `path`: a directory or an S3 location (`s3:https://host/bucket/prefix`).
pub fn open_with(path: &Path, source: &SecretSource) -> Result<Repository> {
    let storage = storage(path)?;
    let head = Repository::head_in(&*storage).with_context(|| format!("cannot open repository {}", path.display()))?;
    let secret = if head.encryption.is_none() { None } else { Some(secret_for(path, source)?) };
    Repository::open_in(storage, secret.as_ref()).with_context(|| format!("cannot open repository {}", path.display()))
}

/// The storage a repository argument names: a directory or an S3 location.
pub fn storage(path: &Path) -> Result<std::sync::Arc<dyn rewind_store::Backend>> {
    rewind_s3::storage_at(path).with_context(|| format!("cannot reach repository {}", path.display()))
}

/// Refuse to write into an unencrypted repository when a password was given: its config may
/// have been replaced to make us write in the clear (FORMAT.md, "Threat model").
pub fn refuse_plain_with_password(repo: &Repository, key: &KeyArgs) -> Result<()> {
    if !repo.is_encrypted() && source(key).given() {
        bail!(
            "repository {} is not encrypted, but a password or key was given: refusing to write to it in the clear (unset REWIND_PASSWORD and the key options if it is meant to be unencrypted)",
            repo.location()
        );
    }
    Ok(())
}

/// A new secret for `init` or `key add`: a new raw key written to `raw_file`, else a password
/// from `source`, else asked twice on the terminal.
pub fn new_secret(source: &SecretSource, raw_file: Option<&Path>) -> Result<Secret> {
    if let Some(path) = raw_file {
        let (secret, text) = Secret::new_raw_key();
        write_private_new(path, text.as_bytes())?;
        return Ok(secret);
    }
    if let Some(s) = source.read()? {
        return Ok(s);
    }
    let p = prompt("new password: ").context(
        "a new encrypted repository needs a password: give it with REWIND_PASSWORD, --password-file or --password-command, or use --new-raw-key-file",
    )?;
    let again = prompt("the same again: ")?;
    if p != again {
        bail!("the passwords differ");
    }
    password(&p)
}

/// Create `path` with `data`, readable by its owner only; never replace a file.
fn write_private_new(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the key file {}", path.display()))?;
    f.write_all(data).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", path.display()))
}

pub fn kdf(a: &KdfArgs) -> KdfParams {
    KdfParams { memory_kib: a.kdf_memory_kib, iterations: a.kdf_iterations, ..KdfParams::default() }
}

pub fn run(c: KeyCommand) -> Result<ExitCode> {
    match c {
        KeyCommand::List(a) => list(a),
        KeyCommand::Add(a) => add(a, false),
        KeyCommand::Passwd(a) => add(a, true),
        KeyCommand::Remove(a) => remove(a),
    }
}

fn encrypted(repo: &Repository) -> Result<()> {
    if !repo.is_encrypted() {
        bail!("repository {} is not encrypted: it has no keys", repo.location());
    }
    Ok(())
}

fn list(a: KeyListArgs) -> Result<ExitCode> {
    let repo = open(&a.repo.repo, &a.repo.key)?;
    encrypted(&repo)?;
    let mut rows = Vec::new();
    for (name, kf) in repo.key_files()? {
        let current = repo.key_name() == Some(name.as_str());
        match kf {
            Ok(k) => {
                let kind = match k.kind {
                    KeyKind::Password => "password",
                    KeyKind::Raw => "raw key",
                };
                if a.json {
                    rows.push(serde_json::json!({"id": name, "current": current, "kind": kind, "created": k.created, "host": k.host, "user": k.user, "kdf": k.kdf}));
                } else {
                    outln!(
                        "{} {}  {:<8}  {}  {}@{}",
                        if current { "*" } else { " " },
                        &name[..8],
                        kind,
                        k.created.strftime("%Y-%m-%d %H:%M:%S"),
                        k.user,
                        k.host
                    );
                }
            }
            Err(e) => {
                if a.json {
                    rows.push(serde_json::json!({"id": name, "error": e.to_string()}));
                } else {
                    outln!("  {}  damaged: {e}", &name[..name.len().min(8)]);
                }
            }
        }
    }
    if a.json {
        outln!("{}", serde_json::Value::Array(rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn add(a: KeyAddArgs, replace_current: bool) -> Result<ExitCode> {
    let repo = open(&a.repo.repo, &a.repo.key)?;
    encrypted(&repo)?;
    if replace_current && a.new.new_raw_key_file.is_some() {
        bail!("`key passwd` sets a password; add a raw key with `key add --new-raw-key-file`");
    }
    let secret = new_secret(&new_key_source(&a.new), a.new.new_raw_key_file.as_deref())?;
    let name = repo.add_key(&secret, kdf(&a.new.kdf))?;
    outln!("added key {}", &name[..8]);
    if replace_current {
        let old = repo.key_name().map(str::to_string).context("the repository was opened without a key file")?;
        // Opened again with the new key, so that the old one is not the one in use.
        let reopened = Repository::open_in(repo.storage(), Some(&secret))?;
        reopened.remove_key(&old)?;
        outln!("removed key {}", &old[..8]);
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(a: KeyRemoveArgs) -> Result<ExitCode> {
    let repo = open(&a.repo.repo, &a.repo.key)?;
    encrypted(&repo)?;
    let name = repo.remove_key(&a.id)?;
    outln!("removed key {}", &name[..8]);
    Ok(ExitCode::SUCCESS)
}
