//! The one build path of the CLI and the Settings page, end to end: refuse a name or address a
//! live node holds, make the node's backend user and the enrollment plan, build (on a blocking
//! thread), store the enrollment, deliver (`Sink`: a file, a download link, the bytes), record
//! `package_built`, and discard every credential made for it when any step fails.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::downloads::{DownloadError, DownloadStore, Offered};
use super::package::{
    BuildError, BuildRequest, Builder, BuiltPackage, CredentialChoice, EnrollmentPlan,
    NodeCredential,
};
use crate::cluster::{Membership, UserGrant};
use crate::config::Config;

/// Where a built package goes.
#[derive(Debug)]
pub enum Sink {
    /// A file (the CLI): `path`, or the package's own name in the current directory; an
    /// existing file is replaced only with `force`.
    File { path: Option<PathBuf>, force: bool },
    /// Kept on this node behind a single-use link that lives `lifetime` (the page's Method C).
    Download {
        store: Arc<DownloadStore>,
        lifetime: Duration,
    },
    /// Handed back to the caller (the API's response body).
    Bytes,
}

/// Where the package went.
#[derive(Debug)]
pub enum Delivered {
    File(PathBuf),
    Download(Offered),
    Bytes,
}

/// Why a package was not delivered; every credential made for it is gone by then.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The package could not be kept for download.
    #[error(transparent)]
    Download(DownloadError),
    /// The blocking task that keeps it for download failed.
    #[error("the download task failed: {0}")]
    Task(String),
}

/// A package built and delivered.
#[derive(Debug)]
pub struct Outcome {
    pub build: ClusterBuild,
    pub delivered: Delivered,
}

/// Builds `req` for the cluster of `primary` (through `backend`, none without cluster mode),
/// delivers it to `sink`, records `package_built`. On any failure nothing of it remains: its
/// pending record, its enrollment user, its node user.
pub async fn build(
    primary: &Arc<Config>,
    backend: Option<&dyn Membership>,
    builder: &Builder,
    req: BuildRequest,
    sink: Sink,
) -> Result<Outcome, Failure> {
    let built_by = req.built_by.clone();
    let cb = build_for_cluster(primary, backend, builder, req.clone()).await?;
    let delivered = match deliver(&cb.built, sink).await {
        Ok(d) => d,
        Err(e) => {
            discard_built(primary, backend, &req, &cb).await;
            return Err(e);
        }
    };
    record_built(backend, &cb.built, &built_by).await;
    Ok(Outcome {
        build: cb,
        delivered,
    })
}

async fn deliver(built: &BuiltPackage, sink: Sink) -> Result<Delivered, Failure> {
    match sink {
        Sink::File { path, force } => {
            let path = path.unwrap_or_else(|| PathBuf::from(&built.file_name));
            write_package(&path, built, force)?;
            Ok(Delivered::File(path))
        }
        Sink::Download { store, lifetime } => {
            let (bytes, name) = (built.bytes.clone(), built.file_name.clone());
            let token = built.enrollment.as_ref().map(|r| r.token_id.clone());
            let not_after_ms = built.not_after * 1000;
            let offered = tokio::task::spawn_blocking(move || {
                store.offer(&name, &bytes, token.as_deref(), not_after_ms, lifetime)
            })
            .await
            .map_err(|e| Failure::Task(e.to_string()))?
            .map_err(Failure::Download)?;
            Ok(Delivered::Download(offered))
        }
        Sink::Bytes => Ok(Delivered::Bytes),
    }
}

/// Refuses a node name or an address that a live member holds, as `etcd_cluster_add.sh` does
/// (every backend). Only active members count: the name of a dead node may be taken again, so
/// a failed machine can be replaced. Nothing is reserved: two builds for the same name both
/// pass until one of the nodes joins (the second is then refused at join).
pub async fn check_available(
    backend: &dyn Membership,
    name: Option<&str>,
    ips: &[IpAddr],
) -> Result<(), BuildError> {
    // By index where the backend keeps one (Redis: the names and addresses hashes), not by
    // reading the whole member list.
    let holders = backend.live_holders(name, ips).await?;
    if let (Some(name), Some(holder)) = (name, holders.name) {
        return Err(BuildError::NameInUse {
            name: name.to_string(),
            holder,
        });
    }
    if let Some((ip, holder)) = holders.ip {
        return Err(BuildError::IpInUse { ip, holder });
    }
    Ok(())
}

