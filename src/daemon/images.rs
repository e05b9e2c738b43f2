//! The images odfs manages, as gc weighs them ([`Candidate`]: the `odfs
//! status` lines read them too), and their collection: remove what nothing
//! uses, least recently used first, within an age, a budget and the disk's
//! free space, for `odfs gc` and the daemon's own runs. Which images to
//! remove is [`plan_gc`], pure.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::pool::short_id;
use super::Daemon;
use crate::backend::outbound::Reference;
use crate::backend::{ContainerBackend, ImageInfo, LABEL_RECIPE};

/// Leftover containers of odfs (never started, or exited) younger than this
/// may belong to a scan under way: they stay.
const LEFTOVER_AGE_S: i64 = 600;

/// One local image odfs manages, as gc weighs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub names: Vec<String>,
    pub size: u64,
    /// When a tool last ran in it, or it came here (Unix ms).
    pub last_used_ms: i64,
    /// A container holds it.
    pub in_use: bool,
    /// A catalog entry's reference names it.
    pub needed: bool,
    /// It can be had again: it came from a registry, or from a recipe, or
    /// no name is left on it. A local build with a name and no recipe is
    /// someone's only copy, never removed.
    pub refetchable: bool,
    /// Names on it that neither the catalog nor odfs's history gave it:
    /// someone else's too, never removed.
    pub other_names: Vec<String>,
}

/// What gc removes and why, what it keeps and why, and what it could not
/// get under.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GcPlan {
    pub remove: Vec<(String, String)>,
    /// Every other image, with the first reason it stays.
    pub keep: Vec<(String, String)>,
    /// Said when the budget or the free space is still not met.
    pub short: Option<String>,
}

/// The limits of one gc run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_age_s: u64,
    pub budget: Option<u64>,
    /// (free bytes, bytes that should be free) of the engine's data root.
    pub disk: Option<(u64, u64)>,
}

pub fn human_bytes(b: u64) -> String {
    let (v, unit) = match b {
        b if b >= 1 << 30 => (b as f64 / (1u64 << 30) as f64, "GiB"),
        b if b >= 1 << 20 => (b as f64 / (1u64 << 20) as f64, "MiB"),
        b => (b as f64 / 1024.0, "KiB"),
    };
    format!("{v:.1} {unit}")
}

fn ago(now_ms: i64, then_ms: i64) -> String {
    format!("{} ago", age(((now_ms - then_ms).max(0) / 1000) as u64))
}

fn age(s: u64) -> String {
    match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}

