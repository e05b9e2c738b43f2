//! The host view: which host paths a tool sees at the same path, which
//! top-level directories stay the image's, and whether a path a caller names
//! (cwd, arguments) means the same file inside the container. Pure logic
//! over a [`HostFs`], so it is tested without a machine's files.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Top-level directories that are the image's own software tree (and the
/// kernel's and the engine's): never bound from the host.
pub const IMAGE_OWNED: [&str; 14] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "var", "proc", "sys", "dev", "run", "boot"];

/// Top-level directories that always come from the host, whatever the image
/// has there: they hold users' data (Debian images ship dotfiles in /root).
pub const ALWAYS_HOST: [&str; 5] = ["home", "root", "tmp", "mnt", "media"];

/// Host directories below image-owned ones that still come from the host.
pub const HOST_INSIDE_IMAGE: [&str; 2] = ["/var/tmp", "/run/user"];

/// The host's POSIX shared memory, in containers that share its IPC
/// namespace (the engine binds it with the namespace).
pub const HOST_SHM: &str = "/dev/shm";

/// Host files below image-owned directories that come from the host
/// read-only: where the machine is in time.
pub const HOST_READ_ONLY: [&str; 2] = ["/etc/localtime", "/etc/timezone"];

/// Paths that mean the same thing in every container of this kernel: the
/// standard devices, the process's own fds and /proc entry.
const KERNEL_SAME: [&str; 9] = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/stdin", "/dev/stdout", "/dev/stderr"];
const KERNEL_SAME_TREES: [&str; 2] = ["/dev/fd", "/sys"];

/// How an admin narrows or extends the view (`[view]` of the config file,
/// `--share` and `--hide`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSettings {
    /// Host paths shared at the same path even inside image-owned
    /// directories (`/etc/ssl/certs`, `/var/lib/myapp`).
    #[serde(default)]
    pub share: Vec<PathBuf>,
    /// Host top-level directories kept out of every container.
    #[serde(default)]
    pub hide: Vec<PathBuf>,
}

/// What a tool of one container sees from the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Host paths bound at the same path (recursively, following later
    /// mounts and unmounts where the host's mounts are shared), sorted.
    pub host: Vec<PathBuf>,
    /// Top-level directories the host has but the image fills, so the
    /// image keeps them.
    pub filled: Vec<String>,
}

/// The host's files as the view needs them (the real one is [`RealFs`]).
pub trait HostFs {
    /// Whether the path exists (without following a final symlink).
    fn exists(&self, path: &Path) -> bool;
    /// The path with every symlink resolved, when it exists.
    fn canonical(&self, path: &Path) -> Option<PathBuf>;
}

/// The machine's own files.
pub struct RealFs;

impl HostFs for RealFs {
    fn exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }
    fn canonical(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }
}

