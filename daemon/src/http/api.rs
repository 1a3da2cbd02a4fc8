//! The HTTP API: cluster status, health for load balancers, the node list, node removal,
//! Prometheus metrics and the discovery documents for Prometheus and Traefik (`lb::sd`).
//! Errors are logged in full and answered with a short reason.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::{ApiError, AppState, Principal, authorize, has_api_key};
use crate::app::remove::RemoveError;
use crate::cluster::Member;

fn require_api_key_for_metrics(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if has_api_key(headers, &app.config.auth) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "an API key is required (X-API-Key header or Authorization: Bearer)".into(),
        ))
    }
}

/// A backend call's error as the API's answer (503 when unreachable). The backend bounds every
/// call with its own deadline (a timeout comes back as `Unreachable`), so none is added here.
async fn backend_call<T>(
    f: impl std::future::Future<Output = Result<T, crate::cluster::ClusterError>>,
) -> Result<T, ApiError> {
    f.await.map_err(ApiError::from)
}

fn member_json(m: &Member) -> serde_json::Value {
    serde_json::to_value(m).unwrap_or_default()
}

pub(super) async fn status(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let authed = authorize(&app, &headers, false).await.is_ok();
    if let Some(crate::app::membership::Unhealthy::Enrollment(reason)) = app.state.health() {
        return axum::Json(json!({
            "enabled": true,
            "node_id": app.node.id,
            "registered": false,
            "healthy": false,
            "enrollment_refused": reason,
        }))
        .into_response();
    }
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
        "version": app.node.version,
        "registered": app.state.is_registered(),
        "healthy": app.state.health().is_none(),
    });
    if authed {
        match backend_call(backend.members()).await {
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
        match backend_call(backend.active_count()).await {
            Ok(n) => body["active_nodes"] = json!(n),
            Err(e) => {
                body["active_nodes"] = json!(app.state.active_nodes.load(Ordering::Relaxed));
                body["backend_error"] = json!(e.1);
            }
        }
    }
    axum::Json(body).into_response()
}

pub(super) async fn health(State(app): State<AppState>) -> Response {
    match app.state.health() {
        None => (
            StatusCode::OK,
            axum::Json(
                json!({"status": "ok", "node_id": app.node.id, "version": app.node.version}),
            ),
        )
            .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "unavailable",
                "node_id": app.node.id,
                "version": app.node.version,
                "reason": reason.to_string(),
            })),
        )
            .into_response(),
    }
}

/// Members per page when `cursor` comes without `limit`, and the most one page may hold.
const NODES_PAGE_DEFAULT: usize = 1000;
const NODES_PAGE_MAX: usize = 10_000;

/// `GET /api/fleet/cluster/nodes`: the whole list, or with `limit` and/or `cursor` one page of
/// it and `next_cursor` (null on the last page), so that a large cluster is read in pieces.
pub(super) async fn nodes(
    State(app): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, false).await?;
    let Some(backend) = &app.backend else {
        return Ok(axum::Json(json!({ "enabled": false, "nodes": [] })).into_response());
    };
    #[derive(serde::Serialize)]
    struct Nodes {
        enabled: bool,
        backend: &'static str,
        nodes: Vec<Member>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_cursor: Option<Option<String>>,
    }
    let (limit, cursor) = (query.get("limit"), query.get("cursor"));
    let (members, next_cursor) = if limit.is_none() && cursor.is_none() {
        (backend_call(backend.members()).await?, None)
    } else {
        let limit = match limit {
            None => NODES_PAGE_DEFAULT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=NODES_PAGE_MAX).contains(&n) => n,
                _ => {
                    return Err(ApiError(
                        StatusCode::BAD_REQUEST,
                        format!("limit must be a whole number from 1 to {NODES_PAGE_MAX}"),
                    ));
                }
            },
        };
        let cursor = cursor.filter(|c| !c.is_empty());
        if let Some(c) = cursor
            && crate::cluster::parse_cursor(c).is_none()
        {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "cursor is not one this API returned (use next_cursor of the previous page)".into(),
            ));
        }
        let (page, next) =
            backend_call(backend.members_page(limit, cursor.map(String::as_str))).await?;
        (page, Some(next))
    };
    let large = members.len() >= SERIALIZE_APART_AT;
    let body = Nodes {
        enabled: true,
        backend: backend.kind().as_str(),
        nodes: members,
        next_cursor,
    };
    if !large {
        return Ok(axum::Json(body).into_response());
    }
    // 100,000 members are 27 MB of JSON and over 100 ms of CPU: written on a blocking thread,
    // which the OS preempts, not on the workers that answer status and health meanwhile.
    let json = tokio::task::spawn_blocking(move || serde_json::to_vec(&body))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// Node lists of at least this many members are serialised on a blocking thread.
