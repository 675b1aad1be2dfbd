//! Development only: prints an access token the adopt example accepts with its default
//! configuration, signed with `keys/dev-signing-key.pem` (whose public half is
//! `config/dev-jwks.json`). A real deployment gets tokens from its issuer instead.
//!
//! ```text
//! adopt-dev-token <tenant-uuid> <role> [subject]   # role: viewer or member
//! adopt-dev-token --jwks                           # the public key set, as in config/dev-jwks.json
//! ```

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use arq_auth::{AccessClaims, SigningKey, SigningKeyRing};
use arq_core::TenantId;

/// The key id of the development key (it names the key in tokens and in the JWKS).
const DEV_KID: &str = "adopt-dev";
/// How long a development token lives.
const TTL_SECS: u64 = 3600;

fn main() -> ExitCode {
    match run() {
        Ok(out) => {
            #[allow(clippy::print_stdout, reason = "the token is the output")]
            {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "a binary reporting why it stopped")]
            {
                eprintln!("adopt-dev-token: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<String> {
    let key = SigningKey::from_rsa_pem(DEV_KID, include_bytes!("../../keys/dev-signing-key.pem"))?;
    let ring = SigningKeyRing::new(key);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: adopt-dev-token <tenant-uuid> <viewer|member> [subject] | adopt-dev-token --jwks";
    match args.as_slice() {
        [flag] if flag == "--jwks" => Ok(serde_json::to_string_pretty(&ring.jwks())?),
        [tenant, role] | [tenant, role, _] => {
            let tenant: TenantId = tenant
                .parse()
                .with_context(|| format!("{tenant:?} is not a tenant id (a UUID); {usage}"))?;
            let subject = args.get(2).map_or("dev-user", String::as_str);
            let settings = arq_example_adopt::load_settings()?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("the system clock is before 1970")?
                .as_secs();
            let claims = AccessClaims::new(
                &settings.auth.issuer,
                subject,
                &settings.auth.audience,
                now,
                TTL_SECS,
            )
            .with_tenant(tenant)
            .with_roles([role.as_str()]);
            Ok(ring.sign(&claims)?)
        }
        _ => bail!("{usage}"),
    }
}
