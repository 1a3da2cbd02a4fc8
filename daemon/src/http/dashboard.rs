//! The dashboard: login, logout and the Settings page with its "Cluster Node Installer" section.
//! Plain server-rendered HTML with one small script, all served from the binary. Every
//! state-changing request carries a CSRF token; sessions live in the session store, so any node
//! behind the load balancer serves any logged-in user.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::auth::{
    AppState, Busy, GLOBAL_LOGIN_FAILURES, LOGIN_COOKIE, SESSION_COOKIE, client_key, cookie,
    current_session, now_ms, set_cookie,
};
use crate::cluster::MemberState;
use crate::cluster::sessions::Session;
use crate::config::Secret;
use crate::crypto::constant_time_eq;
use crate::serve::ClientAddr;

const STYLE: &str = include_str!("../../assets/style.css");
const SCRIPT: &str = include_str!("../../assets/settings.js");

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Security headers for every page.
fn page(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

fn layout(title: &str, csrf: Option<&str>, body: &str) -> String {
    let meta = csrf
        .map(|t| format!("<meta name=\"csrf-token\" content=\"{}\">", esc(t)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{meta}\
<title>{} · Fleet Dashboard</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head>\
<body><header class=\"top\"><span class=\"brand\">Fleet Dashboard</span></header>\
<main>{body}</main><script src=\"/static/settings.js\"></script></body></html>\n",
        esc(title)
    )
}

pub async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
        .into_response()
}

pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        SCRIPT,
    )
        .into_response()
}

pub async fn index() -> Redirect {
    Redirect::to("/settings")
}

fn login_page(app: &AppState, message: Option<&str>, status: StatusCode) -> Response {
    // Issued and signed by the server: a value the client plants is refused at login.
    let token = crate::crypto::issue_login_token(
        app.config
            .auth
            .web_password_hash
            .as_deref()
            .map(Secret::expose),
        now_ms(),
    );
    let msg = message
        .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m)))
        .unwrap_or_default();
    let body = format!(
        "<section class=\"card narrow\"><h1>Log in</h1>{msg}\
<form method=\"post\" action=\"/login\">\
<input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
<label>Username <input name=\"username\" autocomplete=\"username\" required autofocus></label>\
<label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
<button type=\"submit\">Log in</button></form></section>"
    );
    let mut resp = page(status, layout("Log in", None, &body));
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(app, LOGIN_COOKIE, &token, Some(600)),
    );
    resp
}

pub async fn login_form(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if current_session(&app, &headers).await.is_some() {
        return Redirect::to("/settings").into_response();
    }
    login_page(&app, None, StatusCode::OK)
}

/// The login form's fields.
#[derive(Debug, serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: Secret,
    #[serde(default)]
    csrf: Secret,
}

