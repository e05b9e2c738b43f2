//! `odfs status`: the engine, the containers and the idle budget, and the
//! images odfs manages with the engine's disk.

use super::Answer;
use crate::backend::ContainerBackend;
use crate::daemon::images::human_bytes;
use crate::daemon::Daemon;
use crate::protocol::{ImageUsage, Response};

/// How long `odfs status` shows the images as last read.
pub const USAGE_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) async fn status(&self) -> Answer {
        let containers = self.pool.status().await;
        let engine = self.pool.backend().engine_info().await;
        let idle = self.pool.budget_line(&containers);
        let (images, disk) = self.image_usage().await;
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let archive = self.snapshot().archive.as_ref().map(|a| a.health(now_s)).unwrap_or_default();
        Ok(Response::Status { engine, containers, idle, images, disk, archive })
    }

    /// The images odfs manages, newest use first, and the engine's disk in
    /// a line.
    pub(in crate::daemon) async fn image_usage(&self) -> (Vec<ImageUsage>, String) {
        // One reading at a time, reused for a while: many users' status
        // calls cost the engine one.
        let mut cached = self.image_usage.lock().await;
        if let Some((_, usage, disk)) = cached.as_ref().filter(|(at, ..)| at.elapsed() < USAGE_FOR) {
            return (usage.clone(), disk.clone());
        }
        let fresh = self.read_image_usage().await;
        *cached = Some((std::time::Instant::now(), fresh.0.clone(), fresh.1.clone()));
        fresh
    }

    async fn read_image_usage(&self) -> (Vec<ImageUsage>, String) {
        let (images, holders) = match self.candidates().await {
            Ok(x) => x,
            Err(e) => return (vec![], format!("images unknown: {e}")),
        };
        let mut out: Vec<ImageUsage> = images
            .iter()
            .map(|c| ImageUsage {
                references: c.names.clone(),
                id: c.id.clone(),
                size: c.size,
                last_used_ms: Some(c.last_used_ms).filter(|&t| t > 0),
                containers: holders.iter().filter(|h| h.image_id == c.id).count() as u32,
                needed: c.needed,
            })
            .collect();
        out.sort_by_key(|u| std::cmp::Reverse(u.last_used_ms));
        let total: u64 = images.iter().map(|c| c.size).sum();
        let mut disk = format!("{} in {} image(s) odfs manages", human_bytes(total), images.len());
        if let Some(b) = self.gc.budget {
            disk += &format!(" (budget {})", human_bytes(b));
        }
        if let Ok(Some((root, free, size))) = self.pool.backend().data_root_space().await {
            disk += &format!("; {root}: {} free of {}", human_bytes(free), human_bytes(size));
        }
        (out, disk)
    }
}
