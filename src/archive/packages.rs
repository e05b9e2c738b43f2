//! Packages files of a Debian archive (deb822 stanzas, one per binary
//! package), read as a stream for what the provider rule and `odfs show`
//! need: name, version, priority, installed size, section, architecture,
//! source, the description's first line, and how many packages depend on
//! each package.

use std::collections::HashMap;
use std::io::BufRead;

use serde::{Deserialize, Serialize};

/// Debian's priorities, most needed first (Policy §2.5). `extra` is gone
/// from current policy but old packages still carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub enum Priority {
    Required,
    Important,
    Standard,
    Optional,
    Extra,
    /// Absent or not one of the above.
    #[default]
    Unknown,
}

impl Priority {
    pub fn parse(s: &str) -> Priority {
        match s {
            "required" => Priority::Required,
            "important" => Priority::Important,
            "standard" => Priority::Standard,
            "optional" => Priority::Optional,
            "extra" => Priority::Extra,
            _ => Priority::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Required => "required",
            Priority::Important => "important",
            Priority::Standard => "standard",
            Priority::Optional => "optional",
            Priority::Extra => "extra",
            Priority::Unknown => "unknown",
        }
    }
}

/// One binary package, as far as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub priority: Priority,
    /// KiB, as the archive says (`Installed-Size`).
    pub installed_size: u64,
    /// Bytes of its `.deb` (`Size`): what a fetch downloads of it.
    pub size: u64,
    pub section: String,
    pub architecture: String,
    /// The source package (the binary's own name when the stanza has none).
    pub source: String,
    /// The description's first line.
    pub synopsis: String,
    /// How many packages of the suite name this one in Depends,
    /// Pre-Depends or Recommends (alternatives included): how much the rest
    /// of the archive relies on it.
    pub reverse_deps: u32,
}

/// The packages of one suite, by name, gathered over its Packages files.
#[derive(Debug, Default)]
pub struct Packages {
    pub by_name: HashMap<String, Package>,
    /// Stanzas read (a later one of the same name replaces the earlier).
    pub stanzas: u64,
    /// Package name → how many stanzas name it in a relationship field;
    /// counted into [`Package::reverse_deps`] by [`Packages::finish`].
    depended_on: HashMap<String, u32>,
}

/// The fields kept (the stream may have been cut to these: see
/// [`crate::archive::fetch`]).
pub const FIELDS: [&str; 12] =
    ["Package", "Version", "Priority", "Installed-Size", "Size", "Section", "Architecture", "Source", "Description", "Depends", "Pre-Depends", "Recommends"];

impl Packages {
    /// Add the stanzas of one Packages stream.
    pub fn read(&mut self, mut input: impl BufRead) -> std::io::Result<()> {
        let mut stanza = Stanza::default();
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            let n = input.read_until(b'\n', &mut line)?;
            // Descriptions may be in any encoding in old packages: keep what
            // is readable rather than dropping the stanza.
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if n == 0 || text.trim().is_empty() {
                if let Some(p) = stanza.finish(&mut self.depended_on) {
                    self.stanzas += 1;
                    self.by_name.insert(p.name.clone(), p);
                }
                if n == 0 {
                    break;
                }
                continue;
            }
            stanza.line(text);
        }
        Ok(())
    }

    /// The packages read, each with its count of reverse dependencies.
    pub fn finish(mut self) -> HashMap<String, Package> {
        for (name, count) in self.depended_on {
            if let Some(p) = self.by_name.get_mut(&name) {
                p.reverse_deps = count;
            }
        }
        self.by_name
    }
}

/// The stanza being read.
#[derive(Default)]
struct Stanza {
    package: Package,
    /// The relationship fields' text (a field may continue on the next lines).
    relations: String,
    /// The field the previous line belongs to.
    field: String,
}

impl Stanza {
    fn line(&mut self, text: &str) {
        if text.starts_with([' ', '\t']) {
            // A continuation: only relationship fields are read past their
            // first line (the rest of a Description is not kept).
            if matches!(self.field.as_str(), "Depends" | "Pre-Depends" | "Recommends") {
                self.relations.push(' ');
                self.relations.push_str(text.trim());
            }
            return;
        }
        let Some((field, value)) = text.split_once(':') else { return };
        let value = value.trim();
        self.field = field.to_string();
        let p = &mut self.package;
        match field {
            "Package" => p.name = value.to_string(),
            "Version" => p.version = value.to_string(),
            "Priority" => p.priority = Priority::parse(value),
            "Installed-Size" => p.installed_size = value.parse().unwrap_or(0),
            "Size" => p.size = value.parse().unwrap_or(0),
            "Section" => p.section = value.to_string(),
            "Architecture" => p.architecture = value.to_string(),
            // `Source: name (version)` when the versions differ.
            "Source" => p.source = value.split_whitespace().next().unwrap_or("").to_string(),
            "Description" => p.synopsis = value.to_string(),
            "Depends" | "Pre-Depends" | "Recommends" => {
                self.relations.push(',');
                self.relations.push_str(value);
            }
            _ => {}
        }
    }

