//! odfs: a FUSE filesystem of on-demand binaries backed by containers.
//!
//! Mounted at `/opt/od/bin` (last on `PATH`), it lists every catalog command
//! as a shim whose `#!` line names `odfs-launch`. Exec-ing a shim sends the
//! caller's arguments and fds to the daemon, which starts (or reuses) a
//! container of the command's image and has `odfs-agent`, PID 1 there, run
//! the tool as the caller. The launcher then talks to the agent directly
//! until the tool ends, and ends the same way.
//!
//! # Layout
//! - [`protocol`]: framing with fd passing for the daemon and the agent; the
//!   messages are the `odfs-wire` crate's (`wire/`, no std).
//! - `odfs-launch` (`launch/`, its own crate): the shim interpreter, without
//!   std or libc, on `odfs-wire`.
//! - [`agent`]: `odfs-agent`, PID 1 in each container (static).
//! - [`accounts`]: passwd- and group-style files, as agent and daemon edit them.
//! - [`catalog`]: TOML entries, validation, SQLite store, snapshot.
//! - [`archive`]: the command index of a Debian suite (every command of
//!   its main component, and the package that provides it).
//! - [`fs`]: the shim directory as plain logic; [`fuse`] serves it over `/dev/fuse`.
//! - [`backend`]: the `ContainerBackend` trait, Docker via bollard, a fake.
//! - [`daemon`]: control socket, exec handling, container pool and reaper.
//! - [`view`]: which host paths a tool sees, and the paths a caller names.
//! - [`share`]: the man pages and completions beside the mount, from images.
//! - [`config`], [`telemetry`]: daemon settings and logging.
//! - `bench`: `odfs-bench`, the side-by-side benchmark (feature `bench`).
//!
//! The `daemon` feature (default) gates everything only the host daemon
//! needs, so the agent builds without tokio or SQLite.

// Every unsafe operation is in a block of its own that says why it holds.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod accounts;
pub mod agent;
#[cfg(feature = "bench")]
pub mod bench;
pub mod policy;
pub mod protocol;

#[cfg(feature = "daemon")]
pub mod archive;
#[cfg(feature = "daemon")]
pub mod backend;
#[cfg(feature = "daemon")]
pub mod catalog;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod fs;
#[cfg(feature = "daemon")]
pub mod fuse;
#[cfg(feature = "daemon")]
pub mod share;
#[cfg(feature = "daemon")]
pub mod telemetry;
pub mod view;
