//! Looks at the caller's files (the pin files above its working directory,
//! the paths its call names, resolved through the host's symlinks), which
//! may sit on a file system that never answers (a hard NFS mount, a FUSE
//! server that stopped): each runs on a blocking thread that holds one of
//! its user's few places and is waited for a bounded time. Past it the
//! caller is told; the thread, wherever it hangs, keeps only that user's
//! place, so a hung file system costs its user and nobody else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::call::CallError;

/// A user's looks and local starts at once (whoever the tool runs as): each
/// holds one of the daemon's blocking threads.
pub const PLACES_PER_UID: usize = 16;

/// How long a call waits for a place of its user.
const WAIT_FOR_PLACE: Duration = Duration::from_secs(30);

/// How long one look may take.
pub const LOOK_LIMIT: Duration = Duration::from_secs(10);

/// A place of a user's, held (through the clones of the `Arc`) by every
/// thread working for one call.
pub type Place = Arc<OwnedSemaphorePermit>;

/// A place for a call of `uid`'s, waiting up to [`WAIT_FOR_PLACE`].
pub async fn place(uid: u32) -> Result<Place, CallError> {
    place_within(uid, WAIT_FOR_PLACE).await
}

async fn place_within(uid: u32, wait: Duration) -> Result<Place, CallError> {
    static PLACES: OnceLock<Mutex<HashMap<u32, Arc<Semaphore>>>> = OnceLock::new();
    let places = PLACES.get_or_init(Default::default).lock().unwrap().entry(uid).or_insert_with(|| Arc::new(Semaphore::new(PLACES_PER_UID))).clone();
    match tokio::time::timeout(wait, places.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(Arc::new(permit)),
        _ => Err(CallError::Hung(format!(
            "{PLACES_PER_UID} calls of uid {uid} have been held for {}s by paths that do not answer (a working directory or a file named on a file system that hangs); end them, or wait until that file system answers",
            wait.as_secs()
        ))),
    }
}

/// Run `look` on a blocking thread that holds `place`, for at most
/// [`LOOK_LIMIT`]; `what` names what it looks at, for the caller.
pub async fn look<T: Send + 'static>(place: &Place, what: &str, look: impl FnOnce() -> T + Send + 'static) -> Result<T, CallError> {
    look_within(place, what, LOOK_LIMIT, look).await
}

async fn look_within<T: Send + 'static>(place: &Place, what: &str, limit: Duration, look: impl FnOnce() -> T + Send + 'static) -> Result<T, CallError> {
    let place = place.clone();
    let work = tokio::task::spawn_blocking(move || {
        let _place = place;
        look()
    });
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(CallError::Start(format!("cannot look at {what}: {e}"))),
        Err(_) => Err(CallError::Hung(format!(
            "{what} could not be read within {}s: a file system under them does not answer (cd elsewhere, or wait until it answers)",
            limit.as_secs_f32()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_look_that_hangs_is_cut_off_and_keeps_only_its_user_s_place() {
        let limit = Duration::from_millis(100);
        let hung = Arc::new(std::sync::Barrier::new(PLACES_PER_UID + 1));
        let mut held = Vec::new();
        for _ in 0..PLACES_PER_UID {
            let p = place(4242).await.unwrap();
            let h = hung.clone();
            held.push(tokio::spawn(async move { look_within(&p, "the test's paths", limit, move || h.wait()).await }));
        }
        // Every place of that user is held by a look that does not return...
        for h in held {
            let e = h.await.unwrap().unwrap_err();
            assert!(matches!(&e, CallError::Hung(m) if m.contains("the test's paths could not be read within 0.1s")), "{e}");
        }
        let refused = place_within(4242, limit).await.unwrap_err();
        assert!(matches!(&refused, CallError::Hung(m) if m.contains("16 calls of uid 4242")), "{refused}");
        // ...and another user's calls go on.
        let other = place(4243).await.unwrap();
        assert_eq!(look(&other, "x", || 7).await.unwrap(), 7);
        // Once the looks return, their places come back.
        hung.wait();
        assert!(place_within(4242, Duration::from_secs(5)).await.is_ok());
    }
}