    /// The stanza read, its relationships counted into `deps`; `None` for
    /// one without a name. The stanza is cleared for the next.
    fn finish(&mut self, deps: &mut HashMap<String, u32>) -> Option<Package> {
        let Stanza { package: mut p, relations, .. } = std::mem::take(self);
        if p.name.is_empty() {
            return None;
        }
        if p.source.is_empty() {
            p.source = p.name.clone();
        }
        let mut named: Vec<&str> = relations.split([',', '|']).filter_map(relation_name).collect();
        // A package counts once per depender, however often it names it.
        named.sort_unstable();
        named.dedup();
        for n in named {
            if n != p.name {
                *deps.entry(n.to_string()).or_default() += 1;
            }
        }
        Some(p)
    }
}

/// The package a relation names: `foo (>= 1) [amd64] <!nocheck>` and
/// `foo:any` are `foo`.
fn relation_name(relation: &str) -> Option<&str> {
    let name = relation.split(|c: char| c.is_whitespace() || c == '(' || c == '[' || c == '<').find(|s| !s.is_empty())?;
    Some(name.split(':').next().unwrap_or(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Package: htop
Version: 3.2.2-2
Installed-Size: 404
Size: 149124
Maintainer: Daniel Lange <DLange@debian.org>
Architecture: amd64
Depends: libc6 (>= 2.34), libncursesw6 (>= 6), libnl-3-200 (>= 3.2.7), libtinfo6 (>= 6)
Suggests: lm-sensors, lsof, strace
Description: interactive processes viewer
Homepage: https://htop.dev/
Description-md5: 6b4d5b6ed5e0e0d1d1a5d8f5f3f1b6a6
Section: utils
Priority: optional

Package: libc6
Source: glibc (2.36-9+deb12u4)
Version: 2.36-9+deb12u4
Installed-Size: 12987
Architecture: amd64
Priority: optional
Section: libs
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.

Package: nc-user
Version: 1
Architecture: all
Depends: netcat-openbsd | netcat-traditional,
 libc6:any,
 netcat-openbsd
Pre-Depends: dpkg (>= 1.17)
Recommends: htop [amd64] <!nocheck>
Priority: extra
Section: net
Description: fake
";

    fn read(text: &str) -> (u64, HashMap<String, Package>) {
        let mut p = Packages::default();
        p.read(text.as_bytes()).unwrap();
        (p.stanzas, p.finish())
    }

    #[test]
    fn stanzas_give_the_fields_the_index_keeps() {
        let (stanzas, p) = read(SAMPLE);
        assert_eq!(stanzas, 3);
        let htop = &p["htop"];
        assert_eq!(
            (htop.version.as_str(), htop.priority, htop.installed_size, htop.section.as_str(), htop.architecture.as_str()),
            ("3.2.2-2", Priority::Optional, 404, "utils", "amd64")
        );
        assert_eq!(htop.size, 149124);
        assert_eq!((htop.source.as_str(), htop.synopsis.as_str()), ("htop", "interactive processes viewer"));
        let libc = &p["libc6"];
        assert_eq!((libc.source.as_str(), libc.synopsis.as_str()), ("glibc", "GNU C Library: Shared libraries"));
        assert_eq!(p["nc-user"].priority, Priority::Extra);
    }

    #[test]
    fn reverse_dependencies_count_each_depender_once() {
        let (_, p) = read(SAMPLE);
        // htop's Depends names libc6; nc-user names it again as libc6:any.
        assert_eq!(p["libc6"].reverse_deps, 2);
        // Through Recommends, with an architecture and a build profile.
        assert_eq!(p["htop"].reverse_deps, 1);
        assert_eq!(p["nc-user"].reverse_deps, 0);
        assert_eq!(relation_name(" netcat-openbsd (>= 1.2)"), Some("netcat-openbsd"));
        assert_eq!(relation_name("python3:any"), Some("python3"));
        assert_eq!(relation_name("  "), None);
    }

    #[test]
    fn a_missing_final_newline_a_crlf_and_nameless_stanzas_are_handled() {
        let (stanzas, p) = read("Version: 1\n\nPackage: a\r\nPriority: bogus\r\nInstalled-Size: x\r\n\r\n\n\nPackage: b\nVersion: 2");
        assert_eq!(stanzas, 2);
        assert_eq!((p["a"].priority, p["a"].installed_size), (Priority::Unknown, 0));
        assert_eq!(p["b"].version, "2");
    }

    #[test]
    fn priorities_order_from_the_most_needed() {
        let order = ["required", "important", "standard", "optional", "extra", "weird"].map(Priority::parse);
        assert!(order.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Priority::Standard.as_str(), "standard");
    }
}
