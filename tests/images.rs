//! Images that are not on the machine at the first call: pulled from a real
//! registry (Debian's `docker-registry` on loopback) or built from the
//! catalog's recipe, with the caller told how it goes.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
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
fn a_missing_image_with_a_recipe_is_built_from_it() {
    let dockerfile = "FROM odfs-test/busybox:latest\nCOPY marker /marker\nRUN echo built-by-recipe >> /marker\n";
    let (m, reference, _cleanup) = recipe_mount("built", "/bin/cat", dockerfile, &[("marker", "from-the-context\n")]);
    let o = m.sh(r#""$M/tool" /marker"#);
    assert_eq!(stdout(&o), "from-the-context\nbuilt-by-recipe\n", "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.starts_with(&format!("odfs: tool: building {reference} (not on this machine)\n")), "{err}");
    // (The engine counts the label odfs stamps the build with as a step.)
    assert!(err.contains(&format!("odfs: tool: built {reference} step 4/4 in ")), "{err}");
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

/// An image of its own as `reference`: the busybox test image with
/// `/version` holding `version`. Returns its id.
fn build_version(dir: &std::path::Path, reference: &str, version: &str) -> String {
    let context = dir.join(format!("context-{version}"));
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("version"), format!("{version}\n")).unwrap();
    std::fs::write(context.join("Dockerfile"), "FROM odfs-test/busybox:latest\nCOPY version /version\n").unwrap();
    let o = docker(&["build", "-q", "-t", reference, context.to_str().unwrap()]);
    assert!(o.status.success(), "build: {}", stderr(&o));
    image_id(reference)
}

fn image_id(reference: &str) -> String {
    let o = docker(&["image", "inspect", "-f", "{{.Id}}", reference]);
    assert!(o.status.success(), "inspect {reference}: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

fn short(id: &str) -> &str {
    &id.trim_start_matches("sha256:")[..12]
}

#[test]
fn odfs_update_moves_a_tag_to_its_new_image_once_running_tools_end() {
    let mut registry = Registry::start();
    let reference = format!("{}/odfs-test/update-{}:1", registry.addr, std::process::id());
    registry.pushed.push(reference.clone());
    let v1 = build_version(&registry.dir, &reference, "v1");
    assert!(docker(&["push", &reference]).status.success());
    let digest = stdout(&docker(&["image", "inspect", "-f", "{{index .RepoDigests 0}}", &reference])).trim().to_string();
    let catalog = format!(
        "[image.tool]\nref = \"{reference}\"\nnetwork = \"none\"\nversion_command = [\"/bin/cat\", \"/version\"]\n\n\
         [image.pinned]\nref = \"{digest}\"\nnetwork = \"none\"\n\n\
         [command.ver]\nimage = \"tool\"\npath = \"/bin/cat\"\nargs = [\"/version\"]\n\n\
         [command.sh]\nimage = \"tool\"\npath = \"/bin/sh\"\n\n\
         [command.pinned-ver]\nimage = \"pinned\"\npath = \"/bin/cat\"\nargs = [\"/version\"]\n"
    );
    let m = TestMount::new(&catalog);
    assert_eq!(stdout(&m.sh(r#""$M/ver""#)), "v1\n");
    // v2 goes to the registry under the same tag; here the tag stays v1.
    let v2 = build_version(&registry.dir, &reference, "v2");
    assert!(docker(&["push", &reference]).status.success());
    assert!(docker(&["tag", &v1, &reference]).status.success());
    assert_ne!(v1, v2);

    let o = m.odfs(&["update", "--check", "ver"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(&format!("{reference}: an update is available: sha256:")), "{}", stdout(&o));
    assert_eq!(image_id(&reference), v1, "--check changes nothing");
    assert_eq!(stdout(&m.sh(r#""$M/ver""#)), "v1\n");

    // A tool running through the update finishes on v1.
    let running = m.sh_cmd(r#""$M/sh" -c 'sleep 3; cat /version'"#).stdout(Stdio::piped()).spawn().unwrap();
    assert!(eventually(Duration::from_secs(10), || String::from_utf8_lossy(&m.odfs(&["status", "--json"]).stdout).contains("\"running_tools\": 1")));
    let o = m.odfs(&["update", "--all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("{reference}: updated {} → {} (v1 → v2); 1 container(s) with tools running move to it when they end", short(&v1), short(&v2))), "{out}");
    assert!(out.contains(&format!("{digest}: pinned by digest: stays at {}", short(&v1))), "{out}");
    assert_eq!(image_id(&reference), v2);
    assert_eq!(stdout(&running.wait_with_output().unwrap()), "v1\n", "the running tool kept its image");
    // The next call runs v2; the digest-pinned entry still runs v1.
    assert_eq!(stdout(&m.sh(r#""$M/ver""#)), "v2\n", "{}", m.log_text());
    assert_eq!(stdout(&m.sh(r#""$M/pinned-ver""#)), "v1\n");
    assert!(m.log_text().contains(&format!("image updated: {} → {}", short(&v1), short(&v2))), "{}", m.log_text());
    let o = m.odfs(&["update", "ver"]);
    assert_eq!(stdout(&o), format!("{reference}: up to date at {}\n", short(&v2)));
    // Only root updates.
    let o = m.sh_cmd(&format!("setpriv --reuid=65534 --regid=65534 --clear-groups {} update --socket {}", env!("CARGO_BIN_EXE_odfs"), m.socket.display())).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("update changes the system and needs root"), "{}", stderr(&o));
    let _ = docker(&["rmi", "-f", &v1, &v2]);
}

#[test]
fn a_recipe_is_built_again_only_when_it_changed() {
    let dockerfile = "FROM odfs-test/busybox:latest\nCOPY marker /marker\n";
    let (m, reference, _cleanup) = recipe_mount("rebuilt", "/bin/cat", dockerfile, &[("marker", "one\n")]);
    assert_eq!(stdout(&m.sh(r#""$M/tool" /marker"#)), "one\n");
    let first = image_id(&reference);
    let o = m.odfs(&["update", "tool"]);
    assert_eq!(stdout(&o), format!("{reference}: up to date at {} (its recipe and base images are as built)\n", short(&first)), "{}", stderr(&o));
    std::fs::write(m.catalog.join("images/rebuilt/marker"), "two\n").unwrap();
    let o = m.odfs(&["update", "--check", "tool"]);
    assert!(stdout(&o).contains("would be built again"), "{}", stdout(&o));
    assert_eq!(image_id(&reference), first);
    let o = m.odfs(&["update", "tool"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let second = image_id(&reference);
    assert_eq!(stdout(&o), format!("{reference}: updated {} → {}\n", short(&first), short(&second)));
    assert_eq!(stdout(&m.sh(r#""$M/tool" /marker"#)), "two\n", "{}", m.log_text());
    let _ = docker(&["rmi", "-f", &first]);
}

#[test]
fn an_image_made_outside_odfs_with_a_recipe_and_no_registry_is_built_again_by_update() {
    // As scripts/build-images makes the shipped images: built here, no
    // registry to pull from, a recipe in the catalog.
    let dockerfile = "FROM odfs-test/busybox:latest\nCOPY marker /marker\n";
    let reference = format!("odfs-test/offline-{}:1", std::process::id());
    let _image = RemoveImage(reference.clone());
    let dir = PathBuf::from(format!("/tmp/odfs-test-offline-{}", std::process::id()));
    let _clean = Defer(|| {
        let _ = std::fs::remove_dir_all(format!("/tmp/odfs-test-offline-{}", std::process::id()));
    });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.join("marker"), "by hand\n").unwrap();
    assert!(docker(&["build", "-q", "-t", &reference, dir.to_str().unwrap()]).status.success());
    let by_hand = image_id(&reference);
    let toml = format!("[image.offline]\nref = \"{reference}\"\nbuild = \"images/offline\"\nnetwork = \"none\"\n\n[command.tool]\nimage = \"offline\"\npath = \"/bin/cat\"\n");
    let m = TestMount::with_files(&[("test.toml", &toml), ("images/offline/Dockerfile", dockerfile), ("images/offline/marker", "from the recipe\n")], &[]);
    let o = m.odfs(&["update", "--check", "tool"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("would be built again from its recipe") && stdout(&o).contains("was not built by odfs"), "{}", stdout(&o));
    assert_eq!(image_id(&reference), by_hand);
    let o = m.odfs(&["update", "tool"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let built = image_id(&reference);
    assert_eq!(stdout(&o), format!("{reference}: updated {} → {}\n", short(&by_hand), short(&built)));
    assert_eq!(stdout(&m.sh(r#""$M/tool" /marker"#)), "from the recipe\n");
    let o = m.odfs(&["update", "tool"]);
    assert!(stdout(&o).contains("up to date at") && stdout(&o).contains("as built"), "{}", stdout(&o));
    let _ = docker(&["rmi", "-f", &by_hand]);
}

#[test]
fn odfs_gc_removes_the_least_recently_used_unneeded_image_and_keeps_one_in_use() {
    // From a registry, so gc may remove them (they can be had again).
    let mut registry = Registry::start();
    let refs: Vec<String> = ["x", "y", "z"].iter().map(|n| format!("{}/odfs-test/gc-{n}-{}:1", registry.addr, std::process::id())).collect();
    registry.pushed.extend(refs.iter().cloned());
    let ids: Vec<String> = refs
        .iter()
        .zip(["x", "y", "z"])
        .map(|(r, n)| {
            let id = build_version(&registry.dir, r, n);
            assert!(docker(&["push", r]).status.success());
            id
        })
        .collect();
    let entry = |n: &str, r: &str| format!("[image.{n}]\nref = \"{r}\"\nnetwork = \"none\"\n\n[command.{n}]\nimage = \"{n}\"\npath = \"/bin/sh\"\n\n");
    let all: String = ["x", "y", "z"].iter().zip(&refs).map(|(n, r)| entry(n, r)).collect();
    let m = TestMount::new(&all);
    // y used before z; x busy throughout.
    for n in ["y", "z"] {
        assert_eq!(stdout(&m.sh(&format!(r#""$M/{n}" -c 'cat /version'"#))), format!("{n}\n"));
        std::thread::sleep(Duration::from_millis(1100));
    }
    let mut busy = m.sh_cmd(r#""$M/x" -c 'echo started; sleep 60'"#).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(busy.stdout.take().unwrap()), &mut line).unwrap();
    let _kill = Defer(move || {
        let _ = busy.kill();
        let _ = busy.wait();
    });
    // y and z leave the catalog and their containers go; w, a local build
    // with no recipe (its only copy), comes.
    let local = format!("odfs-test/gc-w-{}:1", std::process::id());
    let _local = RemoveImage(local.clone());
    let w = build_version(&registry.dir, &local, "w");
    std::fs::write(m.catalog.join("test.toml"), entry("x", &refs[0]) + &entry("w", &local)).unwrap();
    assert!(eventually(Duration::from_secs(10), || !m.mnt.join("y").exists() && m.mnt.join("w").exists()));
    assert_eq!(stdout(&m.sh(r#""$M/w" -c 'cat /version'"#)), "w\n");
    let o = m.odfs(&["stop", "--all"]);
    assert!(eventually(Duration::from_secs(10), || m.containers().len() == 1), "{:?} {} {}", m.containers(), stdout(&o), stderr(&o));
    let size = |id: &str| -> u64 { stdout(&docker(&["image", "inspect", "-f", "{{.Size}}", id])).trim().parse().unwrap() };
    let budget = size(&ids[0]) + size(&ids[2]) + size(&w) + 1024;

    // Nothing to age out at the default age; the budget takes y, the older.
    let o = m.odfs(&["gc", "--dry-run", "--budget", &budget.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("would remove image {} ({}", short(&ids[1]), refs[1])), "{}", stdout(&o));
    // Each image kept says why.
    let kept = |o: &Output, id: &str, why: &str| stdout(o).lines().any(|l| l.starts_with(&format!("kept image {}", short(id))) && l.contains(why));
    assert!(kept(&o, &ids[0], "in use by a container"), "{}", stdout(&o));
    assert!(kept(&o, &ids[2], "within the age of 30 days"), "{}", stdout(&o));
    assert!(kept(&o, &w, "cannot be had again"), "{}", stdout(&o));
    assert!(!stdout(&o).contains(&format!("remove image {}", short(&ids[2]))) && !stdout(&o).contains(&format!("remove image {}", short(&ids[0]))), "{}", stdout(&o));
    assert!(docker(&["image", "inspect", &refs[1]]).status.success(), "--dry-run removes nothing");
    let o = m.odfs(&["gc", "--budget", &budget.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("removed image {} ({}", short(&ids[1]), refs[1])), "{}", stdout(&o));
    assert!(stdout(&o).contains("over the image budget, least recently used"), "{}", stdout(&o));
    assert!(!docker(&["image", "inspect", &refs[1]]).status.success());
    for kept in [&refs[0], &refs[2]] {
        assert!(docker(&["image", "inspect", kept]).status.success(), "{kept} is gone: {}", stdout(&o));
    }
    // An age of zero takes every unused one: z, never x, whose tool runs,
    // nor w, which could not be had again.
    let _ = m.odfs(&["stop", "w"]);
    let o = m.odfs(&["gc", "--dry-run", "--max-age", "0s"]);
    assert!(stdout(&o).contains(&format!("would remove image {}", short(&ids[2]))), "{}", stdout(&o));
    assert!(kept(&o, &ids[0], "in use by a container") && kept(&o, &w, "cannot be had again"), "{}", stdout(&o));
    assert!(!stdout(&o).contains(&format!("remove image {}", short(&ids[0]))) && !stdout(&o).contains(&format!("remove image {}", short(&w))), "{}", stdout(&o));
    // status shows the disk use per image.
    let status = stdout(&m.odfs(&["status"]));
    assert!(status.contains("disk: ") && status.contains(short(&ids[0])) && status.contains(&refs[0]), "{status}");
    let o = m.sh_cmd(&format!("setpriv --reuid=65534 --regid=65534 --clear-groups {} gc --socket {}", env!("CARGO_BIN_EXE_odfs"), m.socket.display())).output().unwrap();
    assert!(stderr(&o).contains("gc changes the system and needs root"), "{}", stderr(&o));
}

#[test]
fn a_dropped_image_s_warm_container_goes_at_once_and_gc_removes_the_image_but_not_one_someone_else_named() {
    let mut registry = Registry::start();
    let refs: Vec<String> = ["d", "e"].iter().map(|n| format!("{}/odfs-test/drop-{n}-{}:1", registry.addr, std::process::id())).collect();
    registry.pushed.extend(refs.iter().cloned());
    let ids: Vec<String> = refs
        .iter()
        .zip(["d", "e"])
        .map(|(r, n)| {
            let id = build_version(&registry.dir, r, n);
            assert!(docker(&["push", r]).status.success());
            id
        })
        .collect();
    // Someone tags e for themselves.
    let mine = format!("odfs-test/mine-{}:1", std::process::id());
    let _mine = RemoveImage(mine.clone());
    assert!(docker(&["tag", &refs[1], &mine]).status.success());
    // Kept warm for an hour: only leaving the catalog ends them early.
    let entry = |n: &str, r: &str| format!("[image.{n}]\nref = \"{r}\"\nnetwork = \"none\"\nkeep_alive = \"1h\"\n\n[command.{n}]\nimage = \"{n}\"\npath = \"/bin/sh\"\n\n");
    let m = TestMount::new(&(entry("d", &refs[0]) + &entry("e", &refs[1])));
    for n in ["d", "e"] {
        assert_eq!(stdout(&m.sh(&format!(r#""$M/{n}" -c 'cat /version'"#))), format!("{n}\n"));
    }
    assert_eq!(m.containers().len(), 2);
    std::fs::write(m.catalog.join("test.toml"), "").unwrap();
    assert!(eventually(Duration::from_secs(10), || !m.mnt.join("d").exists()));
    // The next reaper round (every half second) removes them.
    assert!(eventually(Duration::from_secs(5), || m.containers().is_empty()), "{:?}\n{}", m.containers(), m.log_text());
    let o = m.odfs(&["gc", "--max-age", "0s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("removed image {} ({}", short(&ids[0]), refs[0])), "{}", stdout(&o));
    assert!(!docker(&["image", "inspect", &refs[0]]).status.success(), "{}", stdout(&o));
    let kept = format!("kept image {} (", short(&ids[1]));
    let line = stdout(&o).lines().find(|l| l.starts_with(&kept)).map(String::from);
    assert!(line.as_deref().is_some_and(|l| l.ends_with(&format!("also named {mine}, a name odfs did not give it"))), "{}", stdout(&o));
    assert!(docker(&["image", "inspect", &mine]).status.success());
}

#[test]
fn docker_hub_images_come_from_a_registry_mirror() {
    let mut registry = Registry::start();
    let hub_name = format!("odfs-mirror-{}/tool:1", std::process::id());
    let on_mirror = format!("{}/{hub_name}", registry.addr);
    registry.pushed.push(on_mirror.clone());
    let _local = RemoveImage(hub_name.clone());
    build_version(&registry.dir, &on_mirror, "mirrored");
    assert!(docker(&["push", &on_mirror]).status.success());
    assert!(docker(&["rmi", &on_mirror]).status.success());
    let config = registry.dir.join("odfs.toml");
    std::fs::write(&config, format!("[engine]\nregistry_mirrors = [\"http://{}/\"]\n", registry.addr)).unwrap();
    let catalog = format!("[image.hub]\nref = \"{hub_name}\"\nnetwork = \"none\"\n\n[command.ver]\nimage = \"hub\"\npath = \"/bin/cat\"\nargs = [\"/version\"]\n");
    let m = TestMount::with_files(&[("test.toml", &catalog)], &["--config", config.to_str().unwrap()]);
    let o = m.sh(r#""$M/ver""#);
    assert_eq!(stdout(&o), "mirrored\n", "{}\n{}", stderr(&o), m.log_text());
    assert!(docker(&["image", "inspect", &hub_name]).status.success(), "tagged as the catalog names it");
    assert!(!docker(&["image", "inspect", &on_mirror]).status.success(), "the mirror's name is not left behind");
    assert!(m.log_text().contains("pulled from a registry mirror"), "{}", m.log_text());
}

#[test]
fn an_image_with_a_recipe_is_never_pulled_from_docker_hub_s_namespace_nor_its_mirrors() {
    // A registry that serves the recipe image's name, as a site's Docker
    // Hub mirror would after someone published an image under that name.
    let mut registry = Registry::start();
    let hub_name = format!("odfs-squat-{}/netcap:latest", std::process::id());
    let on_mirror = format!("{}/{hub_name}", registry.addr);
    let named = format!("{}/odfs-test/named-{}:1", registry.addr, std::process::id());
    registry.pushed.extend([on_mirror.clone(), named.clone()]);
    for r in [&on_mirror, &named] {
        build_version(&registry.dir, r, "from-the-registry");
        assert!(docker(&["push", r]).status.success());
        assert!(docker(&["rmi", r]).status.success());
    }
    let _images = [RemoveImage(hub_name.clone()), RemoveImage(named.clone())];
    assert!(!docker(&["image", "inspect", &hub_name]).status.success(), "{hub_name} is here already");
    let config = registry.dir.join("odfs.toml");
    std::fs::write(&config, format!("[engine]\nregistry_mirrors = [\"http://{}/\"]\n", registry.addr)).unwrap();
    // The same recipe for both: one named by Docker Hub's name, one by the
    // registry the site names in the reference.
    let entry = |name: &str, r: &str| {
        format!("[image.{name}]\nref = \"{r}\"\nbuild = \"images/recipe\"\nnetwork = \"none\"\n\n[command.{name}]\nimage = \"{name}\"\npath = \"/bin/cat\"\nargs = [\"/version\"]\n\n")
    };
    let toml = entry("hub", &hub_name) + &entry("named", &named);
    let m = TestMount::with_files(
        &[("test.toml", &toml), ("images/recipe/Dockerfile", "FROM odfs-test/busybox:latest\nCOPY version /version\n"), ("images/recipe/version", "from-the-recipe\n")],
        &["--config", config.to_str().unwrap()],
    );
    let recipe = m.catalog.join("images/recipe");
    let show = |c: &str| stdout(&m.odfs(&["show", c])).lines().find_map(|l| l.strip_prefix("source:     ").map(String::from)).unwrap_or_default();
    assert_eq!(show("hub"), format!("built from its recipe at {} (never pulled)", recipe.display()));
    assert_eq!(show("named"), format!("pulled from {named}, or built from its recipe at {} when that fails", recipe.display()));

    let o = m.sh(r#""$M/hub""#);
    assert_eq!(stdout(&o), "from-the-recipe\n", "{}\n{}", stderr(&o), m.log_text());
    assert_eq!(stderr(&o).lines().next(), Some(format!("odfs: hub: building {hub_name} (not on this machine)").as_str()));
    assert!(!m.log_text().contains("pulled from a registry mirror") && !m.log_text().contains("not from this mirror"), "{}", m.log_text());
    // Neither does an update ask the mirror: the recipe decides.
    let o = m.odfs(&["update", "hub"]);
    assert!(stdout(&o).contains("up to date at") && stdout(&o).contains("as built"), "{}{}", stdout(&o), stderr(&o));
    assert!(!m.log_text().contains("mirror"), "{}", m.log_text());
    // The registry a reference names is the site's word: pulled from it.
    let o = m.sh(r#""$M/named""#);
    assert_eq!(stdout(&o), "from-the-registry\n", "{}\n{}", stderr(&o), m.log_text());
}

/// An HTTP proxy on loopback that answers every request with `proxied` and
/// keeps the request lines it saw.
fn recording_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut reader, &mut line);
            log.lock().unwrap().push(line.trim().to_string());
            let _ = std::io::Write::write_all(&mut &conn, b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\nproxied\n");
        }
    });
    (addr, seen)
}

#[test]
fn the_site_s_proxy_and_ca_bundle_reach_recipe_builds_and_networked_tools() {
    let (proxy, seen) = recording_proxy();
    let dir = PathBuf::from(format!("/tmp/odfs-test-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _clean = Defer(|| {
        let _ = std::fs::remove_dir_all(format!("/tmp/odfs-test-proxy-{}", std::process::id()));
    });
    // Where sites keep it: under /etc, which is the image's own in a
    // container, so odfs shares it into the view at its path.
    let bundle = PathBuf::from(format!("/etc/ssl/odfs-test-ca-{}.pem", std::process::id()));
    let _bundle = Defer(|| {
        let _ = std::fs::remove_file(format!("/etc/ssl/odfs-test-ca-{}.pem", std::process::id()));
    });
    std::fs::write(&bundle, "-----BEGIN CERTIFICATE-----\nb2Rmcy10ZXN0\n-----END CERTIFICATE-----\n").unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = dir.join("odfs.toml");
    std::fs::write(&config, format!("[engine]\nhttp_proxy = \"{proxy}\"\nno_proxy = \"localhost\"\nca_bundle = \"{}\"\n", bundle.display())).unwrap();
    let reference = format!("odfs-test/proxied-{}:1", std::process::id());
    let _image = RemoveImage(reference.clone());
    let toml = format!(
        "[image.proxied]\nref = \"{reference}\"\nbuild = \"images/proxied\"\nnetwork = \"host\"\n\n[command.fetched]\nimage = \"proxied\"\npath = \"/bin/cat\"\n\n\
         [command.penv]\nimage = \"proxied\"\npath = \"/usr/bin/env\"\n\n[command.psh]\nimage = \"proxied\"\npath = \"/bin/sh\"\n\n\
         [image.offline]\nref = \"odfs-test/busybox:latest\"\nnetwork = \"none\"\n\n[command.oenv]\nimage = \"offline\"\npath = \"/usr/bin/env\"\n"
    );
    let dockerfile = "FROM odfs-test/busybox:latest\nRUN wget -q -O /fetched http://odfs-proxy-probe.invalid/x\n";
    let m = TestMount::with_files(&[("test.toml", &toml), ("images/proxied/Dockerfile", dockerfile)], &["--config", config.to_str().unwrap()]);
    let o = m.sh(r#""$M/fetched" /fetched"#);
    assert_eq!(stdout(&o), "proxied\n", "{}\n{}", stderr(&o), m.log_text());
    assert!(seen.lock().unwrap().iter().any(|l| l == "GET http://odfs-proxy-probe.invalid/x HTTP/1.1"), "{:?}", seen.lock().unwrap());
    // The bundle is in the built image, named where TLS clients look (a
    // path the host has too: named to the shim, it would be refused).
    let o = m.sh(r#"env -u SSL_CERT_FILE "$M/psh" -c 'cat "$SSL_CERT_FILE" /usr/local/share/ca-certificates/odfs-ca-bundle.crt'"#);
    let text = std::fs::read_to_string(&bundle).unwrap();
    assert_eq!(stdout(&o), format!("{text}{text}"), "{}", stderr(&o));
    // A networked tool gets the proxy and the host's bundle unless its
    // caller set its own; an offline one gets neither.
    let env = stdout(&m.sh(r#"env -u http_proxy -u HTTP_PROXY -u SSL_CERT_FILE "$M/penv""#));
    assert!(env.lines().any(|l| l == format!("http_proxy={proxy}")) && env.lines().any(|l| l == format!("HTTP_PROXY={proxy}")), "{env}");
    assert!(env.lines().any(|l| l == format!("SSL_CERT_FILE={}", bundle.display())), "{env}");
    let env = stdout(&m.sh(r#"http_proxy=http://mine:1 "$M/penv""#));
    assert!(env.lines().any(|l| l == "http_proxy=http://mine:1") && !env.contains(&format!("={proxy}")), "the caller's own proxy wins: {env}");
    let env = stdout(&m.sh(r#"env -u http_proxy -u SSL_CERT_FILE "$M/oenv""#));
    assert!(!env.lines().any(|l| l.starts_with("http_proxy=") || l.starts_with("HTTP_PROXY=") || l.starts_with("SSL_CERT_FILE=")), "{env}");
}

#[test]
fn a_container_made_ahead_gives_its_image_up_to_gc_and_the_next_call_fetches_it_again() {
    let mut registry = Registry::start();
    let reference = format!("{}/odfs-test/ahead-{}:1", registry.addr, std::process::id());
    registry.pushed.push(reference.clone());
    let id = build_version(&registry.dir, &reference, "a");
    assert!(docker(&["push", &reference]).status.success());
    let m = TestMount::new(&format!("[image.a]\nref = \"{reference}\"\nnetwork = \"none\"\nkeep_alive = \"1s\"\n\n[command.a]\nimage = \"a\"\npath = \"/bin/sh\"\n"));
    assert_eq!(stdout(&m.sh(r#""$M/a" -c 'cat /version'"#)), "a\n");
    // Its keep-alive over, the next container is made ahead, not started.
    assert!(eventually(Duration::from_secs(10), || m.containers().is_empty() && m.made_ahead().len() == 1), "{}", m.log_text());
    // It is no use of the image: gc takes the image, and the container with it.
    let o = m.odfs(&["gc", "--max-age", "0s"]);
    assert!(stdout(&o).contains(&format!("removed image {} ({}", short(&id), reference)), "{}{}", stdout(&o), stderr(&o));
    assert!(m.made_ahead().is_empty() && !docker(&["image", "inspect", &reference]).status.success());
    // The next call fetches it again and runs.
    assert_eq!(stdout(&m.sh(r#""$M/a" -c 'cat /version'"#)), "a\n");
}
