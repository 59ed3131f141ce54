//! `rewind`: the command line. Parses arguments, installs logging, runs one command, and reports
//! failure as one line on stderr with a non-zero exit.

mod cli;
#[macro_use]
mod cmd;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Init(a) => cmd::init::run(a),
        Command::Backup(a) => cmd::backup::run(a),
        Command::Snapshots(a) => cmd::snapshots::run(a),
        Command::Ls(a) => cmd::ls::run(a),
        Command::Restore(a) => cmd::restore::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::RebuildIndex(a) => cmd::check::rebuild_index(a),
        Command::Unlock(a) => cmd::unlock::run(a),
        Command::Forget(a) => cmd::maintain::forget(a),
        Command::Prune(a) => cmd::maintain::prune(a),
        Command::Copy(a) => cmd::maintain::copy(a),
        Command::Mount(a) => cmd::mount::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Passwd(a) => cmd::serve::passwd(a),
        Command::Find(a) => cmd::catalog::find(a),
        Command::Deleted(a) => cmd::catalog::deleted(a),
        Command::History(a) => cmd::catalog::history(a),
        Command::Catalog(c) => cmd::catalog::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Key(c) => cmd::keys::run(c),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing more to say, and no failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(code) = cmd::signals::interrupted_exit(&e) {
                eprintln!("rewind: {}", one_line(&e));
                return code;
            }
            eprintln!("rewind: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// The error and its causes on one line, without repeating a cause already in the message.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out.replace('\n', " ")
}
