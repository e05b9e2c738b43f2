//! Catalog files from the package formats of other tool runners: whalebrew
//! package files (plus the `io.whalebrew.*` labels of their images) and
//! singularity-hpc `container.yaml` registry entries. Pure: the caller reads
//! the files and, where it can, the image labels; this module maps them and
//! says plainly what odfs cannot carry over.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::load::parse_file;
use super::model::validate_name;

/// An image as a catalog file writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutImage {
    #[serde(rename = "ref")]
    pub reference: String,
    pub network: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A command as a catalog file writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutCommand {
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// The result of an import: catalog entries, and one note per thing that
/// did not carry over (or carried over differently).
#[derive(Debug, Default, Serialize)]
pub struct Imported {
    pub image: BTreeMap<String, OutImage>,
    pub command: BTreeMap<String, OutCommand>,
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl Imported {
    /// The catalog file text, notes as comments at the top. It is parsed
    /// back before it is returned, so what is written always loads.
    pub fn to_toml(&self, source: &str) -> Result<String, String> {
        let mut text = format!("# Imported from {source} by `odfs import`.\n");
        for n in &self.notes {
            text.push_str(&format!("# note: {n}\n"));
        }
        text.push('\n');
        text.push_str(&toml::to_string(self).map_err(|e| e.to_string())?);
        parse_file(Path::new("(imported)"), &text).map_err(|errs| {
            errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        })?;
        Ok(text)
    }

    /// An image key for a reference: its last path component without tag
    /// or digest, made unique among the keys taken so far.
    fn image_key(&mut self, reference: &str, network: &str, user: Option<&str>) -> String {
        let out = OutImage { reference: reference.to_string(), network: network.to_string(), user: user.map(String::from) };
        if let Some((k, _)) = self.image.iter().find(|(_, v)| **v == out) {
            return k.clone();
        }
        let base = reference.rsplit('/').next().unwrap_or(reference);
        let base = base.split(['@', ':']).next().unwrap_or(base);
        let base: String = base.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
        let base = if base.is_empty() { "image".to_string() } else { base };
        let mut key = base.clone();
        let mut n = 2;
        while self.image.contains_key(&key) {
            key = format!("{base}-{n}");
            n += 1;
        }
        self.image.insert(key.clone(), out);
        key
    }

    fn add_command(&mut self, name: &str, cmd: OutCommand, origin: &str) {
        if let Err(e) = validate_name(name) {
            self.notes.push(format!("{origin}: skipped: command {e}"));
        } else if self.command.contains_key(name) {
            self.notes.push(format!("{origin}: skipped {name}: already imported from another entry"));
        } else {
            self.command.insert(name.to_string(), cmd);
        }
    }
}

// ---- whalebrew -------------------------------------------------------------

/// A whalebrew package file: YAML after a `#!/usr/bin/env whalebrew` line.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WhalebrewPackage {
    pub image: String,
    pub entrypoint: Vec<String>,
    pub environment: Vec<String>,
    pub volumes: Vec<String>,
    pub ports: Vec<String>,
    pub networks: Vec<String>,
    pub working_dir: Option<String>,
    pub keep_container_user: bool,
}

/// What an image says about itself: its `io.whalebrew.*` labels and its
/// entry point, read from the engine when the image is on this machine.
#[derive(Debug, Default, Clone)]
pub struct ImageFacts {
    pub labels: HashMap<String, String>,
    pub entrypoint: Vec<String>,
}

/// Whether a file is a whalebrew package (its first line names whalebrew).
pub fn is_whalebrew_package(text: &str) -> bool {
    text.lines().next().is_some_and(|l| l.starts_with("#!") && l.contains("whalebrew"))
}

pub fn parse_whalebrew(text: &str) -> Result<WhalebrewPackage, String> {
    let pkg: WhalebrewPackage = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    if pkg.image.trim().is_empty() {
        return Err("no `image:`".into());
    }
    Ok(pkg)
}

/// A label holding a YAML list (`io.whalebrew.config.environment: '["A", "B"]'`).
fn label_list(facts: &ImageFacts, key: &str) -> Vec<String> {
    facts.labels.get(key).and_then(|v| serde_norway::from_str::<Vec<String>>(v).ok()).unwrap_or_default()
}

/// Map whalebrew packages (`(file name, text)`) to catalog entries. `facts`
/// gives what is known of each image (labels, entry point) by reference.
pub fn import_whalebrew(files: &[(String, String)], facts: &HashMap<String, ImageFacts>) -> Imported {
    let mut out = Imported::default();
    for (file, text) in files {
        if !is_whalebrew_package(text) {
            continue;
        }
        let mut pkg = match parse_whalebrew(text) {
            Ok(p) => p,
            Err(e) => {
                out.notes.push(format!("{file}: skipped: not a whalebrew package ({e})"));
                continue;
            }
        };
        let fact = facts.get(&pkg.image).cloned().unwrap_or_default();
        // Labels fill in what the package file leaves out, as whalebrew does.
        for (key, field) in [
            ("io.whalebrew.config.environment", &mut pkg.environment),
            ("io.whalebrew.config.volumes", &mut pkg.volumes),
            ("io.whalebrew.config.ports", &mut pkg.ports),
            ("io.whalebrew.config.networks", &mut pkg.networks),
        ] {
            if field.is_empty() {
                *field = label_list(&fact, key);
            }
        }
        if pkg.working_dir.is_none() {
            pkg.working_dir = fact.labels.get("io.whalebrew.config.working_dir").cloned();
        }
        if !pkg.keep_container_user {
            pkg.keep_container_user = fact.labels.get("io.whalebrew.config.keep_container_user").is_some_and(|v| v == "true");
        }
        // The installed file's name is the command (whalebrew chose it at
        // install time, from `io.whalebrew.name` or the image name).
        let name = Path::new(file).file_name().map_or(file.clone(), |n| n.to_string_lossy().into_owned());
        let origin = format!("{file} ({})", pkg.image);

        // whalebrew runs containers on Docker's default bridge unless told.
        let mut network = "bridge".to_string();
        for n in &pkg.networks {
            match n.as_str() {
                "host" | "none" | "bridge" => network = n.clone(),
                other => out.notes.push(format!("{origin}: network {other:?} is not supported; using {network}")),
            }
        }
        // Never a root entry: `user = "root"` is root for everyone its
        // `allow_groups` names, a choice for an admin to make by hand.
        let user: Option<&str> = None;
        if pkg.keep_container_user {
            out.notes.push(format!(
                "{origin}: keep_container_user is not carried over: the tool runs as the caller (if it truly needs root, add user = \"root\" with allow_groups by hand)"
            ));
        }
        let mut env = Vec::new();
        for e in &pkg.environment {
            match e.split_once('=') {
                None => env.push(e.clone()),
                Some((k, _)) => {
                    out.notes.push(format!("{origin}: environment {k}=… has a fixed value; odfs passes host variables by name only, so {k} is passed from the caller"));
                    env.push(k.to_string());
                }
            }
        }
        for v in &pkg.volumes {
            out.notes.push(format!("{origin}: volume {v:?} is not mounted; odfs shares host directories at their own paths (odfs mount --share)"));
        }
        for p in &pkg.ports {
            out.notes.push(format!("{origin}: port {p:?} is not published; use network = \"host\""));
        }
        if let Some(w) = &pkg.working_dir {
            out.notes.push(format!("{origin}: working_dir {w:?} is not used; tools run in the caller's own directory"));
        }
        let entrypoint = if pkg.entrypoint.is_empty() { fact.entrypoint.clone() } else { pkg.entrypoint.clone() };
        let (path, args) = match entrypoint.split_first() {
            Some((p, rest)) => (Some(p.clone()), rest.to_vec()),
            None => {
                out.notes.push(format!(
                    "{origin}: the image's entry point is unknown (not on this machine); {name} is looked up on the image's PATH"
                ));
                (None, vec![])
            }
        };
        let image = out.image_key(&pkg.image, &network, user);
        out.add_command(&name, OutCommand { image, path, args, env }, &origin);
    }
    out
}

// ---- singularity-hpc ---------------------------------------------------------

/// A singularity-hpc registry entry (`container.yaml`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShpcEntry {
    pub docker: Option<String>,
    pub latest: BTreeMap<String, String>,
    pub aliases: Aliases,
    pub env: BTreeMap<String, serde_norway::Value>,
}