pub async fn login(
    State(app): State<AppState>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    // Per client and per node, never per user: a lockout by user name would let anyone keep
    // the admin out by failing as "admin" (issue 14).
    let ip_key = client_key(peer.ip());
    // Taken before the password is checked, so concurrent attempts cannot overshoot the
    // budget; given back when the attempt ends any other way than a failed check.
    let Some(place) = app.limiter.reserve_global() else {
        log::warn!(
            "login refused for {}: more than {} failed logins on this node in the last minute",
            peer.ip(),
            GLOBAL_LOGIN_FAILURES
        );
        return login_page(
            &app,
            Some("Too many failed logins on this server. Wait a minute and try again."),
            StatusCode::TOO_MANY_REQUESTS,
        );
    };
    if app.limiter.is_blocked(&ip_key) {
        log::warn!(
            "login throttled for {} (user {:?})",
            peer.ip(),
            form.username
        );
        return login_page(
            &app,
            Some("Too many login attempts. Wait a minute and try again."),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let cookie_token = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if form.csrf.is_empty()
        || !constant_time_eq(form.csrf.expose().as_bytes(), cookie_token.as_bytes())
        || !crate::crypto::check_login_token(
            app.config
                .auth
                .web_password_hash
                .as_deref()
                .map(Secret::expose),
            form.csrf.expose(),
            now_ms(),
        )
    {
        return login_page(
            &app,
            Some("The login form expired. Please try again."),
            StatusCode::FORBIDDEN,
        );
    }
    let auth_cfg = &app.config.auth;
    let user_ok = constant_time_eq(form.username.as_bytes(), auth_cfg.web_username.as_bytes());
    // Verify even for a wrong user name, so timing does not tell which part was wrong.
    // Off the async workers, a few at a time (`auth::Verifier`).
    let pass_ok = match &auth_cfg.web_password_hash {
        Some(h) => match app
            .limiter
            .verifier
            .verify(form.password.expose(), h.expose())
            .await
        {
            Ok(ok) => ok,
            Err(Busy) => {
                log::warn!("login from {} refused: too many logins waiting", peer.ip());
                return login_page(
                    &app,
                    Some("The server is busy checking other logins. Try again in a moment."),
                    StatusCode::SERVICE_UNAVAILABLE,
                );
            }
        },
        None => false,
    };
    if !(user_ok && pass_ok) {
        place.failed();
        app.limiter.fail(&ip_key);
        log::warn!("failed login from {} (user {:?})", peer.ip(), form.username);
        let msg = if auth_cfg.web_password_hash.is_none() {
            "No dashboard password is configured (auth.web_password_hash)."
        } else {
            "Invalid username or password."
        };
        return login_page(&app, Some(msg), StatusCode::UNAUTHORIZED);
    }
    app.limiter.clear(&ip_key);
    // Sign the session with the key the password derives (one more Argon2id run, off the
    // async workers); nodes hold only the public key, so none can mint a session.
    let (Some(hash), Some(public)) = (
        auth_cfg.web_password_hash.clone(),
        auth_cfg.session_public_key.clone(),
    ) else {
        log::error!(
            "login refused: auth.session_public_key is not configured (`fleet-server config hash-password` prints it)"
        );
        return login_page(
            &app,
            Some(
                "This server has no session key configured (auth.session_public_key); see its log.",
            ),
            StatusCode::SERVICE_UNAVAILABLE,
        );
    };
    let password = form.password.clone();
    let derived = tokio::task::spawn_blocking(move || {
        crate::crypto::derive_key(password.expose(), hash.expose())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let key = match derived {
        Ok(k) if crate::crypto::public_key_text(&k) == public.as_str() => k,
        Ok(_) => {
            log::error!(
                "login refused: auth.session_public_key does not belong to auth.web_password_hash (set both from one `fleet-server config hash-password`)"
            );
            return login_page(
                &app,
                Some("This server's session key does not match its password; see its log."),
                StatusCode::SERVICE_UNAVAILABLE,
            );
        }
        Err(e) => {
            log::error!("login refused: {e}");
            return login_page(
                &app,
                Some("The session could not be signed; try again shortly."),
                StatusCode::SERVICE_UNAVAILABLE,
            );
        }
    };
    let sid = crate::crypto::random_hex(32);
    let created_ms = now_ms();
    let mut session = Session {
        user: auth_cfg.web_username.to_string(),
        csrf: Secret::new(crate::crypto::random_hex(32)),
        created_ms,
        expires_ms: created_ms
            + crate::crypto::SESSION_MAX_MS.max(app.session_ttl().as_millis() as u64),
        sig: String::new(),
    };
    session.sig = crate::crypto::sign(
        &key,
        &crate::crypto::session_message(
            &crate::cluster::sessions::digest(&sid),
            &session.user,
            session.csrf.expose(),
            session.created_ms,
            session.expires_ms,
        ),
    );
    if let Err(e) = app.sessions.put(&sid, &session, app.session_ttl()).await {
        log::error!("cannot store a session: {e}");
        return login_page(
            &app,
            Some("The session store is unavailable; try again shortly."),
            StatusCode::SERVICE_UNAVAILABLE,
        );
    }
    log::info!("🔑 {} logged in from {}", session.user, peer.ip());
    let mut resp = Redirect::to("/settings").into_response();
    let headers = resp.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(&app, SESSION_COOKIE, &sid, None),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(&app, LOGIN_COOKIE, "", Some(0)),
    );
    resp
}

/// The logout form's field.
#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: Secret,
}

pub async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if let Some((sid, session)) = current_session(&app, &headers).await {
        if !constant_time_eq(
            form.csrf.expose().as_bytes(),
            session.csrf.expose().as_bytes(),
        ) {
            return (StatusCode::FORBIDDEN, "invalid CSRF token").into_response();
        }
        if let Err(e) = app.sessions.delete(&sid).await {
            log::warn!("logout: could not delete the session: {e}");
        }
        log::info!("🔒 {} logged out", session.user);
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&app, SESSION_COOKIE, "", Some(0)),
    );
    resp
}

fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