/// Makes the new node a backend user of its own where the backend has users and the primary
/// may manage them (`cluster::BackendUsers`): limited to the cluster's key prefix and deleted
/// with the node. Otherwise the node carries the primary's credentials, and the reason says
/// why. `None`: no cluster, or a backend without users.
async fn node_credential(
    primary: &Config,
    node_name: Option<&str>,
) -> Result<Option<CredentialChoice>, BuildError> {
    if !primary.cluster.enabled {
        return Ok(None);
    }
    let backend = crate::cluster::open(primary)?;
    let Some(users) = backend.users() else {
        return Ok(None);
    };
    Ok(Some(match users.create_node_user(node_name).await? {
        UserGrant::Own { user, password } => {
            CredentialChoice::NodeUser(NodeCredential { user, password })
        }
        UserGrant::Shared(why) => CredentialChoice::Shared(why),
    }))
}

/// Deletes a node user made by [`node_credential`] for a build that then failed.
async fn discard_node_credential(
    primary: &Config,
    node_name: &str,
    cred: &NodeCredential,
) -> Result<(), BuildError> {
    let backend = crate::cluster::open(primary)?;
    match backend.users() {
        Some(users) => Ok(users.delete_node_user(node_name, &cred.user).await?),
        None => Ok(()),
    }
}

/// A package built for a running cluster, and what the caller should tell the admin.
#[derive(Debug)]
pub struct ClusterBuild {
    pub built: BuiltPackage,
    /// Why the node carries the primary's backend credentials instead of its own, if it does.
    pub shared_credentials: Option<String>,
    /// Why the package carries long-lived secrets instead of an enrollment token, if it does.
    pub enrollment_note: Option<String>,
    /// The node user made for this package (to discard if the package is then not delivered).
    pub credential: Option<NodeCredential>,
}

/// The one build path of the CLI and the Settings page: refuse a name or address a live node
/// holds, make a per-node backend user where the backend allows it, build (on a blocking
/// thread), and delete that user again when the build fails.
async fn build_for_cluster(
    primary: &Arc<Config>,
    backend: Option<&dyn Membership>,
    builder: &Builder,
    mut req: BuildRequest,
) -> Result<ClusterBuild, BuildError> {
    let mut shared_credentials = None;
    let mut enrollment_note = None;
    if let Some(backend) = backend {
        // Only the primary's credential builds (any package: one without enrollment too).
        backend
            .admin_only("build node packages")
            .await
            .map_err(BuildError::Cluster)?;
        check_available(backend, req.node_name.as_deref(), &req.ips).await?;
        // Expiries are counted on the backend's clock (the one housekeeping and Redis's
        // PXAT judge them by), not this machine's.
        let clock = backend.backend_now_ms().await?;
        req.clock_ms = Some(clock);
        match node_credential(primary, req.node_name.as_deref()).await? {
            Some(CredentialChoice::NodeUser(cred)) => req.node_credential = Some(cred),
            Some(CredentialChoice::Shared(why)) => shared_credentials = Some(why),
            None => {}
        }
        if req.no_enrollment {
            enrollment_note = Some(
                "built without enrollment (--no-enrollment): the package carries the cluster's long-lived secrets".to_string(),
            );
        } else if backend.supports_enrollment() {
            let token = super::enroll::Token::generate();
            let expires_ms = clock + req.expires.as_millis() as u64;
            let (user, shared) = match enrollment_user(backend, &token.id, expires_ms).await {
                Ok(u) => u,
                Err(e) => {
                    discard_after_failure(primary, &req).await;
                    return Err(e);
                }
            };
            if let Some(why) = shared {
                shared_credentials.get_or_insert(why);
            }
            req.enrollment = Some(EnrollmentPlan { token, user });
        } else {
            enrollment_note = Some(format!(
                "the {} backend keeps no enrollment records: the package carries the cluster's long-lived secrets",
                backend.kind()
            ));
        }
    }
    let (b, c, r) = (builder.clone(), primary.clone(), req.clone());
    let result = match tokio::task::spawn_blocking(move || b.build(&c, &r)).await {
        Ok(r) => r,
        Err(e) => Err(BuildError::Seal(format!("the build task failed: {e}"))),
    };
    let result = match (result, backend) {
        (Ok(built), Some(backend)) if built.enrollment.is_some() => {
            let stored = backend
                .put_enrollment(built.enrollment.as_ref().expect("checked above"))
                .await;
            stored.map(|()| built).map_err(BuildError::Cluster)
        }
        (r, _) => r,
    };
    match result {
        Ok(built) => Ok(ClusterBuild {
            built,
            shared_credentials,
            enrollment_note,
            credential: req.node_credential,
        }),
        Err(e) => {
            discard_after_failure(primary, &req).await;
            Err(e)
        }
    }
}

