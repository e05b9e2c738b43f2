//! Contents files of a Debian archive (which packages ship which file),
//! read as a stream, keeping only the commands: files right under the
//! directories on a Debian PATH.
//!
//! A line is `PATH<whitespace>LOCATIONS`, LOCATIONS being
//! `[AREA/]SECTION/PACKAGE[,...]` and PATH relative to `/`. The path may
//! hold spaces, so the locations are the last field, not the second. No
//! header: current dak writes none, and an old one ("FILE  LOCATION") is
//! skipped anyway, since it names no command directory.

use std::collections::HashMap;
use std::io::BufRead;

use serde::{Deserialize, Serialize};

/// A directory that holds commands. The order is the preference when one
/// package ships a name in two of them (`bin/ping` and `usr/bin/ping` are
/// the same file on a merged-/usr system, and `usr/bin` is what Debian
/// moves to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Dir {
    UsrBin,
    UsrSbin,
    Bin,
    Sbin,
    /// Not on root's PATH in Debian images: a call must name the file.
    UsrGames,
    /// Where the image's PATH finds it: an admin's override to a package
    /// that the Contents files do not show with this name.
    OnPath,
}

impl Dir {
    /// The directories looked at, as Contents writes them (no leading `/`).
    pub const ALL: [(&'static str, Dir); 5] =
        [("usr/bin", Dir::UsrBin), ("usr/sbin", Dir::UsrSbin), ("bin", Dir::Bin), ("sbin", Dir::Sbin), ("usr/games", Dir::UsrGames)];

    fn of(dir: &str) -> Option<Dir> {
        Dir::ALL.iter().find(|(d, _)| *d == dir).map(|(_, k)| *k)
    }

    /// The absolute path of `name` in this directory; the bare name on PATH.
    pub fn path(self, name: &str) -> String {
        match Dir::ALL.iter().find(|(_, k)| *k == self) {
            Some((d, _)) => format!("/{d}/{name}"),
            None => name.to_string(),
        }
    }
}

/// The command a Contents line names, if it names one: its directory, its
/// name, and the packages that ship it.
pub fn command_of(line: &str) -> Option<(Dir, &str, impl Iterator<Item = &str>)> {
    let line = line.trim_end();
    let (path, locations) = line.rsplit_once(|c: char| c.is_ascii_whitespace())?;
    let path = path.trim_end();
    // Some generators (reprepro, old dak) write `./usr/bin/x` or `/usr/bin/x`.
    let path = path.strip_prefix("./").or_else(|| path.strip_prefix('/')).unwrap_or(path);
    let (dir, name) = path.rsplit_once('/')?;
    let dir = Dir::of(dir)?;
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    // `contrib/utils/foo` and `utils/foo` alike: the package is last.
    let packages = locations.split(',').filter_map(|l| l.rsplit('/').next()).filter(|p| !p.is_empty());
    Some((dir, name, packages))
}

/// Providers kept per command: far more than a real command has, few enough
/// that a damaged file with thousands of packages on a line costs linear time.
const MAX_PROVIDERS: usize = 256;

/// Commands and who ships them, gathered over one suite's Contents files
/// (the architecture's and `all`'s, which name distinct packages).
#[derive(Debug, Default)]
pub struct Commands {
    /// Command name → (package, where it puts it), each package once.
    pub providers: HashMap<String, Vec<(String, Dir)>>,
    /// Lines read, and lines that were not UTF-8 (skipped).
    pub lines: u64,
    pub not_utf8: u64,
}

impl Commands {
    /// Add the commands of one Contents stream.
    pub fn read(&mut self, mut input: impl BufRead) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            if input.read_until(b'\n', &mut buf)? == 0 {
                return Ok(());
            }
            self.lines += 1;
            let Ok(line) = std::str::from_utf8(&buf) else {
                self.not_utf8 += 1;
                continue;
            };
            self.add_line(line);
        }
    }

