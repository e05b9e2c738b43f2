//! `odfs-bench`: odfs against native execution, `docker exec` and `docker
//! run --rm`, on one machine in one run (see docs/performance.md).
//!
//! - [`run`]: the measurements, against the real engine and mounts of its own;
//! - [`archive`]: the archive as a source of commands (`--archive`);
//! - [`cri`]: a CRI engine against the Docker engine (`--cri URL`);
//! - [`stats`]: medians, percentiles, ratios, tables (pure);
//! - [`parse`]: what it reads from valgrind and /proc (pure);
//! - [`stages`]: a traced warm call cut into its stages (pure);
//! - [`report`]: the Markdown report and the latency plot.

pub mod archive;
pub mod cri;
pub mod parse;
pub mod report;
pub mod run;
pub mod stages;
pub mod stats;
