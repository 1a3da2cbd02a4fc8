//! One check over every type that holds a secret: its `Debug` (what a log line or an error
//! would show) prints none of them.

use std::path::PathBuf;

use crate::config::{BackendKind, Config, Secret};

#[test]
fn no_secret_shows_in_debug() {
    const SECRET: &str = "s3cret-value-0123456789abcdef";
    let credential = crate::app::package::NodeCredential {
        user: "fleet-node-x".into(),
        password: Secret::new(SECRET),
    };
    let token = crate::app::enroll::Token {
        id: "0".repeat(32),
        secret: Secret::new(SECRET),
    };
    let request = crate::app::package::BuildRequest {
        passphrase: Some(Secret::new(SECRET)),
        node_credential: Some(credential.clone()),
        enrollment: Some(crate::app::package::EnrollmentPlan {
            token: token.clone(),
            user: Some(credential.clone()),
        }),
        ..Default::default()
    };
    let init = crate::app::config::InitOptions {
        backend: BackendKind::Redis,
        storage_path: None,
        redis_host: Some("192.0.2.1".into()),
        redis_port: 6379,
        state_dir: PathBuf::from("/var/lib/fleet-server"),
        host: "0.0.0.0".into(),
        port: 8768,
        node_name: None,
        redis_password: Some(Secret::new(SECRET)),
        template_dir: None,
        allow_foreign_binaries: false,
    };
    let config = Config::parse(
        &format!(
            "auth:\n  web_password_hash: \"$argon2id${SECRET}\"\n  web_password: {SECRET}\n  api_key: {SECRET}\n"
        ),
        std::path::Path::new("t.yaml"),
    )
    .unwrap();
    let form = |json: serde_json::Value| json.to_string();
    let login: crate::http::dashboard::LoginForm = serde_json::from_str(&form(
        serde_json::json!({"username": "admin", "password": SECRET, "csrf": SECRET}),
    ))
    .unwrap();
    let logout: crate::http::dashboard::CsrfForm =
        serde_json::from_str(&form(serde_json::json!({"csrf": SECRET}))).unwrap();
    let download: crate::http::api::DownloadQuery =
        serde_json::from_str(&form(serde_json::json!({"key": SECRET}))).unwrap();
    for (what, shown) in [
        ("NodeCredential", format!("{credential:?}")),
        ("Token", format!("{token:?}")),
        ("BuildRequest", format!("{request:?}")),
        ("InitOptions", format!("{init:?}")),
        ("AuthConfig", format!("{:?}", config.auth)),
        ("LoginForm", format!("{login:?}")),
        ("CsrfForm", format!("{logout:?}")),
        ("DownloadQuery", format!("{download:?}")),
    ] {
        assert!(!shown.contains(SECRET), "{what}: {shown}");
        assert!(
            shown.contains("***"),
            "{what} shows its secret as ***: {shown}"
        );
    }
}