    /// Add one line (of any kind: those that name no command are ignored).
    pub fn add_line(&mut self, line: &str) {
        let Some((dir, name, packages)) = command_of(line) else { return };
        let entry = self.providers.entry(name.to_string()).or_default();
        for package in packages {
            let full = entry.len() >= MAX_PROVIDERS;
            match entry.iter_mut().find(|(p, _)| p == package) {
                // The same package in two directories: keep the preferred one.
                Some((_, d)) => *d = (*d).min(dir),
                None if !full => entry.push((package.to_string(), dir)),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Commands {
        let mut c = Commands::default();
        c.read(text.as_bytes()).unwrap();
        c
    }

    fn providers(c: &Commands, name: &str) -> Vec<(String, Dir)> {
        let mut p = c.providers.get(name).cloned().unwrap_or_default();
        p.sort();
        p
    }

    #[test]
    fn a_line_naming_thousands_of_packages_keeps_a_bounded_few() {
        let many: Vec<String> = (0..5000).map(|i| format!("utils/p{i}")).collect();
        let c = read(&format!("usr/bin/x {}\n", many.join(",")));
        assert_eq!(providers(&c, "x").len(), MAX_PROVIDERS);
    }

    #[test]
    fn commands_are_the_files_right_under_the_path_directories() {
        let c = read(
            "usr/bin/htop\t\t\t\t\tutils/htop\n\
             usr/games/cowsay                                        games/cowsay\n\
             sbin/mkfs.ext4                                          admin/e2fsprogs\n\
             usr/sbin/nginx  httpd/nginx-core,httpd/nginx-full\n\
             bin/nc.openbsd                                          net/netcat-openbsd\n\
             usr/bin/X11/xterm                                       x11/xterm\n\
             usr/lib/x86_64-linux-gnu/libfoo.so.1                    libs/libfoo1\n\
             usr/share/doc/htop/copyright                            utils/htop\n\
             usr/local/bin/nope                                      utils/nope\n",
        );
        let mut names: Vec<&str> = c.providers.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["cowsay", "htop", "mkfs.ext4", "nc.openbsd", "nginx"]);
        assert_eq!(providers(&c, "cowsay"), [("cowsay".into(), Dir::UsrGames)]);
        assert_eq!(providers(&c, "nginx"), [("nginx-core".into(), Dir::UsrSbin), ("nginx-full".into(), Dir::UsrSbin)]);
        assert_eq!(c.lines, 9);
    }

    #[test]
    fn the_locations_are_the_last_field_so_paths_may_hold_spaces() {
        let c = read("usr/bin/odd name   contrib/utils/odd\nusr/share/My Documents/x  doc/y\n");
        assert_eq!(providers(&c, "odd name"), [("odd".into(), Dir::UsrBin)]);
        assert_eq!(c.providers.len(), 1);
    }

    #[test]
    fn a_command_in_several_files_and_directories_keeps_each_package_once() {
        // Contents-amd64 and Contents-all both name g++; ping sits in /bin
        // and /usr/bin for the same package.
        let mut c = read("usr/bin/g++   devel/g++\nbin/ping  net/inetutils-ping,net/iputils-ping\n");
        c.read("usr/bin/g++   devel/pentium-builder\nusr/bin/ping  net/iputils-ping\n".as_bytes()).unwrap();
        assert_eq!(providers(&c, "g++"), [("g++".into(), Dir::UsrBin), ("pentium-builder".into(), Dir::UsrBin)]);
        assert_eq!(providers(&c, "ping"), [("inetutils-ping".into(), Dir::Bin), ("iputils-ping".into(), Dir::UsrBin)]);
    }

    #[test]
    fn headers_blank_lines_leading_slashes_and_bad_bytes_are_handled() {
        let mut text = b"FILE                                LOCATION\n\n   \n/usr/bin/a  x/a\n./bin/b  x/b\nusr/bin/  x/dir\nusr/bin/c\n".to_vec();
        text.extend_from_slice(b"usr/bin/\xff\xfe  x/bad\nusr/bin/d  x/d"); // no final newline
        let c = read(std::str::from_utf8(&text).unwrap_or_default());
        assert!(c.providers.is_empty(), "the text is not UTF-8 as a whole");
        let mut c = Commands::default();
        c.read(&text[..]).unwrap();
        let mut names: Vec<&str> = c.providers.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["a", "b", "d"]);
        assert_eq!(c.not_utf8, 1);
    }

    #[test]
    fn paths_of_commands_by_directory() {
        assert_eq!(Dir::UsrGames.path("sl"), "/usr/games/sl");
        assert_eq!(Dir::Sbin.path("ip"), "/sbin/ip");
        assert_eq!(Dir::OnPath.path("java"), "java");
    }
}