/// The host's top-level directories (names, sorted), symlinks to
/// directories included. Entries odfs itself puts into containers are left out.
pub fn host_top_level(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| !n.starts_with(".odfs"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The top-level directories whose place depends on the image: the host
/// has them and they are neither image-owned nor always the host's. The
/// image is asked which of them it fills.
pub fn candidates(host_top: &[String], settings: &ViewSettings) -> Vec<String> {
    host_top
        .iter()
        .filter(|n| !IMAGE_OWNED.contains(&n.as_str()) && !ALWAYS_HOST.contains(&n.as_str()))
        .filter(|n| !hidden(n, settings))
        .cloned()
        .collect()
}

fn hidden(name: &str, settings: &ViewSettings) -> bool {
    settings.hide.iter().any(|h| h.strip_prefix("/").is_ok_and(|rest| rest.as_os_str() == name))
}

impl View {
    /// The view of a container whose image fills `filled` (of the
    /// [`candidates`]), on a host with these top-level directories.
    pub fn plan(host_top: &[String], filled: &[String], settings: &ViewSettings, fs: &impl HostFs) -> View {
        let mut host: Vec<PathBuf> = host_top
            .iter()
            .filter(|n| !IMAGE_OWNED.contains(&n.as_str()) && !hidden(n, settings))
            .filter(|n| ALWAYS_HOST.contains(&n.as_str()) || !filled.contains(n))
            .map(|n| Path::new("/").join(n))
            .collect();
        host.extend(HOST_INSIDE_IMAGE.iter().chain(&HOST_READ_ONLY).map(PathBuf::from).filter(|p| fs.exists(p)));
        // The account files are the daemon's to bind (a share of them would
        // be a second mount at the same place).
        let accounts = |p: &PathBuf| p.as_path() == Path::new("/etc/passwd") || p.as_path() == Path::new("/etc/group");
        host.extend(settings.share.iter().filter(|p| p.is_absolute() && fs.exists(p) && !accounts(p)).cloned());
        host.sort();
        host.dedup();
        // A path below another one is already part of it.
        let all = host.clone();
        host.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
        let mut filled: Vec<String> = filled.iter().filter(|n| host_top.contains(n) && !ALWAYS_HOST.contains(&n.as_str())).cloned().collect();
        filled.sort();
        View { host, filled }
    }

    /// Whether `path` (absolute, normalized) is the host's inside the container.
    pub fn sees_host(&self, path: &Path) -> bool {
        path == Path::new("/") || self.host.iter().any(|h| path.starts_with(h))
    }

    /// The view as a container label (one path per line), and back.
    pub fn to_label(&self) -> String {
        let mut lines: Vec<String> = self.host.iter().map(|p| p.display().to_string()).collect();
        lines.extend(self.filled.iter().map(|f| format!("filled:{f}")));
        lines.join("\n")
    }

    pub fn from_label(label: &str) -> View {
        let mut v = View::default();
        for line in label.lines().filter(|l| !l.is_empty()) {
            match line.strip_prefix("filled:") {
                Some(f) => v.filled.push(f.to_string()),
                None => v.host.push(PathBuf::from(line)),
            }
        }
        v
    }
}

/// Whether the host mount holding `path` propagates mounts (`shared:` or
/// `master:` in `/proc/self/mountinfo`): only then can a bind of it be a
/// recursive slave that follows later mounts and unmounts. systemd makes
/// every mount shared at boot; elsewhere `mount --make-rshared /` does.
pub fn follows_host(mountinfo: &str, path: &Path) -> bool {
    let mut best: Option<(usize, bool)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let point = PathBuf::from(point.replace("\\040", " "));
        if !path.starts_with(&point) {
            continue;
        }
        let optional = fields.iter().skip(6).take_while(|f| **f != "-");
        let shared = optional.clone().any(|f| f.starts_with("shared:") || f.starts_with("master:"));
        let depth = point.components().count();
        // The last mount on a point is the one on top.
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, shared));
        }
    }
    best.is_some_and(|(_, shared)| shared)
}

/// Whether the host's `/proc` hides other users' processes (`hidepid=1`
/// or `2`, `invisible`, `noaccess`, or `subset=pid`): a container's own
/// procfs would not, so tools then keep a pid namespace of their own
/// rather than see more of the host than their caller.
/// Whether an image's containers share the host's pid, IPC and UTS
/// namespaces on a host with this mountinfo: where the image may
/// (`image_may`: `ImageSpec::host_namespaces`), unless the host's `/proc`
/// hides other users' processes (there a container cannot be given the
/// same view, so it keeps its own).
pub fn shares_host_namespaces(image_may: bool, mountinfo: &str) -> bool {
    image_may && !proc_hides_pids(mountinfo)
}

pub fn proc_hides_pids(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4) != Some(&"/proc") {
            return false;
        }
        let Some(dash) = fields.iter().position(|f| *f == "-") else { return false };
        if fields.get(dash + 1) != Some(&"proc") {
            return false;
        }
        let opts = fields.get(dash + 3).copied().unwrap_or("");
        opts.split(',').any(|o| matches!(o, "hidepid=1" | "hidepid=2" | "hidepid=invisible" | "hidepid=noaccess" | "subset=pid"))
    })
}

/// A path the caller names that the tool would not see as the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    /// The path as named, made absolute.
    pub path: PathBuf,
    /// The top-level directory the image keeps (`/etc`), or `/proc/PID`.
    pub image_dir: String,
}

impl Collision {
    /// The caller's line (after `odfs: CMD: `).
    pub fn message(&self, image: &str) -> String {
        format!(
            "{} is a host path that image {image} does not share (the tool would see the image's own {}); copy it into a shared directory or add it to shared",
            self.path.display(),
            self.image_dir
        )
    }
}

/// `path` with `.` and `..` resolved by its text, as an absolute path.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn kernel_same(path: &Path) -> bool {
    // /proc entries other than processes' (cpuinfo, meminfo, mounts) are the
    // kernel's, seen from the tool's namespaces; another process's entry
    // (/proc/PID) is one the tool cannot see.
    let proc_entry = path.strip_prefix("/proc").ok().and_then(|r| r.components().next()).is_some_and(|c| {
        !c.as_os_str().as_bytes().iter().all(u8::is_ascii_digit)
    });
    proc_entry || KERNEL_SAME.iter().any(|p| path == Path::new(p)) || KERNEL_SAME_TREES.iter().any(|t| path.starts_with(t))
}

