//! `fleet-server config check | hash-password | init`: their arguments and what they print.

use anyhow::Context;

use super::{BackendArg, ConfigCommand};
use crate::app::config::{InitOptions, config_init};
use crate::config::{BackendKind, Config, default_config_path};

pub(super) fn run(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { path } => {
            let path = path.unwrap_or_else(default_config_path);
            let c = Config::load(&path)?;
            println!(
                "✅ {} is valid (cluster {}, backend {})",
                path.display(),
                if c.cluster.enabled {
                    "enabled"
                } else {
                    "not enabled"
                },
                c.cluster.backend
            );
            Ok(())
        }
        ConfigCommand::HashPassword => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password on standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!("no password on standard input");
            }
            // Both lines go under `auth:`: the hash checks logins, the public key checks the
            // sessions that logins sign.
            let (hash, public) =
                crate::crypto::credentials_for(password).map_err(anyhow::Error::msg)?;
            println!("web_password_hash: \"{hash}\"");
            println!("session_public_key: \"{public}\"");
            Ok(())
        }
        ConfigCommand::Init {
            output,
            backend,
            storage_path,
            redis_host,
            redis_port,
            state_dir,
            host,
            port,
            node_name,
            redis_password_file,
            template_dir,
            allow_foreign_binaries,
            force,
        } => {
            let redis_password = match redis_password_file {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                ),
                None => None,
            };
            let opts = InitOptions {
                backend: match backend {
                    BackendArg::Redis => BackendKind::Redis,
                    BackendArg::Storage => BackendKind::Storage,
                },
                storage_path,
                redis_host,
                redis_port,
                state_dir,
                host,
                port,
                node_name,
                redis_password: redis_password.map(crate::config::Secret::new),
                template_dir,
                allow_foreign_binaries,
            };
            let (password, api_key) = config_init(&output, &opts, force)?;
            println!("✅ Wrote {}", output.display());
            println!("   Dashboard login: admin / {password}");
            println!("   API key:         {api_key}");
            println!("   (shown once: they are stored only in that file)");
            Ok(())
        }
    }
}