pub async fn settings(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let Some((_, session)) = current_session(&app, &headers).await else {
        return Redirect::to("/login").into_response();
    };
    let csrf = session.csrf.expose();
    let mut body = String::new();
    body.push_str(&format!(
        "<div class=\"titlebar\"><h1>⚙️ Settings</h1>\
<form method=\"post\" action=\"/logout\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<span class=\"muted\">{}</span> <button class=\"link\" type=\"submit\">Log out</button></form></div>",
        esc(csrf),
        esc(&session.user)
    ));
    body.push_str(
        "<section class=\"card\" id=\"cluster-node-installer\"><h2>📦 Cluster Node Installer</h2>",
    );
    match &app.backend {
        None => body.push_str(
            "<div class=\"status warn\" id=\"cluster-status\">⚠️ Cluster mode not enabled</div>\
<p>Node packages copy this server's cluster settings, so cluster mode is needed first. \
Enable it in the configuration and restart the server:</p>\
<pre>cluster:\n  enabled: true\n  backend: redis\n  redis_host: \"redis.company.com\"\n  redis_password: \"password\"\n\nsessions:\n  backend: redis</pre>\
<pre>sudo systemctl restart fleet-server   # or: sudo launchctl kickstart -k system/com.fleet.server.cluster</pre>",
        ),
        Some(backend) => {
            // The count from the backend's counter, and only the first page of the list: the
            // page is for people, and a 10,000-member list is for the API's pages.
            // Each call within the backend's own deadline.
            let listed = async {
                let count = backend.active_count().await?;
                let (page, more) = backend.members_page(NODES_SHOWN, None).await?;
                Ok::<_, crate::cluster::ClusterError>((count, page, more.is_some()))
            }
            .await;
            let (active_count, members, more, problem) = match listed {
                Ok((n, m, more)) => (n, m, more, None),
                Err(e) => (0, Vec::new(), false, Some(e.to_string())),
            };
            body.push_str("<div class=\"status ok\" id=\"cluster-status\">✅ Cluster Mode Enabled</div>");
            if let Some(p) = &problem {
                body.push_str(&format!(
                    "<p class=\"error\" role=\"alert\">The cluster backend is unavailable: {}</p>",
                    esc(p)
                ));
            }
            body.push_str(&format!(
                "<dl class=\"facts\"><dt>Backend</dt><dd id=\"backend\">{}</dd>\
<dt>Active Nodes</dt><dd id=\"active-nodes\">{}</dd>\
<dt>This Node ID</dt><dd id=\"this-node\">{}</dd></dl>",
                esc(backend.kind().as_str()),
                if problem.is_some() {
                    "?".to_string()
                } else {
                    active_count.to_string()
                },
                esc(&app.node.id)
            ));
            if app.config.package.allow_foreign_binaries {
                body.push_str("<p class=\"warn-text\">⚠️ Development mode: packages carry binaries that may not fit the target (package.allow_foreign_binaries).</p>");
            }
            body.push_str(&signing_note(app.builder.signing()));
            // Only the formats this node can build (a node carries its own platform's template).
            let macos = crate::app::package::can_build(&app.config, crate::app::package::Format::Pkg);
            let linux = crate::app::package::can_build(&app.config, crate::app::package::Format::Bundle);
            body.push_str(&format!(
                "<h3>Build a node package</h3>\
<form id=\"build-form\" class=\"grid\" autocomplete=\"off\">\
<label>Node Name <input name=\"node_name\" id=\"node_name\" placeholder=\"server-03\" pattern=\"[a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?\" maxlength=\"63\">\
<small>Optional: leave empty to name the node after its hostname.</small></label>\
<label>Package Name <input name=\"package_name\" id=\"package_name\" placeholder=\"FleetServerClusterNode.pkg\" maxlength=\"100\">\
<small>Default: FleetServerClusterNode.pkg (Linux: &lt;node&gt;_provision.tar.gz).</small></label>\
<label>Format <select name=\"format\" id=\"format\">{format_options}</select>{format_notes}</label>\
<label>Expires <select name=\"expires\" id=\"expires\"><option value=\"1d\">in 1 day</option>\
<option value=\"{days}d\" selected>in {days} days</option><option value=\"30d\">in 30 days</option></select></label>\
<label>Ethernet <select name=\"ethernet\" id=\"ethernet\"><option value=\"require\">require wired Ethernet</option>\
<option value=\"allow-virtual\">also accept virtual Ethernet (VMs)</option><option value=\"skip\">do not check</option></select></label>\
<label class=\"check\"><input type=\"checkbox\" name=\"no_enrollment\" id=\"no_enrollment\"> Offline install (no enrollment)\
<small>Only for a node that cannot reach the cluster at first start: the package then carries the cluster's long-lived secrets.</small></label>\
<label class=\"check\"><input type=\"checkbox\" name=\"download_link\" id=\"download_link\"> Direct download link (Method C)\
<small>Keep the package on this node behind a single-use link (at most a day) to fetch with <code>curl</code> on the new machine.</small></label>\
<label class=\"check\"><input type=\"checkbox\" name=\"upgrade\" id=\"upgrade\"> Upgrade package (for installed nodes)\
<small>This node's binaries for every node of the format's platform: installed over a node it replaces fleet-server and restarts it, keeping its configuration, state and node id. It carries no configuration or secret (node name, expiry, Ethernet and the options above do not apply); a machine that is not a node refuses it.</small></label>\
<div class=\"actions\"><button type=\"submit\" id=\"build\">📦 Build Cluster Node Package</button></div>\
</form><p id=\"build-status\" role=\"status\" aria-live=\"polite\"></p>\
<div id=\"download-link\" hidden><p>On the new machine (the link works once):</p>\
<pre id=\"download-curl\"></pre><pre id=\"download-install\"></pre></div>\
<p class=\"muted\">⚠️ Until it is used, a package can enroll one machine into this cluster: keep it private, \
transfer it over encrypted channels, and revoke it below if it goes astray. An offline package carries the \
cluster's keys: delete it after installation.</p>",
                days = app.config.package.expiry_days,
                format_options = format_options(&macos, &linux),
                format_notes = [&macos, &linux]
                    .into_iter()
                    .filter_map(|r| r.as_ref().err())
                    .map(|why| format!("<small class=\"format-missing\">{}</small>", esc(why)))
                    .collect::<String>(),
            ));
            if backend.supports_enrollment() {
                let pending = backend.list_enrollments().await.unwrap_or_default();
                body.push_str("<h3>Pending packages</h3><p class=\"muted\">Each package enrolls one node, once, before it expires. Revoke a package that was lost or not needed.</p>");
                body.push_str("<div class=\"table-wrap\"><table id=\"pending\"><thead><tr><th>Package</th><th>Node</th><th>Built by</th><th>Expires</th><th></th></tr></thead><tbody>");
                for r in &pending {
                    body.push_str(&format!(
                        "<tr data-token=\"{t}\"><td><code>{short}</code></td><td>{node}</td><td>{by}</td><td>{exp}</td><td><button class=\"danger revoke\" data-token=\"{t}\">Revoke</button></td></tr>",
                        t = esc(&r.token_id),
                        short = esc(&r.token_id.chars().take(12).collect::<String>()),
                        node = esc(if r.node_name.is_empty() { "(hostname)" } else { &r.node_name }),
                        by = esc(&r.built_by),
                        exp = esc(&crate::logging::timestamp(UNIX_EPOCH + Duration::from_millis(r.expires_ms))),
                    ));
                }
                if pending.is_empty() {
                    body.push_str("<tr class=\"empty\"><td colspan=\"5\" class=\"muted\">No pending packages.</td></tr>");
                }
                body.push_str("</tbody></table></div>");
            }
            let recent: Vec<_> = backend
                .events(200)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.kind == crate::cluster::EventKind::PackageBuilt)
                .take(10)
                .collect();
            if !recent.is_empty() {
                body.push_str("<h3>Recent packages</h3><div class=\"table-wrap\"><table id=\"recent\"><thead><tr><th>Built</th><th>Node</th><th>By</th><th>Kind</th></tr></thead><tbody>");
                for e in &recent {
                    let kind = if let Some(v) = e.detail.get("upgrade") {
                        format!("upgrade to {} (no secrets)", esc(v))
                    } else if e.detail.get("enrollment").map(String::as_str) == Some("yes") {
                        "single-use enrollment token".to_string()
                    } else {
                        "<span class=\"warn-text\">⚠️ carries long-lived secrets</span>".to_string()
                    };
                    let node = e.detail.get("node_name").cloned().unwrap_or_default();
                    body.push_str(&format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{kind}</td></tr>",
                        esc(&crate::logging::timestamp(UNIX_EPOCH + Duration::from_millis(e.at_ms))),
                        esc(if e.detail.contains_key("upgrade") {
                            "(installed nodes)"
                        } else if node.is_empty() {
                            "(hostname)"
                        } else {
                            &node
                        }),
                        esc(e.detail.get("by").map(String::as_str).unwrap_or_default()),
                    ));
                }
                body.push_str("</tbody></table></div>");
            }
            body.push_str("<h3>Nodes</h3><div class=\"table-wrap\"><table id=\"nodes\"><thead><tr><th>Name</th><th>ID</th><th>Addresses</th><th>State</th><th>Last heartbeat</th><th>Version</th><th></th></tr></thead><tbody>");
            for m in &members {
                let remove = if m.node.id == app.node.id {
                    "<span class=\"muted\">this node</span>".to_string()
                } else {
                    format!(
                        "<button class=\"danger remove\" data-node=\"{}\">Remove</button>",
                        esc(&m.node.id)
                    )
                };
                body.push_str(&format!(
                    "<tr data-node=\"{id}\"><td>{name}</td><td><code>{id}</code></td><td>{addr}</td><td class=\"state-{state}\">{state}</td><td>{ago}</td><td>{version}</td><td>{remove}</td></tr>",
                    id = esc(&m.node.id),
                    name = esc(&m.node.name),
                    addr = esc(&m.node.addresses.join(", ")),
                    state = match m.state {
                        // A record that fails validation is not trusted (issue 14).
                        _ if m.node.validate().is_err() => "invalid",
                        MemberState::Active => "active",
                        MemberState::Expired => "expired",
                    },
                    ago = if m.age_known { ago(m.age_ms) } else { "within the timeout".into() },
                    version = if crate::cluster::is_older_version(&m.node.version, &app.node.version) {
                        format!(
                            "<span class=\"warn-text older\" title=\"older than this node ({})\">{} ⬆︎ older</span>",
                            esc(&app.node.version),
                            esc(&m.node.version)
                        )
                    } else {
                        esc(&m.node.version)
                    },
                ));
            }
            body.push_str("</tbody></table></div>");
            if more {
                body.push_str(&format!(
                    "<p class=\"muted\" id=\"nodes-more\">The first {NODES_SHOWN} nodes by name; the API lists them all: <code>GET /api/fleet/cluster/nodes?limit=&amp;cursor=</code>.</p>"
                ));
            }
            body.push_str("<h3>Load balancer views</h3><p class=\"muted\">Load balancers and monitors that follow the nodes above by themselves (see the README). The URLs need the API key.</p><div class=\"table-wrap\"><table id=\"lb-views\"><thead><tr><th>For</th><th>URL or command</th></tr></thead><tbody>");
            for v in crate::lb::views(&app.node.url) {
                body.push_str(&format!(
                    "<tr><td>{}</td><td><code>{}</code></td></tr>",
                    esc(v.0),
                    esc(&v.1)
                ));
            }
            body.push_str("</tbody></table></div>");
        }
    }
    body.push_str("</section>");
    page(StatusCode::OK, layout("Settings", Some(csrf), &body))
}

