//! `fleet-server package build | list | revoke | inspect`: their arguments and what each
//! prints; the build itself goes through `app::build` (with a file sink).

use std::sync::Arc;

use anyhow::Context;

use super::{PackageCommand, load, runtime, whoami};
use crate::app::build::{Delivered, Sink, build};
use crate::app::package as packages;

pub(super) fn run(command: PackageCommand) -> anyhow::Result<()> {
    match command {
        PackageCommand::Build {
            config,
            node_name,
            format,
            sign_p12,
            sign_password_file,
            timestamp_url,
            allow_any_certificate,
            output,
            package_name,
            expires,
            passphrase_file,
            ethernet,
            template_dir,
            allow_foreign_binaries,
            force,
            ips,
            no_enrollment,
            upgrade,
        } => {
            let c = load(config)?;
            let format: packages::Format = format.parse().map_err(anyhow::Error::msg)?;
            // The identity is loaded (and checked) before anything is built or written.
            let signing = match (sign_p12, sign_password_file) {
                (Some(p12_file), Some(password_file)) => {
                    if !format.is_macos() {
                        anyhow::bail!(
                            "--sign-p12 signs macOS packages; a {} is not signed",
                            format.as_str()
                        );
                    }
                    Some(crate::config::SigningConfig {
                        p12_file,
                        password_file,
                        timestamp_url: timestamp_url.clone(),
                        allow_any_certificate,
                    })
                }
                _ => c.package.signing.clone().map(|mut s| {
                    if timestamp_url.is_some() {
                        s.timestamp_url = timestamp_url.clone();
                    }
                    s.allow_any_certificate |= allow_any_certificate;
                    s
                }),
            };
            let identity = match signing.as_ref().filter(|_| format.is_macos()) {
                Some(s) => Some(packages::load_signing(s)?),
                None => None,
            };
            if upgrade {
                let req = crate::app::upgrade::UpgradeRequest {
                    format,
                    package_name,
                    template_dir,
                    allow_foreign_binaries,
                    built_by: format!("cli:{}", whoami()),
                };
                let builder = packages::Builder::new().with_signing(identity);
                return super::upgrade::build_upgrade_cli(&c, &builder, req, output, force);
            }
            let expires = match expires {
                Some(e) => packages::parse_expiry(&e).map_err(anyhow::Error::msg)?,
                None => std::time::Duration::from_secs(u64::from(c.package.expiry_days) * 86_400),
            };
            let passphrase = match passphrase_file {
                Some(p) => {
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("reading the passphrase file {}", p.display()))?;
                    let pass = text.trim_end_matches(['\r', '\n']);
                    if pass.len() < 8 {
                        anyhow::bail!(
                            "{}: the passphrase must have at least 8 characters",
                            p.display()
                        );
                    }
                    Some(crate::config::Secret::new(pass))
                }
                None => None,
            };
            let req = packages::BuildRequest {
                node_name,
                format,
                package_name,
                expires,
                ethernet: ethernet.parse().map_err(anyhow::Error::msg)?,
                passphrase,
                template_dir,
                allow_foreign_binaries,
                built_by: format!("cli:{}", whoami()),
                ips,
                no_enrollment,
                ..Default::default()
            };
            let rt = runtime()?;
            let c = Arc::new(c);
            let passphrase = req.passphrase.is_some();
            let (path, cb) = rt.block_on(async {
                let backend = if c.cluster.enabled {
                    Some(crate::cluster::open(&c)?)
                } else {
                    None
                };
                let done = build(
                    &c,
                    backend.as_deref(),
                    &packages::Builder::new().with_signing(identity),
                    req,
                    Sink::File {
                        path: output,
                        force,
                    },
                )
                .await?;
                let Delivered::File(path) = done.delivered else {
                    unreachable!("a file sink delivers a file")
                };
                anyhow::Ok((path, done.build))
            })?;
            let (built, shared_note, enrollment_note) =
                (cb.built, cb.shared_credentials, cb.enrollment_note);
            print_built(&path, &built, passphrase);
            if !built.ips.is_empty() {
                let ips: Vec<String> = built.ips.iter().map(ToString::to_string).collect();
                println!("   Intended address: {}", ips.join(", "));
            }
            // The backend whose user this is (etcd or Redis), never a hard-coded name.
            let backend_name = c.cluster.backend.as_str();
            if let Some(user) = &built.node_user {
                println!(
                    "   {backend_name} user: {user} (its own, limited to the cluster prefix {}; deleted when the node is removed)",
                    c.cluster.key_prefix
                );
            }
            match (&built.enrollment, &enrollment_note) {
                (Some(rec), _) => println!(
                    "   Enrollment: single-use token {}… (pending until redeemed by the node; `fleet-server package revoke {}` cancels it)",
                    &rec.token_id[..8],
                    &rec.token_id[..12]
                ),
                (None, Some(note)) => println!("   ⚠️  {note}"),
                (None, None) => {}
            }
            if let Some(why) = shared_note {
                println!("   ⚠️  {backend_name} user: shared with the primary: {why}");
            }
            Ok(())
        }
        PackageCommand::List { config, json } => {
            let c = load(config)?;
            let rt = runtime()?;
            rt.block_on(super::cluster::package_list(
                &c,
                json,
                &mut std::io::stdout().lock(),
            ))
        }
        PackageCommand::Revoke { config, id } => {
            let c = load(config)?;
            let rt = runtime()?;
            rt.block_on(super::cluster::package_revoke(
                &c,
                &id,
                &format!("cli:{}", whoami()),
                &mut std::io::stdout().lock(),
            ))
        }
        PackageCommand::Inspect { file } => {
            let report = fleet_package::inspect(&file)?;
            print!("{report}");
            if let Some(sealed) = &report.sealed_config {
                match fleet_installer_stub::sealed::Header::parse(sealed) {
                    Ok(h) => println!("Sealed configuration:\n{h}"),
                    Err(e) => println!("Sealed configuration: unreadable header ({e})"),
                }
            }
            if report.signature.as_ref().is_some_and(|s| !s.verifies()) {
                anyhow::bail!(
                    "{}: the package's signature does not verify",
                    file.display()
                );
            }
            Ok(())
        }
    }
}