/// Which images go: every one unused for longer than the age (an image in
/// use never goes); then, while the managed images hold more than the
/// budget or the disk has less free than it should, the least recently
/// used of those no catalog entry needs.
pub fn plan_gc(images: &[Candidate], now_ms: i64, limits: Limits) -> GcPlan {
    let mut plan = GcPlan::default();
    let mut gone: HashSet<&str> = HashSet::new();
    let age_ms = (limits.max_age_s as i64).saturating_mul(1000);
    let removable = |c: &&Candidate| !c.in_use && c.refetchable && c.other_names.is_empty();
    for c in images.iter().filter(removable).filter(|c| now_ms - c.last_used_ms >= age_ms) {
        plan.remove.push((c.id.clone(), format!("unused since {}", ago(now_ms, c.last_used_ms))));
        gone.insert(&c.id);
    }
    let held = |gone: &HashSet<&str>| images.iter().filter(|c| !gone.contains(c.id.as_str())).map(|c| c.size).sum::<u64>();
    let freed = |gone: &HashSet<&str>| images.iter().filter(|c| gone.contains(c.id.as_str())).map(|c| c.size).sum::<u64>();
    let over = |gone: &HashSet<&str>| limits.budget.is_some_and(|b| held(gone) > b);
    let short = |gone: &HashSet<&str>| limits.disk.is_some_and(|(free, want)| free + freed(gone) < want);
    let mut lru: Vec<&Candidate> = images.iter().filter(removable).filter(|c| !c.needed && !gone.contains(c.id.as_str())).collect();
    lru.sort_by_key(|c| c.last_used_ms);
    for c in lru {
        if !over(&gone) && !short(&gone) {
            break;
        }
        let why = if over(&gone) { "over the image budget" } else { "the disk is nearly full" };
        plan.remove.push((c.id.clone(), format!("{why}, least recently used (last {})", ago(now_ms, c.last_used_ms))));
        gone.insert(&c.id);
    }
    for c in images.iter().filter(|c| !gone.contains(c.id.as_str())) {
        let why = if c.in_use {
            "in use by a container".to_string()
        } else if !c.other_names.is_empty() {
            format!("also named {}, a name odfs did not give it", c.other_names.join(", "))
        } else if !c.refetchable {
            "cannot be had again: a local build with no recipe in the catalog".to_string()
        } else if c.needed {
            format!("needed by the catalog, last used {}", ago(now_ms, c.last_used_ms))
        } else {
            format!("last used {}, within the age of {}", ago(now_ms, c.last_used_ms), age(limits.max_age_s))
        };
        plan.keep.push((c.id.clone(), why));
    }
    let rest = "the rest are in use, needed by the catalog and used within image_max_age, someone else's too, or local builds that could not be had again";
    if let (true, Some(b)) = (over(&gone), limits.budget) {
        plan.short = Some(format!("still {} over the image budget of {}: {rest}", human_bytes(held(&gone) - b), human_bytes(b)));
    } else if let (true, Some((free, want))) = (short(&gone), limits.disk) {
        plan.short = Some(format!("the engine's disk still has only {} free of the {} it should keep: {rest}", human_bytes(free + freed(&gone)), human_bytes(want)));
    }
    plan
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl<B: ContainerBackend> Daemon<B> {
    /// Every image odfs manages that is here, as gc weighs it.
    pub(super) async fn candidates(&self) -> Result<(Vec<Candidate>, Vec<crate::backend::Holder>), String> {
        let backend = self.pool.backend();
        let uses: HashMap<String, crate::catalog::ImageUse> =
            self.store.image_uses().map_err(|e| format!("cannot read the history: {e}"))?.into_iter().map(|u| (u.id.clone(), u)).collect();
        let images = backend.images().await.map_err(|e| e.to_string())?;
        let holders = backend.holders().await.map_err(|e| e.to_string())?;
        // The images the catalog names, each with the reference that
        // resolved to it.
        let (mut needed, mut rebuildable) = (HashMap::new(), HashSet::new());
        for image in self.snapshot().images.values() {
            if let Ok(Some(i)) = backend.image_info(&image.reference).await {
                if image.build.is_some() {
                    rebuildable.insert(i.id.clone());
                }
                needed.insert(i.id, image.reference.clone());
            }
        }
        let snapshot = self.snapshot();
        // The catalog's names, and those its images are pulled under from a
        // mirror (a name the engine failed to drop after the pull).
        let mirrored: Vec<String> = snapshot.images.values().flat_map(|i| self.outbound.mirrored(&i.reference)).collect();
        let ours: Vec<&str> = snapshot.images.values().map(|i| i.reference.as_str()).chain(mirrored.iter().map(String::as_str)).collect();
        // Containers made ahead hold their image only until gc wants it.
        let in_use: HashSet<String> = holders
            .iter()
            .filter(|h| !(h.ahead && !h.running))
            .map(|h| h.image_id.clone())
            .chain(self.pool.images_in_use().iter().map(|i| i.to_string()))
            .collect();
        let mut out = Vec::new();
        for i in images {
            // Only what this daemon fetched or ran, and what its catalog
            // names: never another mount's or a user's own images.
            let managed = uses.contains_key(&i.id) || needed.contains_key(&i.id);
            if !managed {
                continue;
            }
            // An image the catalog names and the history does not know yet
            // (a daemon of an older version ran it) ages from now on.
            // Its name is the catalog's reference, never a tag it carries
            // (which may be someone else's).
            let Some(u) = uses.get(&i.id) else {
                self.store.image_seen(&i.id, needed.get(&i.id).map_or("", String::as_str));
                let refetchable = !i.digests.is_empty() || i.labels.contains_key(LABEL_RECIPE) || rebuildable.contains(&i.id);
                let other_names = others(&i.tags, &ours);
                out.push(Candidate { names: names(&i), in_use: in_use.contains(&i.id), needed: true, size: i.size, last_used_ms: now_ms(), refetchable, other_names, id: i.id });
                continue;
            };
            let tagged = backend.image_info(&i.id).await.ok().flatten().and_then(|x| x.tagged_ms);
            let last = [u.last_ms, Some(u.first_ms), tagged].into_iter().flatten().max().unwrap_or(0);
            let refetchable = !i.digests.is_empty() || i.labels.contains_key(LABEL_RECIPE) || rebuildable.contains(&i.id) || i.tags.is_empty();
            let other_names = others(&i.tags, &ours.iter().copied().chain(u.reference.lines()).collect::<Vec<_>>());
            out.push(Candidate { names: names(&i), in_use: in_use.contains(&i.id), needed: needed.contains_key(&i.id), size: i.size, last_used_ms: last, refetchable, other_names, id: i.id });
        }
        Ok((out, holders))
    }

    /// Leftover containers, and the images [`plan_gc`] picks, with the
    /// build cache unused for the age: for `odfs gc` and the daemon's own
    /// runs.
    pub(super) async fn collect(&self, dry_run: bool, max_age_s: Option<u64>, budget: Option<u64>) -> Result<String, String> {
        let backend = self.pool.backend();
        let mut lines = Vec::new();
        let verb = if dry_run { "would remove" } else { "removed" };
        // Containers odfs made that nothing runs in (a crash's scratch).
        let (_, holders) = self.candidates().await?;
        let now = now_ms();
        let mount = self.pool.mount_id();
        for h in holders.iter().filter(|h| h.mount == mount && !h.running && !h.ahead && now / 1000 - h.created_s >= LEFTOVER_AGE_S) {
            match if dry_run { Ok(()) } else { backend.remove(&h.id).await } {
                Ok(()) => lines.push(format!("{verb} leftover container {}", short_id(&h.id))),
                Err(e) => lines.push(format!("kept leftover container {}: {e}", short_id(&h.id))),
            }
        }
        let (images, _) = self.candidates().await?;
        let space = backend.data_root_space().await.map_err(|e| e.to_string())?;
        let limits = Limits {
            max_age_s: max_age_s.unwrap_or(self.gc.max_age_s),
            budget: budget.or(self.gc.budget),
            disk: space.as_ref().map(|(_, free, total)| (*free, self.gc.min_free.bytes(*total))),
        };
        let plan = plan_gc(&images, now, limits);
        let mut freed = 0;
        let named = |id: &str| {
            let c = images.iter().find(|c| c.id == id).expect("planned from these");
            let name = if c.names.is_empty() { "untagged".to_string() } else { c.names.join(", ") };
            (c.size, format!("{} ({name}, {})", short_id(id), human_bytes(c.size)))
        };
        for (id, why) in &plan.remove {
            let (size, image) = named(id);
            if !dry_run {
                self.pool.unmake(id).await;
                if let Err(e) = backend.remove_image(id).await {
                    // In use since it was listed: it stays.
                    lines.push(format!("kept image {image}: {e}"));
                    continue;
                }
                freed += size;
            }
            lines.push(format!("{verb} image {image}: {why}"));
        }
        for (id, why) in &plan.keep {
            lines.push(format!("kept image {}: {why}", named(id).1));
        }
        if !dry_run && !plan.remove.is_empty() {
            // The build cache unused for as long goes with them.
            freed += backend.prune_build_cache(limits.max_age_s).await.unwrap_or(0);
        }
        let held: u64 = images.iter().filter(|c| !plan.remove.iter().any(|(id, _)| id == &c.id)).map(|c| c.size).sum();
        let mut summary = format!("{} image(s) odfs manages hold {}", images.len() - plan.remove.len(), human_bytes(held));
        if let Some(b) = limits.budget {
            summary += &format!(" of a budget of {}", human_bytes(b));
        }
        if let Some((root, free, _)) = &space {
            summary += &format!("; {} free in {root}", human_bytes(free + freed));
        }
        lines.push(summary);
        lines.extend(plan.short);
        Ok(lines.join("\n"))
    }
}

/// The daemon's own gc, every `[gc] every` (none when 0): the first run an
/// interval after start, so a start never waits on the engine for it.
pub(super) async fn keep_collecting<B: ContainerBackend>(daemon: Arc<Daemon<B>>, stop: tokio_util::sync::CancellationToken) {
    if daemon.gc.every_s == 0 {
        return;
    }
    let every = std::time::Duration::from_secs(daemon.gc.every_s);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        match daemon.collect(false, None, None).await {
            Ok(text) => {
                for line in text.lines().filter(|l| l.starts_with("removed") || l.starts_with("still") || l.contains("still has only")) {
                    tracing::info!("gc: {line}");
                }
            }
            Err(e) => tracing::warn!("gc: {e}"),
        }
    }
}