/// Nodes the Settings page lists (the first page, by name).
const NODES_SHOWN: usize = 500;

/// The Format menu: the formats this node can build, a macOS package first.
fn format_options(macos: &Result<(), String>, linux: &Result<(), String>) -> String {
    let mut o = String::new();
    if macos.is_ok() {
        o.push_str("<option value=\"pkg\" selected>macOS package (.pkg)</option><option value=\"component\">macOS component package (.pkg, no Distribution)</option>");
    }
    if linux.is_ok() {
        o.push_str("<option value=\"bundle\">Linux provision bundle (.tar.gz)</option>");
    }
    o
}

/// Whether the macOS packages this page builds are signed, and by whom.
fn signing_note(identity: Option<&fleet_package::SigningIdentity>) -> String {
    match identity {
        Some(id) => format!(
            "<p id=\"signing\" class=\"muted\">🔏 macOS packages are signed by {} ({}; certificate valid until {}).</p>",
            esc(&id.subject()),
            if id.is_developer_id_installer() {
                "Developer ID Installer"
            } else {
                "not a Developer ID Installer certificate: Installer and MDMs will not trust it"
            },
            esc(&id.not_after())
        ),
        None => "<p id=\"signing\" class=\"warn-text\">⚠️ macOS packages are not signed: MDMs and Gatekeeper want a signed package. Set package.signing (p12_file, password_file) in the configuration.</p>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_packages_are_said_to_be() {
        let note = super::signing_note(None);
        assert!(note.contains("macOS packages are not signed"), "{note}");
        assert!(note.contains("package.signing"), "{note}");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
