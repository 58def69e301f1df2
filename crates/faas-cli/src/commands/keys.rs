//! `faas keys create|list|revoke`: API keys, for admins.

use anyhow::Context;
use faas_api::{CreateKeyRequest, CreatedKey, KeyList, Role};
use reqwest::Method;

use crate::client::{Client, runtime};

#[derive(Debug, clap::Subcommand)]
pub enum KeysCmd {
    /// Mint a key for a tenant; the secret is printed once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: Option<String>,
        /// An admin key instead of a tenant key.
        #[arg(long)]
        admin: bool,
        /// The rate-limit tier (`[rate_limits.tiers]`); default: `default`.
        #[arg(long)]
        rate_tier: Option<String>,
    },
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    Revoke {
        id: String,
    },
}

pub fn run(cmd: KeysCmd) -> anyhow::Result<()> {
    let client = Client::from_env()?;
    let rt = runtime()?;
    match cmd {
        KeysCmd::Create { tenant, name, admin, rate_tier } => {
            let req = CreateKeyRequest {
                tenant,
                name,
                role: if admin { Role::Admin } else { Role::Tenant },
                rate_tier,
            };
            let answer = rt.block_on(client.call(
                Method::POST,
                "/api/v1/keys",
                Some(&serde_json::to_value(req)?),
            ))?;
            let created: CreatedKey =
                serde_json::from_value(answer).context("unexpected answer")?;
            println!("{}", created.key);
            eprintln!(
                "id {} for tenant {} ({})",
                created.info.id,
                created.info.tenant,
                created.info.role.as_str()
            );
        }
        KeysCmd::List { tenant } => {
            let path = match tenant {
                Some(t) => format!("/api/v1/keys?tenant={t}"),
                None => "/api/v1/keys".into(),
            };
            let list: KeyList =
                serde_json::from_value(rt.block_on(client.call(Method::GET, &path, None))?)?;
            println!("{:<22} {:<20} {:<7} {:<8} NAME", "ID", "TENANT", "ROLE", "STATE");
            for k in list.keys {
                let state = if k.revoked { "revoked" } else { "active" };
                println!(
                    "{:<22} {:<20} {:<7} {:<8} {}",
                    k.id,
                    k.tenant,
                    k.role.as_str(),
                    state,
                    k.name.unwrap_or_default()
                );
            }
        }
        KeysCmd::Revoke { id } => {
            rt.block_on(client.call(Method::DELETE, &format!("/api/v1/keys/{id}"), None))?;
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}
