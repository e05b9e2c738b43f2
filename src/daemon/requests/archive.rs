//! `odfs update --archive`: fetch the indexes of the archive's suites
//! again (the reload loop then serves them), and build again the images
//! of packages that have a newer version in them.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::{failed, require_root, Answer};
use crate::archive::{alternatives, fetch};
use crate::backend::{ContainerBackend, LABEL_MOUNT};
use crate::catalog::archive::{self, Archive};
use crate::daemon::call::Caller;
use crate::daemon::Daemon;
use crate::protocol::Response;

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) async fn update_archive(&self, caller: &Caller, client: &UnixStream) -> Answer {
        require_root(caller, "update --archive")?;
        let Some(served) = self.snapshot().archive.clone() else {
            return Err(failed("update --archive: the catalog has no [archive.debian] section"));
        };
        let dir = archive::dir(&self.state_dir);
        let labels = HashMap::from([(LABEL_MOUNT.to_string(), self.pool.mount_id().to_string())]);
        let (mut lines, mut failed_any) = (Vec::new(), false);
        for suite in &served.spec.suites {
            let source = fetch::Source { mirror: served.spec.mirror.clone(), ..fetch::Source::new(suite) };
            let started = Instant::now();
            let fetched = fetch::fetch(self.pool.backend(), &source, &alternatives::table(), labels.clone()).await;
            let saved = match fetched {
                Ok(f) => {
                    let index = f.index;
                    let (commands, packages, date) = (index.len(), index.packages().len(), index.meta.release_date.clone());
                    let dir = dir.clone();
                    match tokio::task::spawn_blocking(move || index.save(&dir)).await {
                        Ok(Ok(_)) => Ok(format!("{commands} commands from {packages} packages (Release of {date}), in {:.1} s", started.elapsed().as_secs_f64())),
                        Ok(Err(e)) => Err(format!("cannot store the index: {e}")),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e),
            };
            failed_any |= saved.is_err();
            lines.push(format!("index of {suite}: {}", saved.unwrap_or_else(|e| format!("not refreshed: {e}"))));
        }
        // The images of packages the new indexes have in another version.
        let fresh = Archive::load(served.spec.clone(), &self.state_dir);
        let here = self.pool.backend().images().await.map_err(|e| failed(format!("update --archive: cannot list images: {e}")))?;
        let mut stale: Vec<(String, String, String)> = Vec::new();
        for tag in here.iter().flat_map(|i| &i.tags) {
            let Some((suite, package, version)) = archive::parse_reference(tag) else { continue };
            let Some(index) = fresh.indexes.suite(suite) else { continue };
            let Some(now) = index.packages().iter().find(|p| archive::encode(&p.name) == package) else { continue };
            if archive::encode(&now.version) != version && !stale.iter().any(|s| s.0 == suite && s.1 == now.name) {
                stale.push((suite.to_string(), now.name.clone(), version.to_string()));
            }
        }
        for (suite, package, was) in stale {
            let Some(image) = fresh.package_image(&suite, &package) else { continue };
            let version = image.package.as_ref().map_or(String::new(), |p| p.version.clone());
            let line = match self.with_progress(client, &image, self.pool.pull(&image)).await {
                Ok(_) => format!("{package} ({suite}): {was} → {version}, built"),
                Err(e) => {
                    failed_any = true;
                    format!("{package} ({suite}): {was} → {version}: {e}")
                }
            };
            lines.push(line);
        }
        if failed_any {
            Err(failed(lines.join("\n")))
        } else {
            Ok(Response::Done(lines.join("\n")))
        }
    }
}
