//! The HTTP side of a node: the JSON API (`api`) and the dashboard (`dashboard`).

pub mod api;
pub mod dashboard;

pub use api::*;
