//! The application layer: what the CLI and the HTTP API both do (open the backend, write a
//! configuration, build and enroll packages, keep the node in the cluster), on top of
//! `cluster`, `config` and `lb`.

pub mod backend;
pub mod config;