const SERIALIZE_APART_AT: usize = 2000;

pub(super) async fn remove_node(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authorize(&app, &headers, true).await?;
    let Some(backend) = &app.backend else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "Cluster mode not enabled".into(),
        ));
    };
    match crate::app::remove::remove(&**backend, &id, &who.label()).await {
        Ok(()) => Ok(axum::Json(json!({ "removed": id })).into_response()),
        Err(e @ RemoveError::InvalidId) => Err(ApiError(StatusCode::BAD_REQUEST, e.to_string())),
        Err(e @ RemoveError::NotFound(_)) => Err(ApiError(StatusCode::NOT_FOUND, e.to_string())),
        Err(RemoveError::Backend(e)) => Err(e.into()),
    }
}

/// The JSON body of a package build request (the Settings page's form).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageForm {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    package_name: Option<String>,
    #[serde(default)]
    format: Option<String>,
    /// `7d`, `12h`, `30m`.
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    ethernet: Option<String>,
    /// An offline package: the node's full configuration instead of an enrollment token.
    #[serde(default)]
    no_enrollment: Option<serde_json::Value>,
    /// Leave the package on this node behind a single-use link instead of sending it.
    #[serde(default)]
    download_link: Option<serde_json::Value>,
    /// How long the link lives (`30s`, `10m`, `12h`, `1d`; at most a day and the package's
    /// own expiry; default: both).
    #[serde(default)]
    download_expires: Option<String>,
    /// An upgrade package for installed nodes (binaries only, no configuration or secret).
    #[serde(default)]
    upgrade: Option<serde_json::Value>,
}

