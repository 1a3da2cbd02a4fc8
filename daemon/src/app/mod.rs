//! The application layer: what the CLI and the HTTP API both do (open the backend, write a
//! configuration, build, enroll, revoke and remove, keep the node in the cluster), on top of
//! `cluster`, `config` and the base modules.

pub mod backend;
pub mod build;
pub mod config;
pub mod downloads;
pub mod enroll;
pub mod events;
pub mod housekeeping;
pub mod membership;
pub mod package;
pub mod remove;
pub mod revoke;
pub mod upgrade;
