//! Fleet Server cluster node: the daemon as a library (`server::run`), cluster membership
//! behind one trait (`cluster`), the HTTP API (`http`), configuration, identity and the admin CLI.

pub mod advertise;
pub mod app;
pub mod auth;
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
pub mod sessions;
pub mod sessionsig;
pub mod tls;
pub mod version;
/// Shim: the dashboard moved to `http::dashboard`.
pub use http::dashboard as web;

// Old paths of modules that moved into `app` (issue 13), kept while other branches still use
// them; they go once every branch is merged.
pub mod downloads {
    //! Moved to [`crate::app::downloads`].
    pub use crate::app::downloads::*;
}
pub mod enrollment {
    //! Moved to [`crate::app::enroll`].
    pub use crate::app::enroll::*;
}
pub mod node {
    //! Moved to [`crate::app::membership`].
    pub use crate::app::membership::*;
}
pub mod upgrade {
    //! Moved to [`crate::app::upgrade`].
    pub use crate::app::upgrade::*;
}
pub mod packages {
    //! Moved to [`crate::app::package`] (the builder) and [`crate::app::build`] (the path).
    pub use crate::app::build::*;
    pub use crate::app::package::*;
}