/// A form checkbox or a JSON boolean.
fn is_on(v: &Option<serde_json::Value>) -> bool {
    matches!(v, Some(serde_json::Value::Bool(true)))
        || matches!(v, Some(serde_json::Value::String(s)) if s == "on" || s == "true")
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

pub(super) async fn build_package(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = authorize(&app, &headers, true).await?;
    let form: PackageForm = if body.is_empty() {
        PackageForm::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid request: {e}")))?
    };
    if is_on(&form.upgrade) {
        return build_upgrade_package(&app, &who, form).await;
    }
    if app.backend.is_none() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "Cluster mode not enabled: node packages copy the cluster settings, enable cluster mode first".into(),
        ));
    }
    let blank = |o: Option<String>| o.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let format = match blank(form.format) {
        Some(f) => f.parse().map_err(bad_request)?,
        None => crate::app::package::Format::Pkg,
    };
    let expires = match blank(form.expires) {
        Some(e) => crate::app::package::parse_expiry(&e).map_err(bad_request)?,
        None => Duration::from_secs(u64::from(app.config.package.expiry_days) * 86_400),
    };
    let ethernet = match blank(form.ethernet) {
        Some(e) => e.parse().map_err(bad_request)?,
        None => fleet_installer_stub::EthernetPolicy::Require,
    };
    let req = crate::app::package::BuildRequest {
        node_name: blank(form.node_name),
        format,
        package_name: blank(form.package_name),
        expires,
        ethernet,
        passphrase: None,
        template_dir: None,
        allow_foreign_binaries: false,
        built_by: who.label(),
        no_enrollment: is_on(&form.no_enrollment),
        ..Default::default()
    };
    let link_lifetime = match blank(form.download_expires) {
        Some(l) => Some(
            crate::app::downloads::parse_lifetime(&l).map_err(|e| bad_request(e.to_string()))?,
        ),
        None => is_on(&form.download_link).then_some(crate::app::downloads::MAX_LIFETIME),
    };
    use crate::app::build::{Delivered, Failure, Sink};
    let sink = match link_lifetime {
        Some(lifetime) => Sink::Download {
            store: app.downloads.clone(),
            lifetime,
        },
        None => Sink::Bytes,
    };
    let done =
        crate::app::build::build(&app.config, app.backend.as_deref(), &app.builder, req, sink)
            .await
            .map_err(|e| match e {
                Failure::Build(e) => build_failed(&who, e),
                Failure::Task(e) => ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the download task failed: {e}"),
                ),
                Failure::Download(e) => download_failed(e),
            })?;
    let cb = done.build;
    let built = cb.built;
    if let Some(why) = &cb.shared_credentials {
        log::warn!("package for {}: {why}", built.node_name);
    }
    log::info!(
        "📦 {} built {} for node {} (package {}, {} bytes)",
        who.label(),
        built.file_name,
        if built.node_name.is_empty() {
            "(hostname)"
        } else {
            &built.node_name
        },
        &built.package_id[..12.min(built.package_id.len())],
        built.bytes.len()
    );
    let until =
        crate::logging::timestamp(std::time::UNIX_EPOCH + Duration::from_secs(built.not_after))
            + " UTC";
    if let Delivered::Download(offered) = done.delivered {
        return Ok(offer_download(&app, &built, offered, until));
    }
    let disposition = crate::app::downloads::content_disposition(&built.file_name);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (
                header::HeaderName::from_static("x-package-id"),
                built.package_id.clone(),
            ),
            (header::HeaderName::from_static("x-package-expires"), until),
            (
                header::HeaderName::from_static("x-package-credentials"),
                match (&built.node_user, &cb.shared_credentials) {
                    (Some(u), _) => format!("node user {u}"),
                    (None, Some(_)) => "shared with the primary".to_string(),
                    (None, None) => "cluster".to_string(),
                },
            ),
            (
                header::HeaderName::from_static("x-package-enrollment"),
                match (&built.enrollment, &cb.enrollment_note) {
                    (Some(rec), _) => format!("token {}", &rec.token_id[..12]),
                    (None, _) => {
                        "none: the package carries the cluster's long-lived secrets".to_string()
                    }
                },
            ),
        ],
        built.bytes,
    )
        .into_response())
}

/// The answer to a build that failed (logged: the admin may not see the response).
fn build_failed(who: &Principal, e: crate::app::package::BuildError) -> ApiError {
    log::warn!("package build for {} failed: {e}", who.label());
    let status = if e.is_bad_request() {
        StatusCode::BAD_REQUEST
    } else if matches!(
        e,
        crate::app::package::BuildError::Cluster(crate::cluster::ClusterError::NotPermitted { .. })
    ) {
        StatusCode::FORBIDDEN
    } else if matches!(e, crate::app::package::BuildError::Cluster(_)) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let field = match &e {
        crate::app::package::BuildError::Package(fleet_package::Error::InvalidPackageName {
            ..
        }) => "package_name: ",
        _ => "",
    };
    ApiError(status, format!("{field}{e}"))
}

/// The answer when a built package cannot be kept for download.
fn download_failed(e: crate::app::downloads::DownloadError) -> ApiError {
    match e {
        crate::app::downloads::DownloadError::TooMany => {
            ApiError(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        }
        crate::app::downloads::DownloadError::Lifetime => bad_request(e.to_string()),
        e => {
            log::warn!("keeping a package for download: {e}");
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the package could not be kept for download".into(),
            )
        }
    }
}