/// The top-level directory of an absolute path, as `/etc`.
fn top_of(path: &Path) -> String {
    match path.components().nth(1) {
        Some(Component::Normal(n)) => format!("/{}", n.to_string_lossy()),
        _ => "/".into(),
    }
}

/// The strings within one argument that may name a path, each taken
/// relative to the cwd unless absolute: the argument itself, the value of
/// `--opt=VALUE` or `key=VALUE`, and the value glued to a short option
/// (`-o/var/log/x`, `-Ibuild/include`).
fn named_in(arg: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let eq = arg.iter().position(|&b| b == b'=');
    if let Some(rest) = arg.strip_prefix(b"-") {
        if let Some(eq) = eq {
            out.push(&arg[eq + 1..]);
        } else if rest.first().is_some_and(|b| b.is_ascii_alphanumeric()) {
            out.push(&rest[1..]);
        }
    } else {
        out.push(arg);
        if let Some(eq) = eq {
            out.push(&arg[eq + 1..]);
        }
    }
    out.into_iter().filter(|v| !v.is_empty()).collect()
}

/// A path through a process's own root (`/proc/self/root/etc/x`): the
/// path it names from the root, which inside is the image's.
fn through_proc_root(path: &Path) -> Option<PathBuf> {
    let mut c = path.strip_prefix("/proc").ok()?.components();
    let who = c.next()?.as_os_str().as_bytes().to_vec();
    let is_process = who == b"self" || who == b"thread-self" || who.iter().all(u8::is_ascii_digit);
    if is_process && c.next()?.as_os_str() == "root" {
        return Some(Path::new("/").join(c.as_path()));
    }
    None
}

impl View {
    /// Whether the tool, started in `cwd`, would see the host's file at each
    /// path the arguments name. A named path that the host has (or, for a
    /// file to be created, whose parent it has) but that resolves, by its
    /// text or through the host's symlinks, outside the view is a collision:
    /// the tool would get the image's file in its place. Paths the host does
    /// not have are the image's to give (its own software tree).
    pub fn check_args(&self, cwd: &Path, args: &[Vec<u8>], fs: &impl HostFs) -> Result<(), Collision> {
        for arg in args {
            for named in named_in(arg) {
                self.check_path(cwd, Path::new(OsStr::from_bytes(named)), fs)?;
            }
        }
        Ok(())
    }

