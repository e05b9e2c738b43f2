//! Calls made from inside a tool: who they are for, and how deep they go.
//!
//! Every tool gets [`CALLER_ENV`] in its environment: its caller's uid, gid,
//! groups and call depth, signed with a key only this daemon holds. A call
//! from that tool (`xargs jq`, `make`, `git` running a pager) carries it in
//! the launcher's environment. A tool running as its caller connects with
//! the caller's own credentials, so the stamp only adds the depth; a tool
//! running as root (`user = "root"`) connects as root, and the stamp makes
//! its calls its caller's again: no privilege passes down. Root inside a
//! container without a valid stamp is refused.

use ring::hmac;

/// The environment variable a tool's caller is stamped in.
pub const CALLER_ENV: &str = "ODFS_CALLER";

/// What root inside a container hears when it has no stamp, or asks for
/// anything but a tool.
pub const ROOT_INSIDE: &str =
    "root inside a container may run odfs tools only from a tool odfs started (its caller is stamped in ODFS_CALLER), and may not manage odfs";

/// Calls nested deeper than this are refused (a tool that runs itself).
pub const MAX_DEPTH: u32 = 8;

/// Groups a stamp carries at most; a caller with more is stamped with the
/// first ones (its root tools' calls then have fewer groups, never more).
const MAX_STAMP_GROUPS: usize = 64;

/// Whom a call is for, and at which depth (1: from a host shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub depth: u32,
}

/// The daemon's signing key, new at every start (stamps do not outlive it).
pub struct Stamps {
    key: hmac::Key,
}

impl Stamps {
    pub fn new() -> Stamps {
        let rng = ring::rand::SystemRandom::new();
        Stamps { key: hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the system's random source") }
    }

    /// `uid.gid.g1,g2.depth.MAC`.
    pub fn stamp(&self, o: &Origin) -> String {
        let groups: Vec<String> = o.groups.iter().take(MAX_STAMP_GROUPS).map(u32::to_string).collect();
        let body = format!("{}.{}.{}.{}", o.uid, o.gid, groups.join(","), o.depth);
        let tag = hmac::sign(&self.key, body.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{body}.{hex}")
    }

    /// The origin a stamp names, if this daemon signed it.
    pub fn verify(&self, text: &str) -> Option<Origin> {
        let (body, hex) = text.rsplit_once('.')?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tag: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)).collect::<Result<_, _>>().ok()?;
        hmac::verify(&self.key, body.as_bytes(), &tag).ok()?;
        let mut parts = body.split('.');
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        let groups = parts.next()?;
        let groups = if groups.is_empty() { vec![] } else { groups.split(',').map(str::parse).collect::<Result<_, _>>().ok()? };
        let depth = parts.next()?.parse().ok()?;
        Some(Origin { uid, gid, groups, depth })
    }

    /// Whom a request is for: the peer's credentials (`uid`, `gid`,
    /// `groups`), its environment's stamp, and whether it runs in another
    /// mount namespace than the daemon (inside a container).
    pub fn origin(&self, peer: (u32, u32, &[u32]), env: &[Vec<u8>], in_container: bool) -> Result<Origin, String> {
        let (uid, gid, groups) = peer;
        let prefix = format!("{CALLER_ENV}=");
        let stamped = env.iter().rev().find_map(|kv| kv.strip_prefix(prefix.as_bytes())).and_then(|v| self.verify(std::str::from_utf8(v).ok()?));
        let own = |depth| Origin { uid, gid, groups: groups.to_vec(), depth };
        let origin = match stamped {
            // A root tool's call is its caller's.
            Some(o) if uid == 0 && o.uid != 0 => Origin { depth: o.depth + 1, ..o },
            // A tool running as its caller: the caller's credentials as they
            // are now; another user's stamp lends nothing but its depth.
            Some(o) => own(o.depth + 1),
            None if in_container && uid == 0 => return Err(ROOT_INSIDE.into()),
            None => own(1),
        };
        if origin.depth > MAX_DEPTH {
            return Err(format!("calls nested {MAX_DEPTH} deep: a tool that runs odfs tools ran into itself, or loops (ODFS_CALLER counts the depth)"));
        }
        Ok(origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(stamp: &str) -> Vec<Vec<u8>> {
        vec![b"HOME=/h".to_vec(), format!("{CALLER_ENV}={stamp}").into_bytes()]
    }

    #[test]
    fn stamps_verify_only_unchanged_and_only_for_their_daemon() {
        let s = Stamps::new();
        let o = Origin { uid: 1000, gid: 100, groups: vec![4, 27], depth: 2 };
        let t = s.stamp(&o);
        assert_eq!(s.verify(&t), Some(o.clone()));
        assert_eq!(s.verify(&t.replacen("1000", "0", 1)), None);
        assert_eq!(s.verify(&t[..t.len() - 1]), None);
        assert_eq!(Stamps::new().verify(&t), None);
        let none = Origin { groups: vec![], ..o };
        assert_eq!(s.verify(&s.stamp(&none)), Some(none));
    }

    #[test]
    fn a_root_tool_s_calls_are_its_caller_s_and_root_without_a_stamp_is_refused_inside() {
        let s = Stamps::new();
        let caller = Origin { uid: 1000, gid: 1000, groups: vec![1000], depth: 1 };
        let stamp = s.stamp(&caller);
        // From a root tool: the caller again, one deeper.
        assert_eq!(s.origin((0, 0, &[]), &env(&stamp), true), Ok(Origin { depth: 2, ..caller.clone() }));
        // Root in a container, no stamp or a forged one: refused.
        assert!(s.origin((0, 0, &[]), &[], true).is_err());
        assert!(s.origin((0, 0, &[]), &env("0.0..1.00"), true).is_err());
        // Root on the host: itself.
        assert_eq!(s.origin((0, 0, &[]), &[], false).unwrap().uid, 0);
        // Another user holding this stamp stays itself.
        let other = s.origin((2000, 2000, &[2000]), &env(&stamp), true).unwrap();
        assert_eq!((other.uid, other.groups, other.depth), (2000, vec![2000], 2));
        // The caller's own tool: its current credentials, one deeper.
        assert_eq!(s.origin((1000, 1000, &[1000, 5]), &env(&stamp), true).unwrap().groups, vec![1000, 5]);
    }

    #[test]
    fn depth_is_bounded() {
        let s = Stamps::new();
        let deep = s.stamp(&Origin { uid: 1000, gid: 1000, groups: vec![], depth: MAX_DEPTH });
        let e = s.origin((1000, 1000, &[]), &env(&deep), true).unwrap_err();
        assert!(e.contains("nested 8 deep"), "{e}");
        let ok = s.stamp(&Origin { uid: 1000, gid: 1000, groups: vec![], depth: MAX_DEPTH - 1 });
        assert_eq!(s.origin((1000, 1000, &[]), &env(&ok), true).unwrap().depth, MAX_DEPTH);
    }
}
