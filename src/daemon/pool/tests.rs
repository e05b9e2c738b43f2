//! The pool's logic against the fake engine: single flight, the reaper's
//! care for busy containers, the pause tier, backoff, adoption, the
//! replacement of a container whose agent is gone.

use super::images::pull_backoff;
use super::*;
use crate::backend::fake::Fake;
use crate::backend::LABEL_MOUNT;
use crate::catalog::{KeepAlive, Network, RunAs};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn image(name: &str, keep: KeepAlive) -> Arc<ImageSpec> {
    Arc::new(ImageSpec {
        name: name.into(),
        reference: format!("test/{name}"),
        network: Network::None,
        user: RunAs::Caller,
        cap_add: vec![],
        keep_alive: keep,
        pause_after: None,
        allow_groups: vec![],
        limits: Default::default(),
        build: None,
        remote_dirs: vec![],
        scratch: vec![],
        pid: None,
        version: None,
        default_version: false,
        completions: true,
        gui: false,
        devices: vec![],
        gpus: None,
        version_command: vec![],
        origin: "t.toml:1".into(),
        package: None,
    })
}

fn pool(fake: Arc<Fake>, dir: &Path) -> Arc<Pool<Fake>> {
    Arc::new(Pool::new(
        fake,
        PoolConfig {
            mount_id: "m1".into(),
            run_dir: dir.to_path_buf(),
            agent: "/bin/true".into(),
            view: Default::default(),
            policy: Policy::Auto,
            costs: Costs::default(),
            idle: Default::default(),
            inner: Default::default(),
        },
        None,
    ))
}

/// A pool on the fake engine as it comes, its run dirs in a fresh
/// directory (removed when the first value is dropped).
fn fake_pool() -> (tempfile::TempDir, Arc<Fake>, Arc<Pool<Fake>>) {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let pool = pool(fake.clone(), dir.path());
    (dir, fake, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_calls_start_one_container() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake { start_delay: Duration::from_millis(50), ..Default::default() });
    let pool = pool(fake.clone(), dir.path());
    let img = image("busybox", KeepAlive::Auto);
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (pool, img) = (pool.clone(), img.clone());
            tokio::spawn(async move { pool.ensure(&img, "sh").await.map(|r| r.served) })
        })
        .collect();
    let mut cold = 0;
    for c in calls {
        if c.await.unwrap().unwrap() == Served::Cold {
            cold += 1;
        }
    }
    // Every caller waited for the one start, so each counts as cold.
    assert_eq!((fake.starts.load(Ordering::SeqCst), cold), (1, 50));
    assert_eq!(pool.ensure(&img, "sh").await.unwrap().served, Served::Warm);
    let spec = &fake.live.lock().unwrap()[0].0;
    assert_eq!(spec.labels[LABEL_MOUNT], "m1");
    assert!(spec.binds.iter().any(|b| b.target == Path::new("/tmp")));
}

#[tokio::test]
async fn reaper_spares_busy_and_claimed_containers_and_removes_idle_ones() {
    let (_dir, fake, pool) = fake_pool();
    let img = image("b", KeepAlive::Fixed(Duration::ZERO));
    let claim = pool.ensure(&img, "sh").await.unwrap();
    pool.reap().await;
    assert!(fake.removed.lock().unwrap().is_empty(), "removed while an exec was on its way in");
    drop(claim);
    fake.running.store(1, Ordering::SeqCst);
    pool.reap().await;
    assert!(fake.removed.lock().unwrap().is_empty(), "removed while a tool ran");
    fake.running.store(0, Ordering::SeqCst);
    pool.reap().await;
    assert_eq!(*fake.removed.lock().unwrap(), ["fake-0"]);
    assert_eq!(pool.ensure(&img, "sh").await.unwrap().served, Served::Cold);
}

#[tokio::test]
async fn the_pause_tier_freezes_idle_containers_and_calls_resume_them() {
    let (_dir, fake, pool) = fake_pool();
    let img = image("b", KeepAlive::Auto);
    let now = pool.now();
    let plan = Plan { prewarm_at: None, unload: true, pause_at: Some(now), remove_at: now + 3600.0, reason: "test".into() };
    pool.warm_up(&img, Some(plan)).await.unwrap();
    fake.running.store(1, Ordering::SeqCst);
    pool.reap().await;
    assert!(fake.paused.lock().unwrap().is_empty(), "paused while a tool ran");
    fake.running.store(0, Ordering::SeqCst);
    pool.reap().await;
    assert_eq!(*fake.paused.lock().unwrap(), ["fake-0"]);
    assert_eq!(pool.status().await[0].state, ContainerPhase::Paused);
    let call = pool.ensure(&img, "sh").await.unwrap();
    assert_eq!(call.served, Served::Paused);
    assert!(fake.paused.lock().unwrap().is_empty(), "not resumed");
    assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
}

