//! Calls made from inside a tool: who may make them, and how deep they go.
//!
//! A tool gets [`CALLER_ENV`] in its environment: its caller's uid and the
//! call depth, signed with a key only this daemon holds, made at start. A
//! call from inside a container (`xargs jq`, `make`, `git` running a pager)
//! is served only with a valid stamp for the very uid the kernel reports
//! for it, and as that peer (its own credentials): a process there that
//! changed its uid, or holds no stamp, is refused. Tools that could read
//! other users' environments or change their uid (those of images whose
//! tools run as root or hold capabilities beyond the network ones, see
//! [`crate::catalog::ImageSpec::shares_host_namespaces`]) get no stamp, so
//! their calls are refused: no privilege passes down, and no stamp can be
//! taken from another caller's tool. On the host a stamp adds only depth.

use ring::hmac;

/// The environment variable a tool's caller is stamped in.
pub const CALLER_ENV: &str = "ODFS_CALLER";

/// Calls nested deeper than this are refused (a tool that runs itself).
pub const MAX_DEPTH: u32 = 8;

/// Why a call's stamp does not let it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StampRefusal {
    /// What a process inside a container hears when it may not ask.
    #[error("inside a container, odfs serves only tools run from a tool odfs started, as that tool's own caller (ODFS_CALLER); a tool of an image that runs as root or holds capabilities other than network ones cannot run odfs tools")]
    Unstamped,
    #[error("calls nested {MAX_DEPTH} deep: a tool that runs odfs tools ran into itself, or loops (ODFS_CALLER counts the depth)")]
    TooDeep,
}

/// A tool's stamp: its caller's uid and the depth of its call (1: called
/// from the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub uid: u32,
    pub depth: u32,
}

/// The daemon's signing key, new at every fresh start and passed on to a
/// successor that takes the mount over (tools running then keep stamps
/// that the successor honours).
pub struct Stamps {
    key: hmac::Key,
    secret: [u8; 32],
}

impl Stamps {
    pub fn new() -> Stamps {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).expect("the system's random source");
        Stamps::with_secret(secret)
    }

    pub fn with_secret(secret: [u8; 32]) -> Stamps {
        Stamps { key: hmac::Key::new(hmac::HMAC_SHA256, &secret), secret }
    }

    /// The key's bytes, for a successor only.
    pub fn secret(&self) -> [u8; 32] {
        self.secret
    }

    /// `uid.depth.MAC`.
    pub fn sign(&self, s: Stamp) -> String {
        let body = format!("{}.{}", s.uid, s.depth);
        let tag = hmac::sign(&self.key, body.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{body}.{hex}")
    }

    /// The stamp a text holds, if this daemon signed it.
    pub fn verify(&self, text: &str) -> Option<Stamp> {
        let (body, hex) = text.rsplit_once('.')?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tag: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)).collect::<Result<_, _>>().ok()?;
        hmac::verify(&self.key, body.as_bytes(), &tag).ok()?;
        let (uid, depth) = body.split_once('.')?;
        Some(Stamp { uid: uid.parse().ok()?, depth: depth.parse().ok()? })
    }

    /// The depth of a request from a peer of `uid` whose environment is
    /// `env`, or why it is refused; `inside`: the peer runs in a container.
    pub fn depth(&self, uid: u32, env: &[Vec<u8>], inside: bool) -> Result<u32, StampRefusal> {
        let prefix = format!("{CALLER_ENV}=");
        let stamp = env
            .iter()
            .rev()
            .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
            .and_then(|v| self.verify(std::str::from_utf8(v).ok()?))
            .filter(|s| s.uid == uid);
        let depth = match stamp {
            Some(s) => s.depth + 1,
            None if inside => return Err(StampRefusal::Unstamped),
            None => 1,
        };
        if depth > MAX_DEPTH {
            return Err(StampRefusal::TooDeep);
        }
        Ok(depth)
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
        let t = s.sign(Stamp { uid: 1000, depth: 2 });
        assert_eq!(s.verify(&t), Some(Stamp { uid: 1000, depth: 2 }));
        assert_eq!(s.verify(&t.replacen("1000", "0", 1)), None);
        assert_eq!(s.verify(&t[..t.len() - 1]), None);
        assert_eq!(Stamps::new().verify(&t), None);
    }

    #[test]
    fn inside_a_container_only_the_stamped_uid_is_served() {
        let s = Stamps::new();
        let stamp = s.sign(Stamp { uid: 1000, depth: 1 });
        assert_eq!(s.depth(1000, &env(&stamp), true), Ok(2));
        // Root there (a root tool, or one that took a uid): refused.
        assert!(s.depth(0, &env(&stamp), true).is_err());
        assert!(s.depth(0, &[], true).is_err());
        // Another uid holding this stamp, inside: refused; on the host: itself.
        assert!(s.depth(2000, &env(&stamp), true).is_err());
        assert_eq!(s.depth(2000, &env(&stamp), false), Ok(1));
        // A forged stamp is none.
        assert!(s.depth(0, &env("0.1.00"), true).is_err());
        // Root on the host, and a root caller's own tool.
        assert_eq!(s.depth(0, &[], false), Ok(1));
        assert_eq!(s.depth(0, &env(&s.sign(Stamp { uid: 0, depth: 3 })), true), Ok(4));
    }

    #[test]
    fn depth_is_bounded() {
        let s = Stamps::new();
        let deep = s.sign(Stamp { uid: 1000, depth: MAX_DEPTH });
        let e = s.depth(1000, &env(&deep), true).unwrap_err();
        assert_eq!(e, StampRefusal::TooDeep);
        assert!(e.to_string().contains("nested 8 deep"), "{e}");
        let ok = s.sign(Stamp { uid: 1000, depth: MAX_DEPTH - 1 });
        assert_eq!(s.depth(1000, &env(&ok), true), Ok(MAX_DEPTH));
    }
}
