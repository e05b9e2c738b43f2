//! The provider rule: which of the packages that ship a command is the one
//! installed for it. One total order over candidates, so the choice never
//! depends on the order of files or lines.
//!
//! Candidates are compared on, in turn:
//! 1. being named like the command (`htop` for `htop`, `g++` for `g++`
//!    rather than `pentium-builder`);
//! 2. Priority, most needed first (required, important, standard,
//!    optional, extra): what a Debian system is likelier to have already,
//!    so the usual implementation (`iputils-ping` over `inetutils-ping`);
//! 3. more reverse dependencies in the suite (how many packages depend on
//!    or recommend it): the implementation the rest of the archive relies
//!    on, not a fork, an old branch or a stripped variant (`flex` over
//!    `flex-old`, `golang-go` over `gccgo-go`, `gdb` over `gdb-minimal`);
//! 4. smaller Installed-Size: the lighter image, when nothing else tells;
//! 5. the name, so the order is total.
//!
//! A package the Contents files name but the Packages files do not cannot
//! be installed from the suite and is never chosen.

use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;

use super::packages::Package;

/// The rule's order: `Less` when `a` is the better provider of `command`.
pub fn compare(command: &str, a: &Package, b: &Package) -> Ordering {
    key(command, a).cmp(&key(command, b))
}

fn key<'a>(command: &str, p: &'a Package) -> (bool, super::packages::Priority, Reverse<u32>, u64, &'a str) {
    (p.name != command, p.priority, Reverse(p.reverse_deps), p.installed_size, p.name.as_str())
}

/// The candidates that the suite has, best first by the rule.
pub fn rank<'a>(command: &str, candidates: impl IntoIterator<Item = &'a str>, packages: &'a HashMap<String, Package>) -> Vec<&'a Package> {
    let mut found: Vec<&Package> = candidates.into_iter().filter_map(|c| packages.get(c)).collect();
    found.sort_by(|a, b| compare(command, a, b));
    found.dedup_by(|a, b| a.name == b.name);
    found
}

#[cfg(test)]
mod tests {
    use super::super::packages::Priority;
    use super::*;

    fn pkg(name: &str, priority: Priority, reverse_deps: u32, installed_size: u64) -> Package {
        Package { name: name.into(), priority, reverse_deps, installed_size, ..Default::default() }
    }

    fn chosen(command: &str, candidates: &[&str], packages: &[Package]) -> Vec<String> {
        let map: HashMap<String, Package> = packages.iter().map(|p| (p.name.clone(), p.clone())).collect();
        rank(command, candidates.iter().copied(), &map).into_iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn the_package_named_like_the_command_comes_first() {
        let p = [pkg("g++", Priority::Optional, 10, 100), pkg("pentium-builder", Priority::Required, 99, 1)];
        assert_eq!(chosen("g++", &["pentium-builder", "g++"], &p), ["g++", "pentium-builder"]);
    }

    #[test]
    fn then_the_higher_priority() {
        let p = [pkg("inetutils-ping", Priority::Optional, 50, 10), pkg("iputils-ping", Priority::Important, 1, 900)];
        assert_eq!(chosen("ping", &["inetutils-ping", "iputils-ping"], &p), ["iputils-ping", "inetutils-ping"]);
        let p = [pkg("a", Priority::Extra, 0, 1), pkg("b", Priority::Optional, 0, 9), pkg("c", Priority::Unknown, 9, 0)];
        assert_eq!(chosen("x", &["a", "b", "c"], &p), ["b", "a", "c"]);
    }

    #[test]
    fn then_more_reverse_dependencies_then_the_smaller_then_the_name() {
        let p = [pkg("flex", Priority::Optional, 6, 1241), pkg("flex-old", Priority::Optional, 1, 457)];
        assert_eq!(chosen("lex", &["flex-old", "flex"], &p), ["flex", "flex-old"]);
        let p = [pkg("big", Priority::Optional, 2, 900), pkg("small", Priority::Optional, 2, 100), pkg("also-small", Priority::Optional, 2, 100)];
        assert_eq!(chosen("x", &["big", "small", "also-small"], &p), ["also-small", "small", "big"]);
    }

    #[test]
    fn packages_the_suite_lacks_are_never_chosen_and_each_counts_once() {
        let p = [pkg("here", Priority::Optional, 0, 1)];
        assert_eq!(chosen("x", &["gone", "here", "here"], &p), ["here"]);
        assert!(chosen("x", &["gone"], &p).is_empty());
    }
}