#[test]
fn pull_backoff_doubles_from_5s_up_to_5min() {
    let secs: Vec<u64> = (1..=9).map(|a| pull_backoff(a).as_secs()).collect();
    assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
}

#[tokio::test]
async fn restart_adopts_current_profiles_and_removes_stale_ones() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let (a, b) = (image("a", KeepAlive::Auto), image("b", KeepAlive::Auto));
    let first = pool(fake.clone(), dir.path());
    drop(first.ensure(&a, "x").await.unwrap());
    drop(first.ensure(&b, "y").await.unwrap());
    // The next daemon's catalog no longer has image b.
    let second = pool(fake.clone(), dir.path());
    second.adopt(std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(*fake.removed.lock().unwrap(), ["fake-1"]);
    assert_eq!(second.ensure(&a, "x").await.unwrap().served, Served::Warm);
    assert_eq!(fake.starts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_idle_container_of_an_image_the_catalog_dropped_goes_at_the_next_round() {
    let (_dir, fake, pool) = fake_pool();
    let (kept, dropped) = (image("kept", KeepAlive::Fixed(Duration::from_secs(3600))), image("gone", KeepAlive::Fixed(Duration::from_secs(3600))));
    pool.catalog_is([&*kept, &*dropped].into_iter(), false);
    drop(pool.ensure(&kept, "sh").await.unwrap());
    drop(pool.ensure(&dropped, "sh").await.unwrap());
    pool.reap().await;
    assert!(fake.removed.lock().unwrap().is_empty(), "both are in the catalog and kept for an hour");
    // The catalog drops one image; its container serves a tool: it stays
    // until the tool ends, then goes at the next round. The other stays.
    pool.catalog_is([&*kept].into_iter(), false);
    fake.running.store(1, Ordering::SeqCst);
    pool.reap().await;
    assert!(fake.removed.lock().unwrap().is_empty(), "removed while a tool ran");
    fake.running.store(0, Ordering::SeqCst);
    pool.reap().await;
    assert_eq!(fake.removed.lock().unwrap().len(), 1);
    assert_eq!(pool.ensure(&kept, "sh").await.unwrap().served, Served::Warm);
    // Nothing of it is left to show; back in the catalog, it starts anew.
    assert_eq!(pool.status().await.iter().map(|c| c.image.as_str()).collect::<Vec<_>>(), ["kept"]);
    pool.catalog_is([&*kept, &*dropped].into_iter(), false);
    assert_eq!(pool.ensure(&dropped, "sh").await.unwrap().served, Served::Cold);
    assert_eq!(pool.status().await.len(), 2);
}

#[tokio::test]
async fn a_container_whose_agent_does_not_answer_is_replaced_once() {
    let (_dir, fake, pool) = fake_pool();
    let img = image("b", KeepAlive::Auto);
    // The fake agent answers status questions only: a spawn finds it gone.
    let spawn = crate::agent::fake::spawn_request(vec![]);
    let launch = crate::daemon::link::Launch { spawn, fds: Arc::default(), args: vec![], image: "b".into(), accounts: (None, None), channel: None, caller_uid: 1000 };
    let Err(refused) = pool.run(&img, "sh", launch, |_| {}).await else { panic!("a tool started") };
    assert_eq!(refused.to_string(), "the container of image b does not answer: the agent closed the connection");
    assert_eq!(refused.status(), crate::protocol::EXIT_ODFS_ERROR);
    assert_eq!(fake.starts.load(Ordering::SeqCst), 2);
    assert_eq!(*fake.removed.lock().unwrap(), ["fake-0"]);
    // Neither attempt's claim outlives the call.
    assert_eq!(pool.slot(&img).pending.load(Ordering::SeqCst), 0);
}

#[test]
fn a_past_call_served_in_an_unknown_way_is_left_out_of_the_history() {
    let (_dir, _fake, pool) = fake_pool();
    let img = image("jq", KeepAlive::Auto);
    let past = |served: &str| crate::catalog::PastCall {
        command: "jq".into(),
        image: "jq".into(),
        session: None,
        started_ms: 1_000,
        setup_us: 2_000,
        run_ms: Some(10),
        served: served.into(),
    };
    pool.seed(&[(img.clone(), past("paused")), (img.clone(), past("teleported")), (img, past("pulled"))], 5_000);
    let history = pool.history();
    let served: Vec<Served> = history[0].1.iter().map(|s| s.served).collect();
    assert_eq!(served, [Served::Paused, Served::Pulled]);
}
