//! Fleet Server cluster node: the daemon as a library (`server::run`), cluster membership
//! behind one trait (`cluster`), the HTTP API (`http`), configuration, identity and the admin CLI.

pub mod advertise;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod downloads;
pub mod enrollment;
pub mod http;
pub mod identity;
pub mod lb;
pub mod logging;
pub mod node;
pub mod packages;
pub mod serve;
pub mod server;
pub mod sessions;
pub mod sessionsig;
pub mod tls;
pub mod upgrade;
pub mod version;
pub mod web;
