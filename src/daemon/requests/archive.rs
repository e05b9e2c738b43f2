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
    /// Fetch the index of one suite and store it (the reload loop serves
    /// it): what it holds, in a line.
    pub(in crate::daemon) async fn refresh_index(&self, served: &Archive, suite: &str) -> Result<String, String> {
        // One refresh at a time (`odfs update --archive` and the daily one
        // write the same files).
        let _only = self.refreshing.lock().await;
        let source = served.source(suite);
        let labels = HashMap::from([(LABEL_MOUNT.to_string(), self.pool.mount_id().to_string())]);
        let started = Instant::now();
        let index = fetch::fetch(self.pool.backend(), &source, &alternatives::table(), labels).await?.index;
        let (commands, packages, date) = (index.len(), index.packages().len(), index.meta.release_date.clone());
        let dir = archive::dir(&self.state_dir);
        tokio::task::spawn_blocking(move || index.save(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot store the index: {e}"))?;
        // The files read and parsed were some 25 MB: give the heap they
        // took back to the system, which glibc does not do by itself.
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) };
        let took = started.elapsed().as_secs_f64();
        tracing::info!(suite, commands, packages, took_s = took, "archive index refreshed");
        Ok(format!("{commands} commands from {packages} packages (Release of {date}), in {took:.1} s"))
    }

    /// A package's image was just built: the names on its PATH that the
    /// index lacks and its base does not have, and that are links
    /// update-alternatives made to a command of this very package (not of
    /// a dependency: `java` is no name of `ant`'s), join the index, kept in
    /// `SUITE.found` beside it (the reload poll serves them). The table of
    /// alternatives knows the common ones; this finds the rest.
    pub(in crate::daemon) async fn learn_commands(&self, image: &crate::catalog::ImageSpec) {
        let (Some(pkg), Some(served)) = (&image.package, self.snapshot().archive.clone()) else { return };
        let Some(index) = served.indexes.suite(&pkg.suite) else { return };
        let mount = self.pool.mount_id().to_string();
        let listed = (self.indexed_executables(&image.reference).await, self.indexed_executables(&pkg.base).await);
        let links = self.pool.backend().image_alternatives(&image.reference, &mount).await;
        let ((Ok(mine), Ok(base)), Ok(links)) = (listed, links) else {
            tracing::debug!(image = image.reference, "cannot list the image's commands");
            return;
        };
        let name = |p: &String| p.rsplit('/').next().unwrap_or_default().to_string();
        let base: std::collections::HashSet<String> = base.iter().map(name).collect();
        let ships = |target: &str| {
            let command = target.rsplit('/').next().unwrap_or_default();
            index.resolve(command).is_some_and(|r| r.package.name == pkg.name || r.others.iter().any(|o| o.name == pkg.name))
        };
        let new: Vec<String> = mine
            .iter()
            .map(name)
            .filter(|n| crate::catalog::validate_name(n).is_ok() && !n.contains('@') && index.get(n).is_none() && !base.contains(n))
            .filter(|n| links.get(n).is_some_and(|t| ships(t)))
            .collect();
        if new.is_empty() {
            tracing::debug!(package = pkg.name, "no command on the package's PATH that the index lacks");
            return;
        }
        tracing::info!(package = pkg.name, commands = ?new, "commands the package's install made join the index");
        let file = archive::found_file(&archive::dir(&self.state_dir), &pkg.suite);
        let lines: String = new.iter().map(|n| format!("{n} {}\n", pkg.name)).collect();
        let written = std::fs::OpenOptions::new().create(true).append(true).open(&file).and_then(|mut f| std::io::Write::write_all(&mut f, lines.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), "cannot keep the commands found: {e}");
        }
    }

    /// The indexes older than a day (or missing), fetched again; a suite
    /// that fails is tried at the next round.
    pub(in crate::daemon) async fn refresh_stale_indexes(&self) {
        let Some(served) = self.snapshot().archive.clone() else { return };
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        for suite in &served.spec.suites {
            let fetched = served.indexes.suite(suite).map_or(0, |i| i.meta.fetched_s);
            if now_s.saturating_sub(fetched) >= archive::REFRESH_AFTER_S {
                if let Err(e) = self.refresh_index(&served, suite).await {
                    tracing::warn!(suite, "archive index not refreshed: {e}");
                }
            }
        }
    }

    pub(in crate::daemon) async fn update_archive(&self, caller: &Caller, client: &UnixStream) -> Answer {
        require_root(caller, "update --archive")?;
        let Some(served) = self.snapshot().archive.clone() else {
            return Err(failed("update --archive: the catalog has no [archive.debian] section"));
        };
        let (mut lines, mut failed_any) = (Vec::new(), false);
        for suite in &served.spec.suites {
            let refreshed = self.refresh_index(&served, suite).await;
            failed_any |= refreshed.is_err();
            lines.push(format!("index of {suite}: {}", refreshed.unwrap_or_else(|e| format!("not refreshed: {e}"))));
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

/// The archive's indexes kept fresh: a look every hour (the first ten
/// minutes after start, so a start never waits on the network), each
/// index older than a day fetched again.
pub(in crate::daemon) async fn keep_indexes<B: ContainerBackend>(daemon: std::sync::Arc<Daemon<B>>, stop: tokio_util::sync::CancellationToken) {
    let mut wait = std::time::Duration::from_secs(600);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = daemon.refresh_stale_indexes() => {}
        }
        wait = std::time::Duration::from_secs(3600);
    }
}
