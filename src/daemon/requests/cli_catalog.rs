//! The one catalog file the CLI manages (`odfs add`, `odfs rm`, `odfs scan
//! --add`), in the last catalog directory, so that live reload serves its
//! changes like any edit.

use std::path::{Path, PathBuf};

use super::failed;
use crate::backend::ContainerBackend;
use crate::daemon::Daemon;
use crate::protocol::Failure;

/// Name of the file `odfs add` and `odfs rm` manage.
pub const CLI_CATALOG: &str = "zz-odfs-cli.toml";

/// Write the CLI catalog by rename, so the live reload never reads half of it.
fn write_cli_catalog(path: &Path, doc: &toml::Table) -> Result<(), Failure> {
    let text = format!("# Managed by `odfs add`, `odfs rm` and `odfs scan --add`.\n{}", toml::to_string(doc).unwrap_or_default());
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))
}

/// An image name for a reference: `localhost:5000/tools/jq:1.7` → `cli-jq-1-7`.
fn image_name_for(reference: &str) -> String {
    let tail = reference.rsplit('/').next().unwrap_or(reference);
    let mut name: String = tail.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    name.truncate(60);
    format!("cli-{}", name.trim_matches('-'))
}

/// Take `command` out of the CLI catalog file, by atomic rename.
pub(super) fn remove_entry(file: &Path, command: &str) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut doc: toml::Table = toml::from_str(&text).unwrap_or_default();
    if let Some(t) = doc.get_mut("command").and_then(|c| c.as_table_mut()) {
        t.remove(command);
    }
    write_cli_catalog(file, &doc)
}

impl<B: ContainerBackend> Daemon<B> {
    pub(super) fn cli_file(&self) -> Result<PathBuf, Failure> {
        self.cli_catalog
            .clone()
            .ok_or_else(|| failed("this mount has no catalog directory to record changes in (start it with --catalog DIR)"))
    }

    /// Whether an entry defined at `origin` is the CLI's to change: the CLI
    /// never overrides nor removes what an edited catalog file defines.
    pub(super) fn cli_defined(&self, origin: &str) -> bool {
        self.cli_catalog.as_ref().is_some_and(|f| origin.starts_with(&f.display().to_string()))
    }

    /// Record commands of one image in the CLI catalog file, by atomic rename.
    pub(super) fn add_entries(&self, reference: &str, entries: &[(String, Option<String>)]) -> Result<PathBuf, Failure> {
        if reference.trim().is_empty() || reference.contains(char::is_whitespace) {
            return Err(failed(format!("{reference:?} is not an image reference")));
        }
        let file = self.cli_file()?;
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut doc: toml::Table =
            toml::from_str(&text).map_err(|e| failed(format!("{} is not valid TOML ({e}); fix or remove it", file.display())))?;
        let image = image_name_for(reference);
        if let Some(t) = doc.entry("image").or_insert_with(|| toml::Value::Table(Default::default())).as_table_mut() {
            let mut img = toml::Table::new();
            img.insert("ref".into(), reference.into());
            t.entry(image.clone()).or_insert(toml::Value::Table(img));
        }
        if let Some(t) = doc.entry("command").or_insert_with(|| toml::Value::Table(Default::default())).as_table_mut() {
            for (command, path) in entries {
                let mut cmd = toml::Table::new();
                cmd.insert("image".into(), image.clone().into());
                if let Some(p) = path {
                    cmd.insert("path".into(), p.clone().into());
                }
                t.insert(command.clone(), toml::Value::Table(cmd));
            }
        }
        write_cli_catalog(&file, &doc)?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::image_name_for;

    #[test]
    fn image_names_for_references_are_catalog_safe() {
        assert_eq!(image_name_for("localhost:5000/tools/jq:1.7"), "cli-jq-1-7");
        assert_eq!(image_name_for("odfs-test/busybox:latest"), "cli-busybox-latest");
        crate::catalog::validate_name(&image_name_for("a/b/c@sha256:abc")).unwrap();
    }
}
