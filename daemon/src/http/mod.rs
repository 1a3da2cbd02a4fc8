//! The HTTP side of a node: its routes, who may call them (`auth`), the JSON API (`api`) and
//! the dashboard (`dashboard`).

pub mod api;
pub mod auth;
pub mod dashboard;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use serde_json::json;

// Shims: the paths other modules used before `http` was split.
pub use crate::auth::constant_time_eq;
pub use crate::serve::ClientAddr;
pub use auth::{ApiError, AppState, Principal, authorize};

/// The API's routes.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/api/fleet/cluster/status", get(api::status))
        .route("/api/fleet/cluster/health", get(api::health))
        .route("/api/fleet/cluster/nodes", get(api::nodes))
        .route(
            "/api/fleet/cluster/nodes/{id}",
            axum::routing::delete(api::remove_node),
        )
        .route(
            "/api/fleet/cluster/packages",
            axum::routing::post(api::build_package).get(api::list_packages),
        )
        .route(
            "/api/fleet/cluster/packages/{id}",
            axum::routing::delete(api::revoke_package),
        )
        .route(
            "/api/fleet/cluster/packages/{id}/download",
            get(api::download_package),
        )
        .route("/api/fleet/cluster/sd/prometheus", get(api::sd_prometheus))
        .route("/api/fleet/cluster/sd/traefik", get(api::sd_traefik))
        .route("/metrics", get(api::metrics))
        .route("/", get(dashboard::index))
        .route("/login", get(dashboard::login_form).post(dashboard::login))
        .route("/logout", axum::routing::post(dashboard::logout))
        .route("/settings", get(dashboard::settings))
        .route("/static/style.css", get(dashboard::style))
        .route("/static/settings.js", get(dashboard::script))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

/// For connections over the cap (`serve`): health as usual, everything else 503 at once.
pub fn overflow_router(app: AppState) -> Router {
    Router::new()
        .route("/api/fleet/cluster/health", get(api::health))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                axum::Json(json!({"error": "too many connections: try again shortly"})),
            )
        })
        .with_state(app)
}

/// What the port answers while the node redeems its enrollment token: 503 and the current
/// step, for every path (health included), with the same JSON shape as health.
pub fn enrolling_router(reason: tokio::sync::watch::Receiver<String>) -> axum::Router {
    axum::Router::new().fallback(move || {
        let reason = reason.borrow().clone();
        async move {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "1")],
                axum::Json(serde_json::json!({"status": "unavailable", "reason": reason})),
            )
        }
    })
}
