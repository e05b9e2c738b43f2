//! What the daemon knows of the host and of images, asked once and kept:
//! the host's top-level directories (read again only when `/` changes),
//! and per image id what it fills of them and its account files.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::backend::{BackendError, ContainerBackend, ImageFacts};
use crate::catalog::ImageSpec;
use crate::view::ViewSettings;

#[derive(Default)]
pub struct Facts {
    /// The host's top-level directories, and the mtime of `/` they were read at.
    host_top: Mutex<(Option<SystemTime>, Arc<Vec<String>>)>,
    /// [`ImageFacts`] by image reference.
    images: Mutex<HashMap<String, Arc<ImageFacts>>>,
}

impl Facts {
    /// The host's top-level directories, read again only when `/` changed.
    pub fn host_top(&self) -> Arc<Vec<String>> {
        let mtime = std::fs::metadata("/").and_then(|m| m.modified()).ok();
        let mut cached = self.host_top.lock().unwrap();
        if cached.0.is_none() || cached.0 != mtime {
            *cached = (mtime, Arc::new(crate::view::host_top_level(Path::new("/"))));
        }
        cached.1.clone()
    }

    /// What an image fills of the host's top-level directories, and its
    /// account files: asked once per image id (a never-started container
    /// is read), then kept. `None` when the image is not here.
    pub async fn image<B: ContainerBackend>(
        &self,
        backend: &B,
        image: &ImageSpec,
        host_top: &[String],
        view: &ViewSettings,
        mount_id: &str,
    ) -> Result<Option<Arc<ImageFacts>>, BackendError> {
        let asked = crate::view::candidates(host_top, view);
        let Some(id) = backend.image_id(&image.reference).await? else { return Ok(None) };
        if let Some(f) = self.images.lock().unwrap().get(&image.reference) {
            if f.id == id && asked.iter().all(|d| f.asked.contains(d)) {
                return Ok(Some(f.clone()));
            }
        }
        let facts = Arc::new(ImageFacts { id, ..backend.image_facts(&image.reference, &asked, mount_id).await? });
        self.images.lock().unwrap().insert(image.reference.clone(), facts.clone());
        Ok(Some(facts))
    }
}
