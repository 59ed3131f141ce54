//! Who could read what at backup time: the POSIX permission check (mode bits, or the access ACL
//! when there is one). One implementation, used by the catalog to decide which of its access
//! classes and folder contexts a reader passes ([`crate::Scope::reader`]), and by the portal's
//! policy on the nodes of a snapshot, so that both always agree.

use serde::{Deserialize, Serialize};

/// Read permission.
pub const R: u32 = 4;
/// Write permission.
pub const W: u32 = 2;
/// Execute permission (search, for a folder).
pub const X: u32 = 1;

/// The extended attribute that holds a POSIX access ACL, in the kernel's binary form.
pub const ACL_XATTR: &[u8] = b"system.posix_acl_access";

/// A user as permission checks see them: uid and every group (primary and supplementary).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reader {
    pub uid: u32,
    pub gids: Vec<u32>,
}

/// Whether `reader` has every permission of `want` (bits of [`R`], [`W`], [`X`]) on an object
/// owned by `uid` and `gid` with permission bits `mode`, by its access ACL (the value of
/// [`ACL_XATTR`]) when it has a valid one, else by the mode bits.
pub fn permits(reader: &Reader, uid: u32, gid: u32, mode: u32, acl: Option<&[u8]>, want: u32) -> bool {
    if let Some(acl) = acl.and_then(parse_acl) {
        return acl_permits(&acl, reader, uid, gid, want);
    }
    let grants = |perm: u32| perm & want == want;
    if reader.uid == uid {
        grants((mode >> 6) & 7)
    } else if reader.gids.contains(&gid) {
        grants((mode >> 3) & 7)
    } else {
        grants(mode & 7)
    }
}

/// Whether every reader whatever their uid and groups has every permission of `want` (what
/// [`permits`] would say for each): every class of the mode bits, or every entry of a valid
/// access ACL (named ones and groups through its mask), grants it.
pub fn permits_everyone(mode: u32, acl: Option<&[u8]>, want: u32) -> bool {
    let grants = |perm: u32| perm & want == want;
    if let Some(acl) = acl.and_then(parse_acl) {
        let mask = u32::from(acl.iter().find(|e| e.tag == ACL_MASK).map(|e| e.perm).unwrap_or(7));
        let has = |tag: u16| acl.iter().any(|e| e.tag == tag);
        return has(ACL_USER_OBJ)
            && has(ACL_OTHER)
            && acl.iter().all(|e| match e.tag {
                ACL_USER_OBJ | ACL_OTHER => grants(u32::from(e.perm)),
                ACL_USER | ACL_GROUP_OBJ | ACL_GROUP => grants(u32::from(e.perm) & mask),
                _ => true,
            });
    }
    grants((mode >> 6) & 7) && grants((mode >> 3) & 7) && grants(mode & 7)
}