/// shpc writes aliases as a map (`name: /path`) or, for aliases with
/// options, as a list of `{name, command, options}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Aliases {
    Map(BTreeMap<String, String>),
    List(Vec<ShpcAlias>),
}

impl Default for Aliases {
    fn default() -> Aliases {
        Aliases::Map(BTreeMap::new())
    }
}

#[derive(Debug, Deserialize)]
pub struct ShpcAlias {
    pub name: String,
    pub command: String,
    #[serde(default)]
    pub options: Option<String>,
}

pub fn parse_shpc(text: &str) -> Result<ShpcEntry, String> {
    serde_norway::from_str(text).map_err(|e| e.to_string())
}

/// Map shpc entries (`(path of container.yaml, text)`) to catalog entries.
pub fn import_shpc(files: &[(PathBuf, String)]) -> Imported {
    let mut out = Imported::default();
    for (file, text) in files {
        let origin = file.display().to_string();
        let entry = match parse_shpc(text) {
            Ok(e) => e,
            Err(e) => {
                out.notes.push(format!("{origin}: skipped: not a container.yaml ({e})"));
                continue;
            }
        };
        let Some(docker) = entry.docker.filter(|d| !d.trim().is_empty()) else {
            out.notes.push(format!("{origin}: skipped: no `docker:` image (other sources are not supported)"));
            continue;
        };
        // Pin the tag shpc calls latest, as `shpc install` does.
        let reference = match entry.latest.keys().next() {
            Some(tag) => format!("{docker}:{tag}"),
            None => docker.clone(),
        };
        if !entry.env.is_empty() {
            let keys: Vec<&str> = entry.env.keys().map(String::as_str).collect();
            out.notes.push(format!("{origin}: env {} is not set; the image's own environment applies", keys.join(", ")));
        }
        let aliases: Vec<(String, String, Option<String>)> = match entry.aliases {
            Aliases::Map(m) => m.into_iter().map(|(n, c)| (n, c, None)).collect(),
            Aliases::List(l) => l.into_iter().map(|a| (a.name, a.command, a.options)).collect(),
        };
        if aliases.is_empty() {
            out.notes.push(format!("{origin}: no aliases; nothing to map (odfs scan {reference} --add maps an image's PATH)"));
            continue;
        }
        let image = out.image_key(&reference, "host", None);
        for (name, command, options) in aliases {
            if options.is_some_and(|o| !o.trim().is_empty()) {
                out.notes.push(format!("{origin}: {name}: container options are not carried over"));
            }
            let mut words = command.split_whitespace().map(String::from);
            let Some(first) = words.next() else {
                out.notes.push(format!("{origin}: skipped {name}: empty command"));
                continue;
            };
            let cmd = OutCommand { image: image.clone(), path: Some(first), args: words.collect(), env: vec![] };
            out.add_command(&name, cmd, &origin);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWS: &str = "#!/usr/bin/env whalebrew\nenvironment:\n- AWS_ACCESS_KEY_ID\n- TEST_ENV=${X}\nimage: whalebrew/awscli\nvolumes:\n- ~/.aws:/.aws\nrequired_version: \">=0.1.0\"\n";

    #[test]
    fn whalebrew_packages_map_to_commands_with_notes_for_what_does_not_carry() {
        let files = vec![
            ("/usr/local/bin/aws".to_string(), AWS.to_string()),
            ("/usr/local/bin/jq".to_string(), "#!/usr/bin/env whalebrew\nimage: whalebrew/jq:1.6\nentrypoint: [\"/usr/bin/jq\", \"-C\"]\nnetworks: [host]\n".into()),
            ("/usr/local/bin/ls".to_string(), "\x7fELF not a package".into()),
        ];
        let out = import_whalebrew(&files, &HashMap::new());
        assert_eq!(out.command.len(), 2);
        let jq = &out.command["jq"];
        assert_eq!((jq.path.as_deref(), jq.args.as_slice()), (Some("/usr/bin/jq"), &["-C".to_string()][..]));
        assert_eq!(out.image[&jq.image].network, "host");
        assert_eq!(out.image[&jq.image].reference, "whalebrew/jq:1.6");
        let aws = &out.command["aws"];
        assert_eq!(aws.env, ["AWS_ACCESS_KEY_ID", "TEST_ENV"]);
        assert_eq!(aws.path, None);
        assert_eq!(out.image[&aws.image].network, "bridge");
        let notes = out.notes.join("\n");
        assert!(notes.contains("volume \"~/.aws:/.aws\""), "{notes}");
        assert!(notes.contains("TEST_ENV=… has a fixed value"), "{notes}");
        assert!(notes.contains("entry point is unknown"), "{notes}");
        out.to_toml("test").unwrap();
    }

    #[test]
    fn keep_container_user_never_becomes_a_root_entry() {
        // In the package file or as the image's label: the tool still runs
        // as its caller, and the note says how to grant root by hand.
        let files = vec![("/usr/local/bin/x".to_string(), "#!/usr/bin/env whalebrew\nimage: w/x\nkeep_container_user: true\n".to_string())];
        let label = HashMap::from([(
            "w/y".to_string(),
            ImageFacts { labels: HashMap::from([("io.whalebrew.config.keep_container_user".to_string(), "true".to_string())]), entrypoint: vec![] },
        )]);
        let files_y = vec![("y".to_string(), "#!/usr/bin/env whalebrew\nimage: w/y\n".to_string())];
        for out in [import_whalebrew(&files, &HashMap::new()), import_whalebrew(&files_y, &label)] {
            let text = out.to_toml("test").unwrap();
            assert!(!text.lines().any(|l| l.trim_start().starts_with("user")), "{text}");
            assert!(out.notes.join("\n").contains("keep_container_user is not carried over"), "{:?}", out.notes);
        }
    }

    #[test]
    fn whalebrew_labels_and_entrypoint_fill_in_from_the_image() {
        let files = vec![("wget".to_string(), "#!/usr/bin/env whalebrew\nimage: whalebrew/wget\n".to_string())];
        let facts = HashMap::from([(
            "whalebrew/wget".to_string(),
            ImageFacts {
                labels: HashMap::from([
                    ("io.whalebrew.config.environment".to_string(), "[\"HTTP_PROXY\"]".to_string()),
                    ("io.whalebrew.config.networks".to_string(), "[\"host\"]".to_string()),
                ]),
                entrypoint: vec!["/usr/bin/wget".into()],
            },
        )]);
        let out = import_whalebrew(&files, &facts);
        let w = &out.command["wget"];
        assert_eq!(w.path.as_deref(), Some("/usr/bin/wget"));
        assert_eq!(w.env, ["HTTP_PROXY"]);
        assert_eq!(out.image[&w.image].network, "host");
    }

    #[test]
    fn shpc_entries_map_aliases_in_both_forms_and_pin_the_latest_tag() {
        let samtools = "docker: quay.io/biocontainers/samtools\nlatest:\n  \"1.12\": sha256:5fd5\ntags:\n  \"1.12\": sha256:5fd5\naliases:\n  samtools: /usr/local/bin/samtools\n  tabix: /usr/local/bin/tabix\n";
        let python = "docker: python\nlatest:\n  \"3.11\": sha256:aa\naliases:\n- name: python-venv\n  command: python -m venv\n  options: --nv\nenv:\n  PYTHONUNBUFFERED: 1\n";
        let files = vec![
            (PathBuf::from("r/quay.io/biocontainers/samtools/container.yaml"), samtools.to_string()),
            (PathBuf::from("r/python/container.yaml"), python.to_string()),
            (PathBuf::from("r/oras/container.yaml"), "oras: ghcr.io/x/y\n".to_string()),
        ];
        let out = import_shpc(&files);
        assert_eq!(out.command.keys().collect::<Vec<_>>(), ["python-venv", "samtools", "tabix"]);
        assert_eq!(out.image[&out.command["samtools"].image].reference, "quay.io/biocontainers/samtools:1.12");
        let venv = &out.command["python-venv"];
        assert_eq!((venv.path.as_deref(), venv.args.as_slice()), (Some("python"), &["-m".to_string(), "venv".to_string()][..]));
        let notes = out.notes.join("\n");
        assert!(notes.contains("no `docker:` image"), "{notes}");
        assert!(notes.contains("options are not carried over"), "{notes}");
        assert!(notes.contains("env PYTHONUNBUFFERED"), "{notes}");
        let text = out.to_toml("r").unwrap();
        assert!(text.contains("[image.samtools]"), "{text}");
    }

    #[test]
    fn hostile_names_are_skipped_not_written() {
        let files = vec![(PathBuf::from("c.yaml"), "docker: x\naliases:\n  \"../evil\": /bin/sh\n  \"a b\": /bin/sh\n".to_string())];
        let out = import_shpc(&files);
        assert!(out.command.is_empty());
        assert_eq!(out.notes.len(), 2, "{:?}", out.notes);
    }
}
