//! Redis ACL users made for packages: an enrollment user lives until its package expires, then
//! any node allowed to manage users deletes it in housekeeping.

use std::time::Duration;

use fleet_server::cluster::redis::RedisMembership;
use fleet_server::cluster::{Membership, Timing};
use fleet_server::config::Config;
use fleet_tests::RedisServer;

fn membership(redis: &RedisServer) -> RedisMembership {
    let text = format!("cluster:\n  enabled: true\n{}", redis.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("acl.yaml")).unwrap();
    RedisMembership::new(
        &c.cluster,
        Timing {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn expired_enrollment_users_are_deleted_by_housekeeping() {
    let redis = RedisServer::start_with(Some("acl-admin-pw"), &[]);
    let m = membership(&redis);
    let now = m.server_now_ms().await.unwrap();
    let (soon, _) = m
        .create_enrollment_user("0123456789abcdef0123456789abcdef", now + 800)
        .await
        .unwrap();
    let (later, _) = m
        .create_enrollment_user("fedcba9876543210fedcba9876543210", now + 3_600_000)
        .await
        .unwrap();
    assert_eq!(soon, "fleet-enroll-0123456789abcdef0123456789abcdef");
    let exists = |user: &str| {
        let r = redis.command(&["ACL", "GETUSER", user]).unwrap();
        !r.starts_with("*-1") && !r.starts_with("$-1")
    };
    m.housekeeping().await.unwrap();
    assert!(exists(&soon) && exists(&later), "nothing expired yet");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    m.housekeeping().await.unwrap();
    assert!(!exists(&soon), "the expired package's user is gone");
    assert!(exists(&later), "a valid package's user stays");
    // Idempotent.
    m.housekeeping().await.unwrap();
}
