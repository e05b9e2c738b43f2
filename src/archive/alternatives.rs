//! Command names that packages make with update-alternatives in their
//! maintainer scripts (`nc`, `vi`, `awk`, `traceroute`, `editor`...): no
//! Contents file shows them, so a table says which commands they point to.
//!
//! The table (`alternatives.txt` beside this file) is not written by hand:
//! `scripts/archive-alternatives` installs, in a container of the suite,
//! packages known to register such names and prints what
//! `update-alternatives --query` then reports, link by link, targets in the
//! alternatives' priority order. Each line is `LINK TARGET...`: LINK an
//! absolute path right under a command directory, each TARGET a command
//! name that the Contents files show. How a name resolves from there is in
//! [`crate::archive`].

use super::contents::Dir;

/// One name made by update-alternatives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    pub name: String,
    /// The directory of its link.
    pub dir: Dir,
    /// The commands it may point to, highest alternatives priority first.
    pub targets: Vec<String>,
}

/// The table kept with odfs (bookworm's; see the module's doc).
pub const TABLE: &str = include_str!("alternatives.txt");

/// The alternatives of a table's text. Lines whose link is not right under
/// a command directory are skipped; a name linked from two directories
/// (`/usr/bin/traceroute`, `/usr/sbin/traceroute`) is one alternative with
/// the first line's directory and both lines' targets.
pub fn parse(text: &str) -> Vec<Alternative> {
    let mut out: Vec<Alternative> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(link) = fields.next() else { continue };
        let Some((dir, name)) = link.strip_prefix('/').and_then(|l| l.rsplit_once('/')) else { continue };
        let Some((_, dir)) = Dir::ALL.iter().find(|(d, _)| *d == dir) else { continue };
        let targets = fields.map(String::from);
        match out.iter_mut().find(|a| a.name == name) {
            Some(a) => {
                for t in targets {
                    if !a.targets.contains(&t) {
                        a.targets.push(t);
                    }
                }
            }
            None => out.push(Alternative { name: name.to_string(), dir: *dir, targets: targets.collect() }),
        }
    }
    out
}

/// The table kept with odfs, parsed.
pub fn table() -> Vec<Alternative> {
    parse(TABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_a_name_its_directory_and_targets_merged_across_directories() {
        let t = parse(
            "# comment\n\
             /bin/nc nc.openbsd nc.traditional\n\
             /usr/bin/traceroute inetutils-traceroute traceroute.db\n\
             \n\
             /usr/sbin/traceroute traceroute.db lft.db\n\
             /usr/lib/jvm/bin/java java\n\
             relative/path x\n",
        );
        assert_eq!(
            t,
            [
                Alternative { name: "nc".into(), dir: Dir::Bin, targets: vec!["nc.openbsd".into(), "nc.traditional".into()] },
                Alternative {
                    name: "traceroute".into(),
                    dir: Dir::UsrBin,
                    targets: vec!["inetutils-traceroute".into(), "traceroute.db".into(), "lft.db".into()]
                },
            ]
        );
    }

    #[test]
    fn the_kept_table_has_the_names_the_index_promises() {
        let t = table();
        for (name, target) in [("nc", "nc.openbsd"), ("vi", "vim.tiny"), ("figlet", "figlet-figlet"), ("traceroute", "traceroute.db"), ("awk", "mawk")] {
            let a = t.iter().find(|a| a.name == name).unwrap_or_else(|| panic!("{name} is not in the table"));
            assert!(a.targets.iter().any(|x| x == target), "{name}: {:?}", a.targets);
        }
        assert!(t.iter().all(|a| !a.targets.is_empty() && !a.targets.contains(&a.name)));
    }
}
