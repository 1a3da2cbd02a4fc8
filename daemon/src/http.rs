//! The HTTP API: cluster status, health for load balancers, the node list, node removal and
//! Prometheus metrics. Errors are logged in full and answered with a short reason.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::cluster::{Member, Membership, NodeRecord};
use crate::config::{Config, Secret};
use crate::node::NodeState;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// `None` without cluster mode.
    pub backend: Option<Arc<dyn Membership>>,
    pub node: Arc<NodeRecord>,
    pub state: Arc<NodeState>,
}

/// An API error: the status and a short reason for the client.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        log::warn!("request failed: {e}");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// The API's routes.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/api/fleet/cluster/status", get(status))
        .route("/api/fleet/cluster/health", get(health))
        .route("/api/fleet/cluster/nodes", get(nodes))
        .route(
            "/api/fleet/cluster/nodes/{id}",
            axum::routing::delete(remove_node),
        )
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True when the request carries the configured API key (`X-API-Key` or a bearer token).
fn has_api_key(headers: &HeaderMap, key: Option<&Secret>) -> bool {
    let Some(key) = key else { return false };
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.expose().as_bytes()))
}

fn require_api_key(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if has_api_key(headers, app.config.auth.api_key.as_ref()) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "an API key is required (X-API-Key header or Authorization: Bearer)".into(),
        ))
    }
}

/// Backend reads from the API get a short deadline: a status page must not hang.
const READ_DEADLINE: Duration = Duration::from_secs(2);

async fn with_deadline<T>(
    f: impl std::future::Future<Output = Result<T, crate::cluster::ClusterError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(READ_DEADLINE, f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster backend did not answer in time".into(),
        )),
    }
}

fn member_json(m: &Member) -> serde_json::Value {
    serde_json::to_value(m).unwrap_or_default()
}

async fn status(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let authed = has_api_key(&headers, app.config.auth.api_key.as_ref());
    let Some(backend) = &app.backend else {
        return axum::Json(json!({
            "enabled": false,
            "message": "Cluster mode not enabled",
            "node_id": app.node.id,
            "active_nodes": 1,
        }))
        .into_response();
    };
    let mut body = json!({
        "enabled": true,
        "backend": backend.kind().as_str(),
        "node_id": app.node.id,
        "node_name": app.node.name,
        "registered": app.state.is_registered(),
        "healthy": app.state.health().is_none(),
    });
    if authed {
        match with_deadline(backend.members()).await {
            Ok(members) => {
                let active = members
                    .iter()
                    .filter(|m| m.state == crate::cluster::MemberState::Active)
                    .count();
                body["active_nodes"] = json!(active);
                body["nodes"] = members.iter().map(member_json).collect();
            }
            Err(e) => {
                body["active_nodes"] = json!(app.state.active_nodes.load(Ordering::Relaxed));
                body["backend_error"] = json!(e.1);
            }
        }
    } else {
        match with_deadline(backend.active_count()).await {
            Ok(n) => body["active_nodes"] = json!(n),
            Err(e) => {
                body["active_nodes"] = json!(app.state.active_nodes.load(Ordering::Relaxed));
                body["backend_error"] = json!(e.1);
            }
        }
    }
    axum::Json(body).into_response()
}

async fn health(State(app): State<AppState>) -> Response {
    match app.state.health() {
        None => (
            StatusCode::OK,
            axum::Json(json!({"status": "ok", "node_id": app.node.id})),
        )
            .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "unavailable",
                "node_id": app.node.id,
                "reason": reason.to_string(),
            })),
        )
            .into_response(),
    }
}

async fn nodes(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_api_key(&app, &headers)?;
    let Some(backend) = &app.backend else {
        return Ok(axum::Json(json!({ "enabled": false, "nodes": [] })).into_response());
    };
    let members = with_deadline(backend.members()).await?;
    #[derive(serde::Serialize)]
    struct Nodes<'a> {
        enabled: bool,
        backend: &'a str,
        nodes: Vec<Member>,
    }
    Ok(axum::Json(Nodes {
        enabled: true,
        backend: backend.kind().as_str(),
        nodes: members,
    })
    .into_response())
}

async fn remove_node(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_api_key(&app, &headers)?;
    let Some(backend) = &app.backend else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "Cluster mode not enabled".into(),
        ));
    };
    if id.is_empty() || id.len() > 80 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError(StatusCode::BAD_REQUEST, "invalid node id".into()));
    }
    let was = with_deadline(backend.remove(&id, "api-key")).await?;
    if was {
        log::info!("🗑 Node removed from the cluster through the API: {id}");
        Ok(axum::Json(json!({ "removed": id })).into_response())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no member {id} in the cluster"),
        ))
    }
}

async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if app.config.server.metrics_require_auth {
        require_api_key(&app, &headers)?;
    }
    let s = &app.state;
    let mut out = String::with_capacity(1024);
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "fleet_cluster_enabled",
        "gauge",
        "1 when cluster mode is on.",
        u8::from(app.backend.is_some()).to_string(),
    );
    metric(
        "fleet_cluster_active_nodes",
        "gauge",
        "Active cluster nodes as of this node's last heartbeat.",
        s.active_nodes.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "fleet_cluster_registered",
        "gauge",
        "1 when this node is registered in the cluster.",
        u8::from(s.is_registered()).to_string(),
    );
    metric(
        "fleet_cluster_healthy",
        "gauge",
        "1 when the health endpoint answers 200.",
        u8::from(s.health().is_none()).to_string(),
    );
    metric(
        "fleet_cluster_heartbeat_latency_seconds",
        "gauge",
        "Round trip of the last heartbeat to the backend.",
        format!(
            "{:.6}",
            s.heartbeat_latency_us.load(Ordering::Relaxed) as f64 / 1e6
        ),
    );
    metric(
        "fleet_cluster_heartbeat_latency_seconds_sum",
        "counter",
        "Sum of heartbeat and registration round trips.",
        format!(
            "{:.6}",
            s.heartbeat_latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        ),
    );
    metric(
        "fleet_cluster_heartbeats_total",
        "counter",
        "Heartbeats the backend acknowledged.",
        s.heartbeats_total.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "fleet_cluster_registrations_total",
        "counter",
        "Registrations (first join and re-joins after outages).",
        s.registrations_total.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "fleet_cluster_backend_errors_total",
        "counter",
        "Backend operations that failed.",
        s.backend_errors_total.load(Ordering::Relaxed).to_string(),
    );
    out.push_str(&format!(
        "# HELP fleet_build_info Version of this node.\n# TYPE fleet_build_info gauge\nfleet_build_info{{version=\"{}\",node_id=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION"),
        app.node.id
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
