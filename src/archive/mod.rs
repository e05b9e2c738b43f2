//! The command index of a Debian archive: every command that a package of a
//! suite's main component puts on PATH, the package a call of it installs,
//! and what `odfs show` tells of that package. Built from the archive's own
//! signed index files, stored in the state directory, answered from memory.
//!
//! - [`fetch`]: apt in a container fetches the suite's Contents and
//!   Packages files; the index is built from them.
//! - [`contents`], [`packages`]: the two file formats, read as streams.
//! - [`provider`]: the provider rule.
//! - [`alternatives`]: the names update-alternatives makes.
//! - [`index`]: the index in memory and on disk, one per suite.
//!
//! What was measured, and how the rules were checked against Debian's own
//! tools and real installs: `docs/archive.md`.
//!
//! # Commands
//! A command is a file right under `/bin`, `/sbin`, `/usr/bin`, `/usr/sbin`
//! or `/usr/games` in the Contents files of the suite's main component, for
//! the engine's architecture and `all` (not in a subdirectory of them:
//! `/usr/bin/X11` is not on PATH). Contents does not tell modes, so a
//! non-executable file there would be listed too; Debian policy puts none
//! there. A name whose packages are all missing from the Packages files
//! cannot be installed and is left out.
//!
//! # The provider rule
//! When several packages ship a command, the one installed is the first by,
//! in turn: being named like the command; higher Priority (required,
//! important, standard, optional, extra); more reverse dependencies in the
//! suite; smaller Installed-Size; the name. An admin's override (command →
//! package, [`index::Index::apply_overrides`]) comes before the rule.
//! Why each step, in [`provider`].
//!
//! # Alternatives
//! Names that maintainer scripts make with update-alternatives (`nc`,
//! `vi`, `awk`, `traceroute`, `editor`, `pager`, `figlet`...) are in no
//! Contents file. Reading the maintainer scripts themselves would mean
//! downloading every package (95 GB for bookworm main amd64): not done.
//! Deriving them from file names in Contents (`nc.openbsd` → `nc`) would
//! list hundreds of names that no install makes (`foo.py` → `foo`). So a
//! table generated from a real install ([`alternatives`]) gives each such
//! name the commands its link may point to, and the name resolves to the
//! packages that ship those commands, ranked by the same provider rule as
//! providers of the name itself (`nc`: netcat-traditional, of Priority
//! standard in bookworm, before netcat-openbsd). A package that ships the name as a file wins over
//! the table. Installing the chosen package runs its postinst, which makes
//! the link: the name is there once the image is built. Only the names of
//! the table are known; others (`java`, whose targets are outside the
//! command directories) need an override.
//!
//! # Storage
//! One postcard file per suite in the state directory (`SUITE.index`),
//! with the suite, the Release file's date and when it was fetched, made
//! to be loaded at start without the network (the daemon does not serve
//! the index yet); commands are sorted by
//! name, so a lookup is a binary search and a listing walks them in order.

pub mod alternatives;
pub mod contents;
pub mod fetch;
pub mod index;
pub mod packages;
pub mod provider;
pub mod source;

pub use index::{Index, Indexes, Resolved};