/// `"upgrade": true`: the upgrade package of this node's template, sent as the response. Fields
/// that only make sense for one new node are refused, not ignored.
async fn build_upgrade_package(
    app: &AppState,
    who: &Principal,
    form: PackageForm,
) -> Result<Response, ApiError> {
    let given = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.trim().is_empty());
    for (field, set) in [
        ("node_name", given(&form.node_name)),
        ("expires", given(&form.expires)),
        ("ethernet", given(&form.ethernet)),
        ("no_enrollment", is_on(&form.no_enrollment)),
        ("download_link", is_on(&form.download_link)),
        ("download_expires", given(&form.download_expires)),
    ] {
        if set {
            return Err(bad_request(format!(
                "{field} does not apply to an upgrade package (it is the same for every node and carries no configuration)"
            )));
        }
    }
    let format = match form
        .format
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(f) => f.parse().map_err(bad_request)?,
        None => crate::app::package::Format::Pkg,
    };
    let req = crate::app::upgrade::UpgradeRequest {
        format,
        package_name: form
            .package_name
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        template_dir: None,
        allow_foreign_binaries: false,
        built_by: who.label(),
    };
    let built = crate::app::upgrade::build_upgrade_async(&app.builder, &app.config, req)
        .await
        .map_err(|e| {
            log::warn!("upgrade package build for {} failed: {e}", who.label());
            let status = if e.is_bad_request() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            ApiError(status, e.to_string())
        })?;
    crate::app::upgrade::record_built(app.backend.as_deref(), &built, &who.label()).await;
    log::info!(
        "📦 {} built the upgrade package {} (fleet-server {}, {} bytes)",
        who.label(),
        built.file_name,
        built.version,
        built.bytes.len()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", built.file_name),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (
                header::HeaderName::from_static("x-package-kind"),
                "upgrade".to_string(),
            ),
            (
                header::HeaderName::from_static("x-package-version"),
                built.version.clone(),
            ),
        ],
        built.bytes,
    )
        .into_response())
}

/// Method C: the built package waits on this node (`app::build`'s download sink); the answer
/// is its single-use link and the lines to copy onto the new machine.
fn offer_download(
    app: &AppState,
    built: &crate::app::package::BuiltPackage,
    offered: crate::app::downloads::Offered,
    package_until: String,
) -> Response {
    // The link names this node (the package is here only), not the load balancer.
    let url = format!(
        "{}/api/fleet/cluster/packages/{}/download?key={}",
        app.node.url.trim_end_matches('/'),
        offered.id,
        offered.key.expose()
    );
    let install = if built.format == crate::app::package::Format::Bundle {
        let dir = built.file_name.trim_end_matches(".tar.gz");
        format!(
            "sudo tar -xzf {} && cd {dir} && sudo ./provision.sh",
            built.file_name
        )
    } else {
        format!("sudo installer -pkg {} -target /", built.file_name)
    };
    let link_until = crate::logging::timestamp(
        std::time::UNIX_EPOCH + Duration::from_millis(offered.not_after_ms),
    ) + " UTC";
    log::info!(
        "📦 package {} waits for download on this node until {link_until} (link {})",
        &built.package_id[..12.min(built.package_id.len())],
        &offered.id[..12]
    );
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "download": {
                "id": offered.id,
                "url": url,
                "file_name": built.file_name,
                "size": built.bytes.len(),
                "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&built.bytes)),
                "expires": link_until,
                "curl": format!("curl -fOJ '{url}'"),
                "install": install,
            },
            "package_id": built.package_id,
            "package_expires": package_until,
        })),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct DownloadQuery {
    #[serde(default)]
    key: crate::config::Secret,
}

