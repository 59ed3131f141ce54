use std::process::ExitCode;

use anyhow::{Context, Result};
use rewind_store::{Entry, Images, IndexedRepository, Node, NodeKind, View};

use crate::cli::LsArgs;
use crate::cmd::{open_indexed, show_bytes};

pub fn run(a: LsArgs) -> Result<ExitCode> {
    let repo = open_indexed(&a.repo)?;
    let snap = repo.repo().find_snapshot(&a.snapshot, a.host.as_deref())?;
    let path = a.path.clone().unwrap_or_else(|| "/".into());
    let base = normalize(path.as_bytes());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let node = match repo.node_at(&snap.snapshot, path.as_bytes()) {
        Err(rewind_store::Error::NotFound(_))
            if let Some((view, entry, _)) = crate::cmd::inside_image(&repo, snap.id, &path)? =>
        {
            let node = node_of(&view, &entry)?;
            if node.is_dir() {
                list_view(&view, &entry, &base, a.recursive, a.json, &mut out)?;
            } else {
                print_entry(&node, &base, a.json, &mut out)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        r => r.with_context(|| format!("{path} in snapshot {}", snap.id.short()))?,
    };
    if node.is_dir() {
        list_dir(&repo, &node, &base, a.recursive, a.json, &mut out)?;
    } else {
        print_entry(&node, &base, a.json, &mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn normalize(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in p.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    out
}

fn list_dir(
    repo: &IndexedRepository,
    dir: &Node,
    path: &[u8],
    recursive: bool,
    json: bool,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let Some(id) = dir.subtree else { return Ok(()) };
    let tree = repo.tree(id)?;
    for n in &tree.nodes {
        let mut child = path.to_vec();
        child.push(b'/');
        child.extend_from_slice(&n.name);
        print_entry(n, &child, json, out)?;
        if recursive && n.is_dir() {
            list_dir(repo, n, &child, recursive, json, out)?;
        }
    }
    Ok(())
}

/// The node the view shows for an entry inside a disk image.
fn node_of(view: &View, e: &Entry) -> Result<Node> {
    match e {
        Entry::Image(i) => Ok(view.image_node(i)?),
        _ => anyhow::bail!("not inside a disk image"),
    }
}

/// [`list_dir`] of a folder inside a disk image, through the view.
fn list_view(
    view: &View,
    dir: &Entry,
    path: &[u8],
    recursive: bool,
    json: bool,
    out: &mut impl std::io::Write,
) -> Result<()> {
    for (name, e) in view.list(dir, Images::Show)? {
        let mut child = path.to_vec();
        child.push(b'/');
        child.extend_from_slice(&name);
        let n = node_of(view, &e)?;
        print_entry(&n, &child, json, out)?;
        if recursive && n.is_dir() {
            list_view(view, &e, &child, recursive, json, out)?;
        }
    }
    Ok(())
}

fn print_entry(n: &Node, path: &[u8], json: bool, out: &mut impl std::io::Write) -> Result<()> {
    if json {
        let mut v = serde_json::json!({
            "path": String::from_utf8_lossy(path),
            "name": n.name_lossy(),
            "kind": n.kind.as_str(),
            "mode": n.mode,
            "uid": n.uid,
            "gid": n.gid,
            "user": n.user,
            "group": n.group,
            "size": n.size,
            "mtime": n.mtime.sec,
            "mtime_nsec": n.mtime.nsec,
            "nlink": n.nlink,
            "inode": n.inode,
            "chunks": n.content.len(),
        });
        if std::str::from_utf8(path).is_err() {
            v["path_hex"] = hex::encode(path).into();
        }
        if n.kind == NodeKind::Symlink {
            v["target"] = String::from_utf8_lossy(&n.target).into();
        }
        if let Some(id) = n.subtree {
            v["subtree"] = id.to_hex().into();
        }
        writeln!(out, "{v}")?;
    } else {
        let t = jiff::Timestamp::from_second(n.mtime.sec)
            .map(|t| t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let owner = if n.user.is_empty() { n.uid.to_string() } else { n.user.clone() };
        let group = if n.group.is_empty() { n.gid.to_string() } else { n.group.clone() };
        let mut line =
            format!("{} {:>8} {:>8} {:>12} {} {}", mode_string(n), owner, group, n.size, t, show_bytes(path));
        if n.kind == NodeKind::Symlink {
            line.push_str(" -> ");
            line.push_str(&show_bytes(&n.target));
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `drwxr-xr-x`, with setuid, setgid and sticky as `ls` shows them.
fn mode_string(n: &Node) -> String {
    let t = match n.kind {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::BlockDevice => 'b',
        NodeKind::CharDevice => 'c',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
    };
    let m = n.mode;
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    let special = |x: u32, s: u32, lower: char, upper: char| match (m & x != 0, m & s != 0) {
        (true, true) => lower,
        (false, true) => upper,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        t,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}
