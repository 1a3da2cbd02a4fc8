//! The dashboard's fixtures: a browser-like HTTP client that keeps cookies and sends forms
//! (on [`crate::http`]), the shared web password and its configuration, and a dashboard node
//! on the storage backend.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use crate::http::{HttpResponse, http_over};
use crate::{Daemon, TEST_API_KEY, free_port};

pub const WEB_PASSWORD: &str = "correct-horse-battery";

/// How a [`Client`] opens each connection (e.g. from inside a network namespace).
pub type Connect = Box<dyn Fn() -> std::io::Result<TcpStream> + Send + Sync>;

/// A browser-like client: keeps cookies, sends forms and JSON. On loopback unless made with
/// [`Client::connecting`].
pub struct Client {
    pub cookies: BTreeMap<String, String>,
    /// The `Host` header.
    host: String,
    connect: Connect,
}

// By hand: the connector is a closure, and the cookies' values are sessions (only their names).
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.host)
            .field("cookies", &self.cookies.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(port: u16) -> Client {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Client::connecting(addr, Box::new(move || TcpStream::connect(addr)))
    }

    /// A client for the server at `addr` (its IP is the `Host` header) that opens each
    /// connection with `connect`.
    pub fn connecting(addr: SocketAddr, connect: Connect) -> Client {
        Client {
            cookies: BTreeMap::new(),
            host: addr.ip().to_string(),
            connect,
        }
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let stream =
            (self.connect)().unwrap_or_else(|e| panic!("connecting to {}: {e}", self.host));
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if !cookie.is_empty() {
            headers.push(("Cookie", &cookie));
        }
        let resp = http_over(stream, &self.host, method, path, &headers, body).expect("request");
        for c in resp.header_all("set-cookie") {
            let first = c.split(';').next().unwrap_or_default();
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() || c.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
        resp
    }

    pub fn get(&mut self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], b"")
    }

    pub fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> HttpResponse {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
    }

    /// The hidden `csrf` value of the page at `path`.
    pub fn form_token(&mut self, path: &str) -> String {
        let page = self.get(path).text();
        hidden_value(&page, "csrf").unwrap_or_else(|| panic!("no csrf field on {path}:\n{page}"))
    }

    /// Logs in through the form; returns the response to the POST.
    pub fn login(&mut self, user: &str, password: &str) -> HttpResponse {
        let token = self.form_token("/login");
        self.post_form(
            "/login",
            &[("username", user), ("password", password), ("csrf", &token)],
        )
    }

    /// The CSRF token the Settings page hands its script.
    pub fn page_csrf(&mut self) -> String {
        let page = self.get("/settings").text();
        let at = page
            .find("name=\"csrf-token\" content=\"")
            .unwrap_or_else(|| panic!("no csrf meta:\n{page}"));
        let rest = &page[at + "name=\"csrf-token\" content=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hidden_value(page: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\" value=\"");
    let at = page.find(&needle)? + needle.len();
    Some(page[at..at + page[at..].find('"')?].to_string())
}

/// A node template in `dir` holding this build's Linux binaries in both slots (on Linux a pkg
/// can only carry Linux binaries: the config allows foreign binaries for these tests).
pub fn node_template(dir: &Path) -> PathBuf {
    crate::pkginstall::node_template(&dir.join("node-template"))
}

/// Extra configuration for a node with the dashboard: password, template, sessions.
pub fn web_yaml(template: &Path, sessions: &str) -> String {
    // One hash for every node of a test, as a real cluster's nodes share the primary's: the
    // session key it derives must be the one every node checks with.
    static CREDENTIALS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (hash, public) = CREDENTIALS
        .get_or_init(|| fleet_server::crypto::credentials_for(WEB_PASSWORD).expect("credentials"));
    format!(
        "auth:\n  api_key: {TEST_API_KEY}\n  web_username: admin\n  web_password_hash: \"{hash}\"\n  session_public_key: \"{public}\"\nsessions:\n{sessions}package:\n  template_dir: {}\n  allow_foreign_binaries: true\n",
        template.display()
    )
}

/// Starts a dashboard node on the storage backend in `shared`.
pub fn start_web_node(name: &str, shared: &Path, extra: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\ncluster:\n  enabled: true\n  node_name: {name}\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n  backend: storage\n  storage_path: {}\n{extra}",
        dir.path().join("state").display(),
        shared.display()
    );
    Daemon::start_with_config(name, dir, port, &config)
}

/// Every scalar of a configuration as text, secrets with their values: what an attacker
/// holding a node's configuration could try.
pub fn config_values(c: &fleet_server::config::Config) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            serde_json::Value::Number(n) => out.push(n.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::to_value(c).unwrap(), &mut out);
    out
}

/// Tries each of `values` on the API of the node at `port` as `X-API-Key` and as a bearer
/// token, asserting 401 for each; returns how many requests were answered (values that cannot
/// be a header are skipped).
pub fn assert_no_value_opens_the_api(port: u16, values: &[String]) -> usize {
    let mut tried = 0;
    for v in values {
        if v.is_empty() || v.len() > 4096 || v.contains(['\r', '\n']) {
            continue;
        }
        for header in ["X-API-Key", "Authorization"] {
            let value = if header == "Authorization" {
                format!("Bearer {v}")
            } else {
                v.clone()
            };
            let Ok((status, _)) =
                crate::http("GET", port, "/api/fleet/cluster/nodes", &[(header, &value)])
            else {
                continue;
            };
            assert_eq!(
                status, 401,
                "{header} with a value of the node's config opened the API"
            );
            tried += 1;
        }
    }
    tried
}