fn print_built(path: &std::path::Path, b: &packages::BuiltPackage, passphrase: bool) {
    println!("✅ Built {} ({} bytes)", path.display(), b.bytes.len());
    println!(
        "   Node: {}",
        if b.node_name.is_empty() {
            "(named after its hostname)"
        } else {
            &b.node_name
        }
    );
    println!(
        "   Package id: {}",
        &b.package_id[..12.min(b.package_id.len())]
    );
    println!(
        "   Installable until: {} UTC",
        crate::logging::timestamp(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(b.not_after)
        )
    );
    if passphrase {
        println!(
            "   Sealed with the passphrase: put it in the install.passphrase file on the new machine (see the README)"
        );
    }
    if b.foreign_binaries {
        println!(
            "   ⚠️  Development build: the binaries do not fit the target (--allow-foreign-binaries)"
        );
    }
    if b.format.is_macos() {
        match &b.signed_by {
            Some(who) => println!("   Signed by: {who}"),
            None => println!(
                "   Unsigned (MDMs and Gatekeeper want a signed package: --sign-p12 or package.signing)"
            ),
        }
    }
    match b.format {
        packages::Format::Pkg | packages::Format::Component => {
            println!("   Install: sudo installer -pkg {} -target /", b.file_name)
        }
        packages::Format::Bundle => println!(
            "   Install: sudo tar -xzf {} && cd {}_provision && sudo ./provision.sh",
            b.file_name,
            if b.node_name.is_empty() {
                "node"
            } else {
                &b.node_name
            }
        ),
    }
}