    fn check_path(&self, cwd: &Path, named: &Path, fs: &impl HostFs) -> Result<(), Collision> {
        let raw = cwd.join(named);
        let lexical = normalize(&raw);
        if let Some(from_root) = through_proc_root(&lexical) {
            // The tool's root is the container's: outside the view, even a
            // path the host lacks is the image's.
            if self.sees_host(&from_root) {
                return Ok(());
            }
            return Err(Collision { path: lexical.clone(), image_dir: top_of(&from_root) });
        }
        if kernel_same(&lexical) {
            return Ok(());
        }
        // A file bound by its name (the host's time zone): the container
        // has at that name what the name resolves to on the host.
        if HOST_READ_ONLY.iter().any(|f| lexical == Path::new(f)) && self.sees_host(&lexical) {
            return Ok(());
        }
        self.check_resolved(&lexical, &lexical, fs)?;
        // Through the host's symlinks: the deepest part that exists,
        // resolved, and the rest as named.
        let mut base = raw.as_path();
        let mut rest = Vec::new();
        let real = loop {
            if let Some(real) = fs.canonical(base) {
                break Some(real);
            }
            match (base.file_name(), base.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name.to_owned());
                    base = parent;
                }
                _ => break None,
            }
        };
        let Some(mut real) = real else { return Ok(()) };
        for r in rest.iter().rev() {
            real.push(r);
        }
        let real = normalize(&real);
        if kernel_same(&real) {
            return Ok(());
        }
        self.check_resolved(&real, &lexical, fs)
    }

    fn check_resolved(&self, path: &Path, named: &Path, fs: &impl HostFs) -> Result<(), Collision> {
        if self.sees_host(path) {
            return Ok(());
        }
        let collision = || {
            let mut parts = path.components().skip(1);
            let pid_dir = match (parts.next(), parts.next()) {
                (Some(Component::Normal(p)), Some(Component::Normal(n))) if p == "proc" && n.as_bytes().iter().all(u8::is_ascii_digit) => {
                    Some(format!("/proc/{}", n.to_string_lossy()))
                }
                _ => None,
            };
            Collision { path: named.to_path_buf(), image_dir: pid_dir.unwrap_or_else(|| top_of(path)) }
        };
        if fs.exists(path) || path.parent().is_some_and(|p| p != Path::new("/") && fs.exists(p)) {
            return Err(collision());
        }
        Ok(())
    }

    /// Whether the caller's working directory is in the view (`/` is: its
    /// entries are the host's top-level directories or the image's own).
    pub fn check_cwd(&self, cwd: &Path) -> Result<(), Collision> {
        if self.sees_host(cwd) {
            return Ok(());
        }
        Err(Collision { path: cwd.to_path_buf(), image_dir: top_of(cwd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_that_hides_pids_is_seen_in_the_mount_options() {
        let open = "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n";
        let hidden = "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw,hidepid=invisible\n";
        let elsewhere = "40 22 0:30 / /tmp/p rw - proc proc rw,hidepid=2\n";
        assert!(!proc_hides_pids(open));
        assert!(proc_hides_pids(hidden));
        assert!(!proc_hides_pids(&format!("{open}{elsewhere}")));
        assert!(proc_hides_pids("22 1 0:21 / /proc rw shared:12 - proc proc rw,hidepid=2,gid=10\n"));
    }
    use std::collections::{HashMap, HashSet};

    /// A host of listed paths (directories and files alike) and symlinks.
    #[derive(Default)]
    struct Host {
        paths: HashSet<PathBuf>,
        links: HashMap<PathBuf, PathBuf>,
    }

    impl Host {
        fn with(paths: &[&str], links: &[(&str, &str)]) -> Host {
            let mut h = Host::default();
            for p in paths {
                let mut p = PathBuf::from(p);
                loop {
                    h.paths.insert(p.clone());
                    if !p.pop() {
                        break;
                    }
                }
            }
            for (from, to) in links {
                h.paths.insert(from.into());
                h.links.insert(from.into(), to.into());
            }
            h
        }
    }

    impl HostFs for Host {
        fn exists(&self, path: &Path) -> bool {
            self.paths.contains(path)
        }
        fn canonical(&self, path: &Path) -> Option<PathBuf> {
            let mut out = PathBuf::from("/");
            for c in normalize(path).components().skip(1) {
                out.push(c);
                if let Some(to) = self.links.get(&out) {
                    out = normalize(&out.parent().unwrap().join(to));
                }
                if !self.paths.contains(&out) {
                    return None;
                }
            }
            Some(out)
        }
    }

    fn top(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn machine() -> (Host, View) {
        let host = Host::with(
            &["/etc/hostname", "/etc/nginx/nginx.conf", "/var/log", "/proc/1234/status", "/opt/data/h.json", "/home/u/p", "/tmp", "/var/tmp", "/usr/bin/ls", "/work/project", "/root"],
            &[("/home/u/etc-link", "/etc"), ("/home/u/null", "/dev/null")],
        );
        let t = top(&["bin", "etc", "home", "opt", "proc", "root", "tmp", "usr", "var", "work"]);
        let view = View::plan(&t, &[], &ViewSettings::default(), &host);
        (host, view)
    }

    fn args(a: &[&str]) -> Vec<Vec<u8>> {
        a.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn the_view_is_every_host_directory_but_the_image_owned_ones() {
        let (_, v) = machine();
        let host: Vec<String> = v.host.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(host, ["/home", "/opt", "/root", "/tmp", "/var/tmp", "/work"]);
        assert!(v.sees_host(Path::new("/opt/app.db")));
        assert!(v.sees_host(Path::new("/")));
        assert!(!v.sees_host(Path::new("/etc/hostname")));
        assert!(!v.sees_host(Path::new("/optimal")), "a prefix of a name is not the directory");
    }

    #[test]
    fn a_directory_the_image_fills_stays_the_image_s_but_users_data_never_does() {
        let host = Host::with(&["/opt/x", "/root"], &[]);
        let t = top(&["home", "nix", "opt", "root", "srv"]);
        let settings = ViewSettings { share: vec!["/etc/ssl/certs".into(), "/var/tmp".into()], hide: vec!["/srv".into()] };
        assert_eq!(candidates(&t, &settings), ["nix", "opt"]);
        let v = View::plan(&t, &top(&["opt", "root"]), &settings, &host);
        let host_dirs: Vec<String> = v.host.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(host_dirs, ["/home", "/nix", "/root"], "/opt filled by the image, /srv hidden, absent share paths dropped");
        assert_eq!(v.filled, ["opt"]);
        assert_eq!(View::from_label(&v.to_label()), v);
    }

    #[test]
    fn named_host_paths_under_image_owned_directories_are_collisions() {
        let (host, v) = machine();
        let cwd = Path::new("/home/u/p");
        for (a, path, dir) in [
            (vec!["/etc/hostname"], "/etc/hostname", "/etc"),
            (vec!["--config=/etc/nginx/nginx.conf"], "/etc/nginx/nginx.conf", "/etc"),
            (vec!["-o/var/log/new.log"], "/var/log/new.log", "/var"),
            (vec!["-c", "/etc/nginx"], "/etc/nginx", "/etc"),
            (vec!["../../../etc/hostname"], "/etc/hostname", "/etc"),
            (vec!["if=/usr/bin/ls"], "/usr/bin/ls", "/usr"),
            (vec!["/etc/new-file"], "/etc/new-file", "/etc"),
            (vec!["../etc-link/passwd"], "/home/u/etc-link/passwd", "/etc"),
            (vec!["/proc/1234/status"], "/proc/1234/status", "/proc/1234"),
            (vec!["/proc/self/root/etc/hostname"], "/proc/self/root/etc/hostname", "/etc"),
            (vec!["-o../etc-link/x"], "/home/u/etc-link/x", "/etc"),
            (vec!["if=../etc-link/passwd"], "/home/u/etc-link/passwd", "/etc"),
        ] {
            let e = v.check_args(cwd, &args(&a), &host).expect_err(&format!("{a:?} passed"));
            assert_eq!((e.path.to_str().unwrap(), e.image_dir.as_str()), (path, dir), "{a:?}");
        }
        let e = v.check_args(cwd, &args(&["/etc/nginx"]), &host).unwrap_err();
        assert_eq!(
            e.message("text"),
            "/etc/nginx is a host path that image text does not share (the tool would see the image's own /etc); copy it into a shared directory or add it to shared"
        );
    }

    #[test]
    fn paths_the_tool_sees_as_the_host_does_pass() {
        let (host, v) = machine();
        let cwd = Path::new("/home/u/p");
        let fine = [
            "/opt/data/h.json", "/opt/new.db", ".a", "select(.x > 1)", "s/etc/x/", "-la", "--raw-output", "-F/", "/dev/null",
            "/dev/stdin", "/dev/fd/63", "/proc/self/status", "/proc/cpuinfo", "/home/u/null", "/usr/lib/python3/x.py", "/nonexistent/x", "../p/file",
            "/", "-", "--", "key=value", "/work/project/../project", "-Lbuild/lib", "-Isrc/etc", "-Ivendor/usr/include",
            "/proc/self/root/home/u/p",
        ];
        for a in fine {
            assert_eq!(v.check_args(cwd, &args(&[a]), &host), Ok(()), "{a:?}");
        }
        assert_eq!(v.check_cwd(Path::new("/work/project")), Ok(()));
        assert_eq!(v.check_cwd(Path::new("/")), Ok(()));
        assert_eq!(v.check_cwd(Path::new("/etc/nginx")).unwrap_err().image_dir, "/etc");
    }

    #[test]
    fn propagation_is_read_from_the_mount_that_holds_the_path() {
        let info = "27 1 254:0 / / rw,relatime shared:3 - ext4 /dev/vda rw\n\
                    45 27 0:40 / /mnt/usb rw,relatime - vfat /dev/sdb1 rw\n\
                    46 27 0:41 / /data\\040x rw master:7 - nfs srv:/x rw\n";
        assert!(follows_host(info, Path::new("/tmp")));
        assert!(!follows_host(info, Path::new("/mnt/usb/photos")));
        assert!(follows_host(info, Path::new("/data x/y")));
        assert!(!follows_host("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n", Path::new("/tmp")));
    }

    #[test]
    fn arguments_are_split_where_a_path_may_start() {
        let s = |a: &str| named_in(a.as_bytes()).into_iter().map(|v| String::from_utf8(v.to_vec()).unwrap()).collect::<Vec<_>>();
        assert_eq!(s("--config=/etc/x"), ["/etc/x"]);
        assert_eq!(s("-o/var/x"), ["/var/x"]);
        assert_eq!(s("-I../include"), ["../include"]);
        assert_eq!(s("-Lbuild/lib"), ["build/lib"]);
        assert_eq!(s("-la"), ["a"]);
        assert_eq!(s("of=/etc/x"), ["of=/etc/x", "/etc/x"]);
        assert_eq!(s("if=link/x"), ["if=link/x", "link/x"]);
        assert_eq!(s("plain"), ["plain"]);
        assert_eq!(s("--opt="), Vec::<String>::new());
    }
}
