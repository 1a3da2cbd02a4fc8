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

#[cfg(test)]
mod tests {
    /// Every route that changes state (POST, DELETE) goes to an API handler whose first
    /// statement is `authorize(…, true)` (the API key, or a session and its CSRF token), or to
    /// one of the dashboard's two forms, which check their own CSRF tokens (the login form's
    /// double-submit cookie; logout's session token).
    #[test]
    fn every_state_change_is_authorized_first() {
        let routes = include_str!("mod.rs");
        let api = include_str!("api.rs");
        let start = routes.find("pub fn router(").expect("the router");
        let router = &routes[start..];
        let router = &router[..router.find("\n}\n").expect("its end")];
        let mut handlers = 0;
        for (i, _) in router
            .match_indices("post(")
            .chain(router.match_indices("delete("))
        {
            let name = router[i..].split(['(', ')']).nth(1).expect("a handler");
            let Some(h) = name.strip_prefix("api::") else {
                assert!(
                    ["dashboard::login", "dashboard::logout"].contains(&name),
                    "{name} changes state: it must be an API handler that authorizes first"
                );
                continue;
            };
            let at = api
                .find(&format!("async fn {h}("))
                .unwrap_or_else(|| panic!("api::{h} not found"));
            let body = &api[at..];
            let body = &body[body.find(" {\n").expect("its body") + 3..];
            let first = body.lines().next().unwrap_or_default().trim();
            assert!(
                first.contains("authorize(&app, &headers, true)"),
                "api::{h} must authorize (with CSRF) before anything else; it starts with {first:?}"
            );
            handlers += 1;
        }
        assert_eq!(handlers, 3, "build, remove and revoke");
    }
}