/// `GET /api/fleet/cluster/packages/<id>/download?key=…`: the package, once. 404 unknown link,
/// 403 wrong key, 410 downloaded, revoked (or used) or expired.
pub(super) async fn download_package(
    State(app): State<AppState>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<DownloadQuery>,
) -> Result<Response, ApiError> {
    use crate::app::downloads::DownloadError as E;
    let status_of = |e: &E| match e {
        E::NotFound => StatusCode::NOT_FOUND,
        E::WrongKey => StatusCode::FORBIDDEN,
        E::Gone(_) => StatusCode::GONE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let fail = |e: E| {
        if matches!(e, E::Io { .. }) {
            log::warn!("download link {}: {e}", &id[..12.min(id.len())]);
            return ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the package could not be read".into(),
            );
        }
        ApiError(status_of(&e), e.to_string())
    };
    let (store, i, k) = (app.downloads.clone(), id.clone(), q.key.clone());
    let token = tokio::task::spawn_blocking(move || store.token_of(&i, k.expose()))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(&fail)?;
    // An enrolling package is handed out only while its enrollment is pending (revoked on any
    // node, or already used: 410).
    let pending = match (&token, &app.backend) {
        (Some(t), Some(backend)) => backend_call(backend.list_enrollments())
            .await?
            .iter()
            .any(|r| &r.token_id == t),
        _ => true,
    };
    let (store, i, k) = (app.downloads.clone(), id.clone(), q.key.clone());
    let taken = tokio::task::spawn_blocking(move || store.take(&i, k.expose(), pending))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(&fail)?;
    log::info!(
        "📦 download link {} used: {} sent",
        &id[..12],
        taken.file_name
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                crate::app::downloads::content_disposition(&taken.file_name),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        taken.bytes,
    )
        .into_response())
}

pub(super) async fn list_packages(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, false).await?;
    let Some(backend) = &app.backend else {
        return Ok(axum::Json(json!({ "pending": [] })).into_response());
    };
    if !backend.supports_enrollment() {
        return Ok(axum::Json(json!({ "pending": [], "enrollment": false })).into_response());
    }
    let pending = backend_call(backend.list_enrollments()).await?;
    let rows: Vec<serde_json::Value> = pending.iter().map(|r| r.summary()).collect();
    Ok(axum::Json(json!({ "pending": rows, "enrollment": true })).into_response())
}

pub(super) async fn revoke_package(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authorize(&app, &headers, true).await?;
    let Some(backend) = &app.backend else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "Cluster mode not enabled".into(),
        ));
    };
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad_request("invalid package id"));
    }
    match crate::app::revoke::revoke(&**backend, &id, &who.label(), Some(&app.downloads)).await? {
        Some(_) => Ok(axum::Json(json!({ "revoked": id })).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no pending package {id} (already used, revoked or expired)"),
        )),
    }
}

/// The active nodes for the discovery documents, and the backend's name (`none` without
/// cluster mode: then this node alone).
async fn lb_targets(app: &AppState) -> Result<(Vec<crate::lb::Target>, &'static str), ApiError> {
    let Some(backend) = &app.backend else {
        let me = Member {
            node: (*app.node).clone(),
            last_heartbeat_ms: 0,
            age_ms: 0,
            state: crate::cluster::MemberState::Active,
            age_known: true,
        };
        return Ok((crate::lb::targets(&[me]).0, "none"));
    };
    let members = backend_call(backend.members()).await?;
    Ok((crate::lb::targets(&members).0, backend.kind().as_str()))
}

/// Prometheus `http_sd_configs` (behind the API key, which Prometheus sends as a bearer token).
pub(super) async fn sd_prometheus(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, false).await?;
    let (targets, backend) = lb_targets(&app).await?;
    Ok(axum::Json(crate::lb::sd::prometheus(&targets, backend)).into_response())
}

/// Traefik's HTTP provider (behind the API key: `providers.http.headers`).
pub(super) async fn sd_traefik(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, false).await?;
    let (targets, _) = lb_targets(&app).await?;
    Ok(axum::Json(crate::lb::sd::traefik(&targets, "fleet")).into_response())
}

pub(super) async fn metrics(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if app.config.server.metrics_require_auth {
        require_api_key_for_metrics(&app, &headers)?;
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
        crate::version::version(),
        app.node.id
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
