//! `fleet-server package build --upgrade`: an upgrade package for installed nodes, written,
//! recorded, and how to install it.

use std::path::PathBuf;
use std::sync::Arc;

use super::runtime;

/// `package build --upgrade`: builds, writes, records the event, says how to install it.
pub(super) fn build_upgrade_cli(
    c: &crate::config::Config,
    builder: &crate::app::package::Builder,
    req: crate::app::upgrade::UpgradeRequest,
    output: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let c = Arc::new(c.clone());
    let built_by = req.built_by.clone();
    let (path, built) = rt.block_on(async {
        let built = crate::app::upgrade::build_upgrade_async(builder, &c, req).await?;
        let path = output.unwrap_or_else(|| PathBuf::from(&built.file_name));
        fleet_package::write_atomically(&path, &built.bytes, force)?;
        let backend = if c.cluster.enabled {
            crate::cluster::open(&c).ok()
        } else {
            None
        };
        crate::app::upgrade::record_built(backend.as_deref(), &built, &built_by).await;
        anyhow::Ok((path, built))
    })?;
    println!(
        "✅ Built the upgrade package {} ({} bytes)",
        path.display(),
        built.bytes.len()
    );
    println!(
        "   Installs fleet-server {} over an installed node: binaries only, no configuration, token or key",
        built.version
    );
    if built.foreign_binaries {
        println!(
            "   ⚠️  Development build: the binaries do not fit the target (--allow-foreign-binaries)"
        );
    }
    if built.format.is_macos() {
        match &built.signed_by {
            Some(who) => println!("   Signed by: {who}"),
            None => println!(
                "   Unsigned (MDMs and Gatekeeper want a signed package: --sign-p12 or package.signing)"
            ),
        }
        println!(
            "   Install: sudo installer -pkg {} -target /",
            built.file_name
        );
    } else {
        println!(
            "   Install: sudo tar -xzf {} && cd {} && sudo ./provision.sh",
            built.file_name,
            fleet_package::UPGRADE_BUNDLE_DIR
        );
    }
    println!("   On a machine that is not a node it refuses (exit code 50) and installs nothing");
    Ok(())
}
