//! The shipped catalog: real Debian tools in images built offline, run
//! through a mount of `catalog/` exactly as users get them.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;

fn catalog_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog")
}

/// A mount of a copy of the shipped catalog: its files and its recipes.
fn shipped() -> TestMount {
    let root = catalog_dir();
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.extend(std::fs::read_dir(root.join("images")).unwrap().map(|e| e.unwrap().path().join("Dockerfile")));
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| (p.strip_prefix(&root).unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(p).unwrap()))
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    TestMount::with_files(&refs, &[])
}

#[test]
fn the_shipped_catalog_lists_at_least_25_real_tools_in_5_images() {
    let m = shipped();
    assert!(m.log_text().contains("catalog loaded"), "{}", m.log_text());
    assert!(!m.log_text().contains("catalog: "), "catalog errors:\n{}", m.log_text());
    let debian = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog/debian.toml")).unwrap();
    let images = debian.matches("[image.").count();
    let names: Vec<String> = std::fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    for tool in ["jq", "tcpdump", "traceroute", "sqlite3", "nmap", "socat", "strace", "convert", "rg"] {
        assert!(names.contains(&tool.to_string()), "{tool} missing: {names:?}");
    }
    let commands = debian.lines().filter(|l| l.starts_with("commands")).map(|l| l.matches('"').count() / 2).sum::<usize>();
    assert!(images >= 5 && commands >= 25, "{images} images, {commands} commands");
}

#[test]
fn every_shipped_image_has_a_recipe_or_is_on_this_machine() {
    let (catalog, errors) = odfs::catalog::load_dirs(&[catalog_dir()]).expect("the shipped catalog can be read");
    assert!(errors.is_empty(), "{errors:?}");
    for image in catalog.images.values() {
        match &image.build {
            Some(recipe) => assert!(recipe.join("Dockerfile").is_file(), "{}: {}", image.name, recipe.display()),
            None => assert!(docker(&["image", "inspect", &image.reference]).status.success(), "{} is missing", image.reference),
        }
    }
    // Every recipe is used by an image.
    for recipe in std::fs::read_dir(catalog_dir().join("images")).unwrap() {
        let recipe = recipe.unwrap().path();
        assert!(catalog.images.values().any(|i| i.build.as_ref() == Some(&recipe)), "{} is unused", recipe.display());
    }
}

#[test]
fn data_tools_work_on_the_callers_files_as_the_caller() {
    let m = shipped();
    let o = m.sh(r#"echo '{"a":{"b":[1,2,3]}}' | "$M/jq" -c '.a.b | map(.*2)'"#);
    assert_eq!(stdout(&o), "[2,4,6]\n", "{}", stderr(&o));
    let o = as_nobody(m.shim("sqlite3"))
        .args(["t.db", "create table t(x); insert into t values (42); select x from t;"])
        .current_dir(&m.work)
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "42\n", "{}", stderr(&o));
    assert_eq!(std::fs::metadata(m.work.join("t.db")).unwrap().uid(), 65534);
    let o = m.sh(r#""$M/convert" -size 4x3 xc:red red.png && "$M/identify" -format '%w %h\n' red.png"#);
    assert_eq!(stdout(&o), "4 3\n", "{}", stderr(&o));
    let o = m.sh(r#"printf 'alpha\nneedle here\n' > f.txt && "$M/rg" -n needle f.txt"#);
    assert_eq!(stdout(&o), "2:needle here\n", "{}", stderr(&o));
    let o = m.sh(r#""$M/strace" -f -e trace=execve -o /dev/null true && echo traced"#);
    assert_eq!(stdout(&o), "traced\n", "{}", stderr(&o));
}

#[test]
fn capture_tools_are_for_netadmin_and_root_only() {
    let m = shipped();
    let o = as_nobody(m.shim("tcpdump"))
        .arg("--version")
        .current_dir(&m.work)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(126));
    assert_eq!(stderr(&o), "odfs: tcpdump: permission denied (allowed groups: netadmin)\n");
    // Root captures on the host's loopback (tcpdump drops to its own user,
    // which only the image knows); the traffic comes from the mount's ping.
    let o = m.sh(r#"( sleep 2; "$M/ping" -c 4 -i 0.3 127.0.0.1 >/dev/null ) & timeout 30 "$M/tcpdump" -n -c 2 -i lo icmp 2>/dev/null"#);
    assert_eq!(stdout(&o).lines().count(), 2, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("ICMP echo"), "{}", stdout(&o));
}
