//! Fleet Server cluster node: the daemon as a library (`server::run`), cluster membership
//! behind one trait (`cluster`), the HTTP API (`http`), configuration, identity and the admin CLI.

pub mod advertise;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod http;
pub mod identity;
pub mod lb;
pub mod logging;
#[cfg(test)]
mod secret_debug;
pub mod serve;
pub mod server;
pub mod tls;
pub mod version;
