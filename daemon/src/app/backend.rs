//! The opener of the commands that need a cluster (`cluster status|nodes|info`, `lb`,
//! `package list|revoke`): refused, with the same advice everywhere, when cluster mode is off.
//! (Builds open the backend only when cluster mode is on, and build without one otherwise.)

use std::sync::Arc;

use crate::cluster::{self, Membership};
use crate::config::Config;

/// The configuration's backend; an error that says how to enable cluster mode when it is off.
pub fn open(config: &Config) -> anyhow::Result<Arc<dyn Membership>> {
    if !config.cluster.enabled {
        anyhow::bail!(
            "Cluster mode not enabled: set cluster.enabled: true (and a backend) in the configuration"
        );
    }
    Ok(cluster::open(config)?)
}
