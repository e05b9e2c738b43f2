//! `odfs import`: whalebrew and singularity-hpc packages as a catalog file.

use std::path::PathBuf;

use anyhow::Context;

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ImportFormat {
    Whalebrew,
    Shpc,
}

/// `odfs import`: read the packages, map them, write a catalog file that is
/// checked to load. Notes on what did not carry over go to stderr.
pub(crate) fn import(format: ImportFormat, dir: &std::path::Path, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    use odfs::catalog::import;
    let files: Vec<PathBuf> = match format {
        ImportFormat::Whalebrew => std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.is_file())
            .collect(),
        ImportFormat::Shpc => walk(dir, "container.yaml").with_context(|| format!("cannot read {}", dir.display()))?,
    };
    let mut texts = Vec::new();
    for f in files {
        // Binaries and other non-text files are simply not packages.
        if let Ok(text) = std::fs::read_to_string(&f) {
            texts.push((f, text));
        }
    }
    let imported = match format {
        ImportFormat::Whalebrew => {
            let named: Vec<(String, String)> = texts.iter().map(|(p, t)| (p.display().to_string(), t.clone())).collect();
            let mut facts = std::collections::HashMap::new();
            let images: Vec<String> = named
                .iter()
                .filter(|(_, t)| import::is_whalebrew_package(t))
                .filter_map(|(_, t)| import::parse_whalebrew(t).ok().map(|p| p.image))
                .collect();
            if !images.is_empty() {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let docker = odfs::backend::docker::Docker::with_engine(odfs::config::engine(None, None).map_err(|e| anyhow::anyhow!(e))?);
                for image in images {
                    match rt.block_on(docker.image_facts(&image)) {
                        Ok(Some(f)) => {
                            facts.insert(image, f);
                        }
                        Ok(None) => {}
                        Err(e) => eprintln!("odfs: import: cannot read labels of {image}: {e}"),
                    }
                }
            }
            import::import_whalebrew(&named, &facts)
        }
        ImportFormat::Shpc => import::import_shpc(&texts),
    };
    if imported.command.is_empty() {
        for n in &imported.notes {
            eprintln!("odfs: import: {n}");
        }
        anyhow::bail!("no packages found in {} (nothing written)", dir.display());
    }
    let text = imported.to_toml(&dir.display().to_string()).map_err(|e| anyhow::anyhow!("the imported catalog does not load: {e}"))?;
    match output {
        Some(path) => std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    for n in &imported.notes {
        eprintln!("odfs: import: note: {n}");
    }
    eprintln!("odfs: import: {} command(s) in {} image(s)", imported.command.len(), imported.image.len());
    Ok(())
}

/// Every file named `name` below `dir`, in a stable order.
fn walk(dir: &std::path::Path, name: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.file_name() == name {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}
