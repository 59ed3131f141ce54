//! `rewind serve`: the restore portal; `rewind passwd`: a hash for the portal's file realm.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{PasswdArgs, ServeArgs};

pub fn run(a: ServeArgs) -> Result<ExitCode> {
    let config = rewind_portal::Config::load(&a.config)?;
    crate::cmd::tune_allocator(None);
    rewind_portal::serve_blocking(config)?;
    Ok(ExitCode::SUCCESS)
}

/// Read a password from stdin (without echo on a terminal) and print its argon2id hash.
pub fn passwd(a: PasswdArgs) -> Result<ExitCode> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let password = if tty {
        eprint!("Password: ");
        std::io::stderr().flush().ok();
        let pw = without_echo(|| read_line(&stdin))?;
        eprintln!();
        eprint!("Again: ");
        std::io::stderr().flush().ok();
        let again = without_echo(|| read_line(&stdin))?;
        eprintln!();
        anyhow::ensure!(pw == again, "the passwords differ");
        pw
    } else {
        read_line(&stdin)?
    };
    anyhow::ensure!(!password.is_empty(), "empty password");
    let hash = rewind_portal::hash_password(&password)?;
    match a.user {
        Some(user) => outln!("[users.{user}]\nhash = \"{hash}\"\nrole = \"user\""),
        None => outln!("{hash}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn read_line(stdin: &std::io::Stdin) -> Result<String> {
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Run `f` with terminal echo off on stdin.
fn without_echo<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    // SAFETY: termios is plain old data, for which all zero bytes are a valid value.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 and a termios to fill; on failure (not a terminal) it is left unused.
    if unsafe { libc::tcgetattr(0, &mut old) } != 0 {
        return f();
    }
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    // SAFETY: fd 0 and a termios that tcgetattr filled, with echo off.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    let r = f();
    // SAFETY: fd 0 and the termios tcgetattr filled: the settings as they were.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &old) };
    r
}