/// Makes the user that may only take this package's enrollment record, where the backend has
/// users. `None`: no users on this backend, or user management refused (the bootstrap then
/// carries the shared credentials, and the second value says why, for the build to tell).
async fn enrollment_user(
    backend: &dyn Membership,
    token_id: &str,
    expires_ms: u64,
) -> Result<(Option<NodeCredential>, Option<String>), BuildError> {
    let Some(users) = backend.users() else {
        return Ok((None, None));
    };
    match users.create_enrollment_user(token_id, expires_ms).await? {
        UserGrant::Own { user, password } => Ok((Some(NodeCredential { user, password }), None)),
        UserGrant::Shared(why) => Ok((None, Some(why))),
    }
}

/// Undoes a build that succeeded but was not delivered (the CLI could not write its file):
/// its pending enrollment record is revoked and every backend user made for it deleted, so a
/// failed build leaves nothing behind. Failures are logged, never fatal.
async fn discard_built(
    primary: &Config,
    backend: Option<&dyn Membership>,
    req: &BuildRequest,
    cb: &ClusterBuild,
) {
    if let (Some(b), Some(rec)) = (backend, &cb.built.enrollment) {
        if let Err(e) = b.revoke_enrollment(&rec.token_id).await {
            log::warn!("the pending record of this build remains: {e}");
        }
        // The enrollment user (the node's own user is discarded below, with its digest).
        let node_user = cb.credential.as_ref().map(|c| c.user.as_str());
        if let Some(users) = b.users() {
            for u in rec.users.iter().filter(|u| Some(u.as_str()) != node_user) {
                if let Err(e) = users.delete_user(u).await {
                    log::warn!("the enrollment user {u} made for this build remains: {e}");
                }
            }
        }
    }
    let mut sent = req.clone();
    sent.node_credential = cb.credential.clone();
    discard_after_failure(primary, &sent).await;
}

/// Deletes the backend users of a package that was not delivered (logged when it cannot be).
async fn discard_after_failure(primary: &Config, req: &BuildRequest) {
    if let (Some(cred), Some(name)) = (&req.node_credential, &req.node_name)
        && let Err(e) = discard_node_credential(primary, name, cred).await
    {
        log::warn!(
            "the backend user {} made for this build remains: {e}",
            cred.user
        );
    }
    if let Some(EnrollmentPlan { user: Some(u), .. }) = &req.enrollment
        && let Ok(backend) = crate::cluster::open(primary)
        && let Some(users) = backend.users()
        && let Err(e) = users.delete_user(&u.user).await
    {
        log::warn!(
            "the enrollment user {} made for this build remains: {e}",
            u.user
        );
    }
}

/// Records `package_built` in the cluster's events, through the backend the build used (best
/// effort: a build whose event cannot be written still succeeds, with a warning).
async fn record_built(backend: Option<&dyn Membership>, pkg: &BuiltPackage, by: &str) {
    let Some(backend) = backend else { return };
    let mut detail: std::collections::BTreeMap<String, String> = [
        ("by".to_string(), by.to_string()),
        ("node_name".to_string(), pkg.node_name.clone()),
        ("package_id".to_string(), pkg.package_id.clone()),
        ("format".to_string(), pkg.format.as_str().to_string()),
        ("not_after".to_string(), pkg.not_after.to_string()),
        (
            "enrollment".to_string(),
            if pkg.enrollment.is_some() {
                "yes"
            } else {
                "no"
            }
            .to_string(),
        ),
    ]
    .into();
    if !pkg.ips.is_empty() {
        let ips: Vec<String> = pkg.ips.iter().map(ToString::to_string).collect();
        detail.insert("ips".into(), ips.join(","));
    }
    if let Some(user) = &pkg.node_user {
        detail.insert("node_user".into(), user.clone());
    }
    let event = crate::cluster::Event::new(crate::cluster::EventKind::PackageBuilt, &pkg.node_name)
        .with_detail(detail);
    super::events::record(backend, &event, "package built").await;
}

/// Writes a built package to `path` (temporary file and rename; refuses to replace unless
/// `force`).
fn write_package(path: &Path, pkg: &BuiltPackage, force: bool) -> Result<(), BuildError> {
    Ok(fleet_package::write_atomically(path, &pkg.bytes, force)?)
}
