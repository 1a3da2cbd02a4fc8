//! Discovery documents for monitors and proxies that poll over HTTP: Prometheus's
//! `http_sd_configs` list and Traefik's HTTP provider configuration. Pure functions of the
//! target list; the HTTP handlers in `http/api.rs` serve them behind the API key.

use serde_json::{Value, json};

use super::{HEALTH_PATH, Target};

/// Prometheus `http_sd_configs`: one group per node (each has its own labels), the full list
/// every time, `[]` when no node is active. Label names match `[a-zA-Z_][a-zA-Z0-9_]*`;
/// `__scheme__` tells Prometheus to scrape a TLS node over https.
pub fn prometheus(targets: &[Target], backend: &str) -> Value {
    Value::Array(
        targets
            .iter()
            .map(|t| {
                json!({
                    "targets": [t.host_port()],
                    "labels": {
                        "__scheme__": t.scheme,
                        "node_id": t.id,
                        "node_name": t.name,
                        "backend": backend,
                        "version": t.version,
                    }
                })
            })
            .collect(),
    )
}

/// Traefik's HTTP provider: a `loadBalancer` service `service` whose servers are the active
/// nodes' URLs, health-checked on the nodes' health endpoint, and a router sending every path
/// to it (Traefik ignores a service no router uses).
pub fn traefik(targets: &[Target], service: &str) -> Value {
    let servers: Vec<Value> = targets.iter().map(|t| json!({ "url": t.url() })).collect();
    json!({
        "http": {
            "routers": {
                service: {
                    "rule": "PathPrefix(`/`)",
                    "service": service,
                }
            },
            "services": {
                service: {
                    "loadBalancer": {
                        "servers": servers,
                        "healthCheck": {
                            "path": HEALTH_PATH,
                            "interval": "5s",
                            "timeout": "2s",
                        },
                        "passHostHeader": true,
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::MemberState;
    use crate::lb::targets;
    use crate::lb::tests::member;

    #[test]
    fn prometheus_lists_every_active_node() {
        let (t, _) = targets(&[
            member("a-111111", "http://192.0.2.1:8768", MemberState::Active),
            member("b-222222", "https://192.0.2.2:8768", MemberState::Active),
            member("c-333333", "http://192.0.2.3:8768", MemberState::Expired),
        ]);
        let v = prometheus(&t, "redis");
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[0]["targets"][0], "192.0.2.1:8768");
        assert_eq!(v[0]["labels"]["node_id"], "a-111111");
        assert_eq!(v[0]["labels"]["node_name"], "a");
        assert_eq!(v[1]["labels"]["__scheme__"], "https");
        assert_eq!(v[1]["labels"]["backend"], "redis");
        assert_eq!(prometheus(&[], "redis"), json!([]));
    }

    #[test]
    fn traefik_service_has_the_urls() {
        let (t, _) = targets(&[member(
            "a-111111",
            "http://192.0.2.1:8768",
            MemberState::Active,
        )]);
        let v = traefik(&t, "fleet");
        assert_eq!(
            v["http"]["services"]["fleet"]["loadBalancer"]["servers"][0]["url"],
            "http://192.0.2.1:8768"
        );
        assert_eq!(v["http"]["routers"]["fleet"]["service"], "fleet");
    }
}