/// The names among `tags` that none of `ours` (references as the catalog
/// or the history spell them) gives. Podman lists a short name it made
/// here as `localhost/NAME`.
fn others(tags: &[String], ours: &[&str]) -> Vec<String> {
    let ours_too = |t: &str| ours.iter().any(|o| Reference::parse(o).same_name(&Reference::parse(t)));
    tags.iter().filter(|t| !ours_too(t) && !t.strip_prefix("localhost/").is_some_and(ours_too)).cloned().collect()
}

fn names(i: &ImageInfo) -> Vec<String> {
    if i.tags.is_empty() {
        i.digests.clone()
    } else {
        i.tags.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn image(id: &str, size: u64, days_ago: i64, in_use: bool, needed: bool) -> Candidate {
        Candidate { id: id.into(), names: vec![], size, last_used_ms: 100 * DAY - days_ago * DAY, in_use, needed, refetchable: true, other_names: vec![] }
    }

    fn removed(p: &GcPlan) -> Vec<&str> {
        p.remove.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn images_unused_past_the_age_go_unless_in_use() {
        let images = [image("old", 10, 40, false, true), image("busy", 10, 40, true, true), image("fresh", 10, 3, false, true)];
        let p = plan_gc(&images, 100 * DAY, Limits { max_age_s: 30 * 86_400, budget: None, disk: None });
        assert_eq!(removed(&p), ["old"]);
        assert!(p.remove[0].1.contains("40 days ago"), "{:?}", p.remove);
        // An age of zero takes every unused one, but never a local build
        // that could not be had again.
        let p = plan_gc(&images, 100 * DAY, Limits { max_age_s: 0, budget: None, disk: None });
        assert_eq!(removed(&p), ["old", "fresh"]);
        let only_copy = [Candidate { refetchable: false, ..image("mine", 10, 90, false, false) }];
        assert!(plan_gc(&only_copy, 100 * DAY, Limits { max_age_s: 0, budget: Some(0), disk: Some((0, 100)) }).remove.is_empty());
    }

    #[test]
    fn the_budget_takes_the_least_recently_used_of_those_the_catalog_does_not_need() {
        let images = [
            image("needed", 50, 1, false, true),
            image("older", 30, 9, false, false),
            image("newer", 30, 2, false, false),
            image("busy", 30, 20, true, false),
        ];
        let limits = Limits { max_age_s: 30 * 86_400, budget: Some(120), disk: None };
        let p = plan_gc(&images, 100 * DAY, limits);
        assert_eq!(removed(&p), ["older"], "140 held, 30 over: one image is enough");
        assert!(p.short.is_none());
        // A budget nothing can meet says so.
        let p = plan_gc(&images, 100 * DAY, Limits { budget: Some(10), ..limits });
        assert_eq!(removed(&p), ["older", "newer"]);
        assert!(p.short.as_deref().unwrap().contains("over the image budget"), "{:?}", p.short);
    }

    #[test]
    fn a_nearly_full_disk_frees_space_even_under_budget() {
        let images = [image("a", 40, 5, false, false), image("b", 40, 4, false, false), image("c", 40, 1, false, true)];
        // 50 free of the 100 it should keep: two images go.
        let p = plan_gc(&images, 100 * DAY, Limits { max_age_s: 30 * 86_400, budget: Some(1000), disk: Some((50, 100)) });
        assert_eq!(removed(&p), ["a", "b"]);
        assert!(p.remove[0].1.contains("nearly full"));
        let p = plan_gc(&images, 100 * DAY, Limits { max_age_s: 30 * 86_400, budget: None, disk: Some((500, 100)) });
        assert!(p.remove.is_empty() && p.short.is_none());
    }

    #[test]
    fn every_image_kept_says_why_and_one_someone_else_named_too_is_never_removed() {
        let images = [
            image("busy", 10, 90, true, true),
            Candidate { other_names: vec!["mine:1".into()], ..image("shared", 10, 90, false, false) },
            Candidate { refetchable: false, ..image("only", 10, 90, false, false) },
            image("needed", 10, 2, false, true),
            image("recent", 10, 2, false, false),
            image("old", 10, 90, false, false),
        ];
        let p = plan_gc(&images, 100 * DAY, Limits { max_age_s: 30 * 86_400, budget: Some(0), disk: Some((0, 100)) });
        assert_eq!(removed(&p), ["old", "recent"]);
        let kept: Vec<(&str, &str)> = p.keep.iter().map(|(id, why)| (id.as_str(), why.as_str())).collect();
        assert_eq!(
            kept,
            [
                ("busy", "in use by a container"),
                ("shared", "also named mine:1, a name odfs did not give it"),
                ("only", "cannot be had again: a local build with no recipe in the catalog"),
                ("needed", "needed by the catalog, last used 2 days ago"),
            ]
        );
        let p = plan_gc(&images, 100 * DAY, Limits { max_age_s: 30 * 86_400, budget: None, disk: None });
        assert!(p.keep.iter().any(|(id, why)| id == "recent" && why == "last used 2 days ago, within the age of 30 days"), "{:?}", p.keep);
    }

    #[test]
    fn a_name_is_odfs_s_however_the_catalog_spells_it() {
        let ours = ["debian", "docker.io/library/jq:1.7", "127.0.0.1:5000/t/x", "odfs/text"];
        let tags = ["debian:latest", "jq:1.7", "127.0.0.1:5000/t/x:latest", "localhost/odfs/text:latest", "library/debian:12", "127.0.0.1:5001/t/x:latest", "mine:1"];
        assert_eq!(others(&tags.map(String::from), &ours), ["library/debian:12", "127.0.0.1:5001/t/x:latest", "mine:1"]);
    }
}