#[derive(Debug, Clone, Copy)]
struct AclEntry {
    tag: u16,
    perm: u16,
    id: u32,
}

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// The kernel's xattr form: a u32 version (2), then (u16 tag, u16 perm, u32 id) entries, little-endian.
fn parse_acl(b: &[u8]) -> Option<Vec<AclEntry>> {
    if b.len() < 4 || !(b.len() - 4).is_multiple_of(8) || u32::from_le_bytes(b[0..4].try_into().ok()?) != 2 {
        return None;
    }
    Some(
        b[4..]
            .chunks_exact(8)
            .map(|c| AclEntry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

/// The POSIX.1e access check algorithm.
fn acl_permits(acl: &[AclEntry], reader: &Reader, uid: u32, gid: u32, want: u32) -> bool {
    let grants = |perm: u16| u32::from(perm) & want == want;
    let mask = acl.iter().find(|e| e.tag == ACL_MASK).map(|e| e.perm).unwrap_or(7);
    if reader.uid == uid {
        return acl.iter().find(|e| e.tag == ACL_USER_OBJ).is_some_and(|e| grants(e.perm));
    }
    if let Some(e) = acl.iter().find(|e| e.tag == ACL_USER && e.id == reader.uid) {
        return grants(e.perm & mask);
    }
    let mut group_matched = false;
    for e in acl {
        let matches = match e.tag {
            ACL_GROUP_OBJ => reader.gids.contains(&gid),
            ACL_GROUP => reader.gids.contains(&e.id),
            _ => false,
        };
        if matches {
            group_matched = true;
            if grants(e.perm & mask) {
                return true;
            }
        }
    }
    if group_matched {
        return false;
    }
    acl.iter().find(|e| e.tag == ACL_OTHER).is_some_and(|e| grants(e.perm))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(uid: u32, gids: &[u32]) -> Reader {
        Reader { uid, gids: gids.to_vec() }
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(t, p, id) in entries {
            v.extend(t.to_le_bytes());
            v.extend(p.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn mode_bits() {
        assert!(permits(&reader(10, &[]), 10, 20, 0o640, None, R));
        assert!(permits(&reader(11, &[20]), 10, 20, 0o640, None, R));
        assert!(!permits(&reader(11, &[21]), 10, 20, 0o640, None, R));
        // The owner class decides even when group or other would allow.
        assert!(!permits(&reader(10, &[20]), 10, 20, 0o044, None, R));
        assert!(permits(&reader(12, &[]), 10, 20, 0o705, None, R | X));
        assert!(!permits(&reader(12, &[]), 10, 20, 0o704, None, R | X));
    }

    #[test]
    fn acl_rules() {
        let a = acl(&[
            (ACL_USER_OBJ, 6, u32::MAX),
            (ACL_USER, 4, 30),
            (ACL_USER, 4, 31),
            (ACL_GROUP_OBJ, 0, u32::MAX),
            (ACL_GROUP, 4, 40),
            (ACL_MASK, 4, u32::MAX),
            (ACL_OTHER, 0, u32::MAX),
        ]);
        let check = |r: Reader| permits(&r, 10, 20, 0o600, Some(&a), R);
        assert!(check(reader(10, &[])));
        assert!(check(reader(30, &[])), "named user");
        assert!(check(reader(99, &[40])), "named group");
        assert!(!check(reader(99, &[20])), "owning group has nothing");
        assert!(!check(reader(99, &[20, 41])));
        assert!(!check(reader(99, &[])), "other");
        // The mask limits named entries.
        let masked = acl(&[
            (ACL_USER_OBJ, 6, u32::MAX),
            (ACL_USER, 4, 30),
            (ACL_GROUP_OBJ, 0, u32::MAX),
            (ACL_MASK, 0, u32::MAX),
            (ACL_OTHER, 0, u32::MAX),
        ]);
        assert!(!permits(&reader(30, &[]), 10, 20, 0o600, Some(&masked), R));
        // A damaged ACL is no ACL: the mode bits decide.
        assert!(permits(&reader(99, &[]), 10, 20, 0o604, Some(b"\x02\0\0"), R));
    }

    #[test]
    fn permitted_to_everyone() {
        assert!(permits_everyone(0o755, None, R | X));
        assert!(permits_everyone(0o711, None, X));
        assert!(!permits_everyone(0o711, None, R));
        assert!(!permits_everyone(0o751, None, R), "others may not read");
        assert!(!permits_everyone(0o055, None, R), "the owner may not");
        let open = acl(&[(ACL_USER_OBJ, 7, u32::MAX), (ACL_GROUP_OBJ, 5, u32::MAX), (ACL_OTHER, 5, u32::MAX)]);
        assert!(permits_everyone(0o700, Some(&open), R | X), "the ACL decides");
        let named = acl(&[
            (ACL_USER_OBJ, 7, u32::MAX),
            (ACL_USER, 0, 30),
            (ACL_GROUP_OBJ, 5, u32::MAX),
            (ACL_MASK, 7, u32::MAX),
            (ACL_OTHER, 5, u32::MAX),
        ]);
        assert!(!permits_everyone(0o755, Some(&named), X), "user 30 may not");
        // Whatever `permits_everyone` says holds for every reader.
        for mode in [0o755, 0o711, 0o750, 0o705, 0o644, 0o604] {
            for acl in [None, Some(&open[..]), Some(&named[..])] {
                for want in [R, X, R | X] {
                    if permits_everyone(mode, acl, want) {
                        for r in [reader(10, &[]), reader(30, &[20]), reader(31, &[]), reader(32, &[20, 40])] {
                            assert!(permits(&r, 10, 20, mode, acl, want), "{mode:o} {acl:?} {want} {r:?}");
                        }
                    }
                }
            }
        }
    }
}
