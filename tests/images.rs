//! Images that are not on the machine at the first call: pulled from a real
//! registry (Debian's `docker-registry` on loopback) or built from the
//! catalog's recipe, with the caller told how it goes.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A registry of its own on a free loopback port, with its own storage;
/// stopped and deleted on drop. Docker trusts 127.0.0.0/8 without TLS.
struct Registry {
    child: Child,
    dir: PathBuf,
    addr: String,
    /// Tags pushed, removed from the engine on drop.
    pushed: Vec<String>,
}

impl Registry {
    fn start() -> Registry {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let dir = PathBuf::from(format!("/tmp/odfs-test-registry-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", dir.join("config.yml").to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (scripts/setup installs it)");
        let r = Registry { child, dir, addr, pushed: vec![] };
        assert!(
            eventually(Duration::from_secs(10), || std::net::TcpStream::connect(&r.addr).is_ok()),
            "registry did not start: {}",
            std::fs::read_to_string(r.dir.join("registry.log")).unwrap_or_default()
        );
        r
    }

    /// Push an image of its own as `name` (the busybox test image plus a
    /// 2 MB layer of random bytes, so there is something to download) and
    /// remove it from the engine, so the next use must pull it. Returns its
    /// reference.
    fn push_image(&mut self, name: &str) -> String {
        let reference = format!("{}/{name}", self.addr);
        let context = self.dir.join(format!("context-{}", self.pushed.len()));
        std::fs::create_dir_all(&context).unwrap();
        let mut random = vec![0u8; 2 << 20];
        use std::io::Read;
        std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut random).unwrap();
        std::fs::write(context.join("blob"), random).unwrap();
        std::fs::write(context.join("Dockerfile"), "FROM odfs-test/busybox:latest\nCOPY blob /blob\n").unwrap();
        self.pushed.push(reference.clone());
        let o = docker(&["build", "-q", "-t", &reference, context.to_str().unwrap()]);
        assert!(o.status.success(), "build: {}", stderr(&o));
        let o = docker(&["push", &reference]);
        assert!(o.status.success(), "push: {}", stderr(&o));
        assert!(docker(&["rmi", &reference]).status.success());
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in &self.pushed {
            let _ = docker(&["rmi", "-f", r]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn catalog(reference: &str) -> String {
    format!("[image.remote]\nref = \"{reference}\"\nnetwork = \"none\"\n\n[command.echo]\nimage = \"remote\"\npath = \"/bin/echo\"\n")
}

#[test]
fn a_missing_image_is_pulled_on_first_call_with_a_start_and_an_end_line() {
    let mut registry = Registry::start();
    let reference = registry.push_image(&format!("odfs-test/pull-{}:1", std::process::id()));
    let m = TestMount::new(&catalog(&reference));
    let o = m.sh(r#""$M/echo" first 2>err; cat err >&2"#);
    assert_eq!(stdout(&o), "first\n", "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], format!("odfs: echo: pulling {reference} (not on this machine)"));
    // The busybox layer is here already; the 2 MB one is downloaded.
    assert!(lines[1].starts_with(&format!("odfs: echo: pulled {reference} 2/2 layers, 2.")), "{}", lines[1]);
    assert!(lines[1].ends_with('s') && lines[1].contains(" MB in "), "{}", lines[1]);
    assert!(docker(&["image", "inspect", &reference]).status.success());
    // Present now: nothing more is said.
    let o = m.sh(r#""$M/echo" second"#);
    assert_eq!((stdout(&o).as_str(), stderr(&o).as_str()), ("second\n", ""));
    let stats = String::from_utf8(m.odfs(&["stats", "--json"]).stdout).unwrap();
    assert!(stats.contains("\"cold\": 1"), "{stats}");
}

#[test]
fn odfs_pull_fetches_ahead_of_use_and_says_so_the_same_way() {
    let mut registry = Registry::start();
    let reference = registry.push_image(&format!("odfs-test/admin-pull-{}:1", std::process::id()));
    let m = TestMount::new(&catalog(&reference));
    let o = m.odfs(&["pull", "echo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{reference}: fetched\n"));
    let err = stderr(&o);
    assert!(err.starts_with(&format!("odfs: pull: pulling {reference} (not on this machine)\nodfs: pull: pulled {reference} 2/2 layers")), "{err}");
    let o = m.odfs(&["pull", "echo"]);
    assert_eq!((stdout(&o), stderr(&o)), (format!("{reference}: present\n"), String::new()));
    assert!(m.containers().is_empty(), "pull starts no container");
}

#[test]
fn concurrent_first_callers_share_one_pull_and_one_container() {
    let mut registry = Registry::start();
    let reference = registry.push_image(&format!("odfs-test/shared-pull-{}:1", std::process::id()));
    let m = TestMount::new(&catalog(&reference));
    let callers: Vec<_> = (0..6)
        .map(|i| m.sh_cmd(&format!(r#""$M/echo" caller{i}"#)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    for (i, c) in callers.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert_eq!(stdout(&o), format!("caller{i}\n"), "{}", stderr(&o));
        // Each caller heard of the pull or found the image there already.
        assert!(stderr(&o).is_empty() || stderr(&o).contains(&format!("pulled {reference}")), "{}", stderr(&o));
    }
    assert_eq!(m.containers().len(), 1, "{:?}", m.containers());
}

#[test]
fn a_terminal_sees_a_progress_bar_that_ends_on_its_own_line() {
    let mut registry = Registry::start();
    let reference = registry.push_image(&format!("odfs-test/bar-{}:1", std::process::id()));
    let m = TestMount::new(&catalog(&reference));
    let t = Tmux::new(&m, "");
    // At the prompt, not typed ahead (whose echo would match too early),
    // and until the tool's own output line is on screen.
    t.wait_prompt();
    t.line(r#""$M/echo" after-the-bar"#);
    assert!(eventually(Duration::from_secs(60), || t.screen().lines().any(|l| l == "after-the-bar")), "{}", t.screen());
    let screen = t.screen();
    let bar = format!("odfs: echo: [####################] pulled {reference} 2/2 layers");
    assert!(screen.contains(&bar), "{screen}");
    // The bar line is finished before the tool's output.
    let after: Vec<&str> = screen.lines().skip_while(|l| !l.contains("[####")).collect();
    assert_eq!(after.get(1).copied(), Some("after-the-bar"), "{screen}");
}

#[test]
fn an_image_that_cannot_be_pulled_is_built_from_its_recipe() {
    let dockerfile = "FROM odfs-test/busybox:latest\nCOPY marker /marker\nRUN echo built-by-recipe >> /marker\n";
    let (m, reference, _cleanup) = recipe_mount("built", "/bin/cat", dockerfile, &[("marker", "from-the-context\n")]);
    let o = m.sh(r#""$M/tool" /marker"#);
    assert_eq!(stdout(&o), "from-the-context\nbuilt-by-recipe\n", "{}", stderr(&o));
    let err = stderr(&o);
    // (The failed pull before the build may be over before the call waits.)
    assert!(err.contains(&format!("odfs: tool: building {reference} (cannot be pulled)")), "{err}");
    assert!(err.contains(&format!("odfs: tool: built {reference} step 3/3 in ")), "{err}");
    assert!(m.log_text().contains("building image from its recipe"), "{}", m.log_text());
}

#[test]
fn a_recipe_whose_base_is_missing_says_how_to_make_the_base_and_is_not_retried_at_once() {
    let (m, reference, _cleanup) = recipe_mount("nobase", "/bin/true", "FROM odfs-test/no-such-base:1\nRUN true\n", &[]);
    let o = m.sh(r#""$M/tool""#);
    assert_eq!(shell_status(&o), 126, "{}", stderr(&o));
    let last = stderr(&o).lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with(&format!("odfs: tool: image {reference} could not be built from its recipe "))
            && last.contains("its base image odfs-test/no-such-base:1 is not on this machine (pull it, or make it offline with scripts/build-base)"),
        "{last}"
    );
    let o = m.sh(r#""$M/tool""#);
    assert_eq!(shell_status(&o), 126);
    assert!(stderr(&o).contains("(next attempt in "), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "no second build: {}", stderr(&o));
}

#[test]
fn a_catalog_recipe_without_a_dockerfile_is_an_error_at_load() {
    let m = TestMount::new("[image.x]\nref = \"odfs-test/x:1\"\nbuild = \"images/none\"\ncommands = [\"x\"]\n");
    assert!(m.log_text().contains("image x: build recipe "), "{}", m.log_text());
    assert!(m.log_text().contains("images/none has no Dockerfile"), "{}", m.log_text());
    assert!(!m.mnt.join("x").exists());
}

/// A mount whose image `name` is not on the machine and has a recipe (the
/// Dockerfile and `context` files); its command `tool` runs `path`. Returns
/// the mount, the image's reference and the guard that removes the image.
fn recipe_mount(name: &str, path: &str, dockerfile: &str, context: &[(&str, &str)]) -> (TestMount, String, RemoveImage) {
    let reference = format!("odfs-test/{name}-{}:1", std::process::id());
    let guard = RemoveImage(reference.clone());
    let toml = format!(
        "[image.{name}]\nref = \"{reference}\"\nbuild = \"images/{name}\"\nnetwork = \"none\"\n\n[command.tool]\nimage = \"{name}\"\npath = \"{path}\"\n"
    );
    let mut files = vec![("test.toml".to_string(), toml), (format!("images/{name}/Dockerfile"), dockerfile.to_string())];
    files.extend(context.iter().map(|(f, text)| (format!("images/{name}/{f}"), text.to_string())));
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    (TestMount::with_files(&refs, &[]), reference, guard)
}

/// Removes an image the test made, even when the test fails.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}
