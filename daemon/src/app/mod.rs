//! The application layer: what a node does on request, the same from the CLI and over HTTP.

pub mod events;
pub mod remove;
pub mod revoke;
