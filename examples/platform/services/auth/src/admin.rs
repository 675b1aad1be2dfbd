//! The administration subcommands of the `auth` binary, for bootstrapping a platform:
//!
//! ```text
//! auth migrate
//! auth create-user USERNAME [--tenant UUID --role ROLE]    (the password is read from stdin)
//! auth create-client CLIENT_ID --tenant UUID --permission P [--permission P]...
//! ```
//!
//! `create-user` makes a user bound to the tenant, holding the role (one of `[rbac]`'s); without
//! `--tenant` and `--role`, a user of no workspace yet, who gets roles by creating or joining
//! workspaces (the workspace service's membership events, [`crate::memberships`]). The
//! password is the first line of standard input, so it never appears in the process list or
//! the shell history: `printf '%s\n' "$PASSWORD" | auth create-user alice --tenant … --role member`.
//! `create-client` registers a service account for the client-credentials grant and prints its
//! secret, once: only an argon2id hash is stored.
//!
//! Parsing ([`Command::parse`]) does no I/O, so it is unit-tested; [`create_user`] and
//! [`create_client`] act.

use std::fmt;

use anyhow::Context;
use arq_auth::issuer::TokenIssuer;
use arq_core::TenantId;
use sqlx::PgPool;

/// The usage text, printed by `auth --help` and with every usage error.
pub const USAGE: &str = "\
usage:
  auth                       serve (DATABASE_URL: the runtime role)
  auth migrate               run the migrations (DATABASE_OWNER_URL: the owner role)
  auth create-user USERNAME [--tenant UUID --role ROLE]
                             create a user (bound to the tenant with the role, or of no
                             workspace yet); the password is read from stdin
  auth create-client CLIENT_ID --tenant UUID --permission PERMISSION [--permission ...]
                             register a service account; prints its secret once";

/// Shortest password `create-user` accepts.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Serve HTTP until SIGTERM.
    Serve,
    /// Print the usage.
    Help,
    /// Run the migrations as the owner role.
    Migrate,
    /// Create a user bound to `tenant` with `role`, or (both `None`) of no workspace yet.
    CreateUser {
        /// The login name.
        username: String,
        /// The tenant the user is bound to.
        tenant: Option<TenantId>,
        /// The role the user holds there.
        role: Option<String>,
    },
    /// Register a service account.
    CreateClient {
        /// The `client_id`.
        client_id: String,
        /// The tenant its tokens are for.
        tenant: TenantId,
        /// The permissions it may request.
        permissions: Vec<String>,
    },
}

/// A command line that cannot be run; the message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n\n{USAGE}", self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

impl Command {
    /// Parses the arguments after the program name.
    pub fn parse<I, S>(args: I) -> Result<Self, UsageError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut args = args.into_iter().map(Into::into);
        let Some(first) = args.next() else {
            return Ok(Self::Serve);
        };
        match first.as_str() {
            "-h" | "--help" | "help" => Ok(Self::Help),
            "migrate" => match args.next() {
                None => Ok(Self::Migrate),
                Some(extra) => Err(usage(format!(
                    "migrate takes no arguments, found {extra:?}"
                ))),
            },
            "create-user" => {
                let (name, flags) = name_and_flags("create-user", "USERNAME", args)?;
                let given = |f: &str| flags.iter().any(|(g, _)| g == f);
                // Both or neither: a role means nothing without the tenant it is held in, and a
                // bound user without a role could sign in to nothing.
                let (tenant, role) = if given("--tenant") || given("--role") {
                    (Some(tenant(&flags)?), Some(one(&flags, "--role", "ROLE")?))
                } else {
                    (None, None)
                };
                check_name("USERNAME", &name)?;
                Ok(Self::CreateUser {
                    username: name,
                    tenant,
                    role,
                })
            }
            "create-client" => {
                let (name, flags) = name_and_flags("create-client", "CLIENT_ID", args)?;
                let tenant = tenant(&flags)?;
                let permissions: Vec<String> = flags
                    .iter()
                    .filter(|(f, _)| f == "--permission")
                    .map(|(_, v)| v.clone())
                    .collect();
                if permissions.is_empty() {
                    return Err(usage(
                        "create-client needs at least one --permission (e.g. read:tasks)",
                    ));
                }
                check_name("CLIENT_ID", &name)?;
                Ok(Self::CreateClient {
                    client_id: name,
                    tenant,
                    permissions,
                })
            }
            other => Err(usage(format!("unknown subcommand {other:?}"))),
        }
    }
}

type Flags = Vec<(String, String)>;

/// The positional name and the `--flag value` pairs after it.
fn name_and_flags(
    command: &str,
    what: &str,
    args: impl Iterator<Item = String>,
) -> Result<(String, Flags), UsageError> {
    let mut name = None;
    let mut flags = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if let Some(flag) = arg.strip_prefix("--") {
            let (flag, value) = match flag.split_once('=') {
                Some((f, v)) => (format!("--{f}"), v.to_owned()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| usage(format!("{arg} needs a value")))?;
                    (arg.clone(), value)
                }
            };
            let known = match command {
                "create-user" => ["--tenant", "--role"].contains(&flag.as_str()),
                _ => ["--tenant", "--permission"].contains(&flag.as_str()),
            };
            if !known {
                return Err(usage(format!("{command}: unknown option {flag}")));
            }
            flags.push((flag, value));
        } else if name.is_none() {
            name = Some(arg);
        } else {
            return Err(usage(format!("{command}: unexpected argument {arg:?}")));
        }
    }
    let name = name.ok_or_else(|| usage(format!("{command} needs {what}")))?;
    Ok((name, flags))
}

fn one(flags: &Flags, flag: &str, what: &str) -> Result<String, UsageError> {
    let mut values = flags.iter().filter(|(f, _)| f == flag).map(|(_, v)| v);
    match (values.next(), values.next()) {
        (Some(v), None) if !v.trim().is_empty() => Ok(v.clone()),
        (Some(_), Some(_)) => Err(usage(format!("{flag} is given twice; give one {what}"))),
        _ => Err(usage(format!("{flag} {what} is required"))),
    }
}

fn tenant(flags: &Flags) -> Result<TenantId, UsageError> {
    let value = one(flags, "--tenant", "UUID")?;
    value.parse().map_err(|_| {
        usage(format!(
            "--tenant {value:?} is not a tenant id (a UUID such as 0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60)"
        ))
    })
}

fn check_name(what: &str, name: &str) -> Result<(), UsageError> {
    let ok = (1..=100).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "{what} {name:?} must be 1 to 100 characters of letters, digits and . _ @ + -"
        )))
    }
}

/// Checks a password read from stdin (without its line ending).
pub fn check_password(password: &str) -> anyhow::Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        anyhow::bail!(
            "the password (read from stdin) must have at least {MIN_PASSWORD_CHARS} characters"
        );
    }
    Ok(())
}

/// Creates the user, refusing a role `[rbac]` does not define and a username that is taken.
pub async fn create_user(
    issuer: &TokenIssuer,
    pool: &PgPool,
    roles: &[String],
    username: &str,
    password: &str,
    tenant: TenantId,
    role: &str,
) -> anyhow::Result<uuid::Uuid> {
    if !roles.iter().any(|r| r == role) {
        anyhow::bail!(
            "--role {role:?} is not a role of this platform; [rbac] defines: {}",
            roles.join(", ")
        );
    }
    check_password(password)?;
    let taken: bool =
        sqlx::query_scalar("select exists (select 1 from arq_auth_users where username = $1)")
            .bind(username)
            .fetch_one(pool)
            .await
            .context("cannot read the users (did `auth migrate` run?)")?;
    if taken {
        anyhow::bail!("a user named {username:?} already exists; choose another username");
    }
    issuer
        .create_user(username, password, Some(tenant), &[role])
        .await
        .with_context(|| format!("cannot create the user {username:?}"))
}

/// Creates a user of no workspace yet (no bound tenant, no role), refusing a username that is
/// taken. Creating or joining a workspace gives them a role there.
pub async fn create_unbound_user(
    issuer: &TokenIssuer,
    pool: &PgPool,
    username: &str,
    password: &str,
) -> anyhow::Result<uuid::Uuid> {
    check_password(password)?;
    let taken: bool =
        sqlx::query_scalar("select exists (select 1 from arq_auth_users where username = $1)")
            .bind(username)
            .fetch_one(pool)
            .await
            .context("cannot read the users (did `auth migrate` run?)")?;
    if taken {
        anyhow::bail!("a user named {username:?} already exists; choose another username");
    }
    issuer
        .create_user(username, password, None, &[])
        .await
        .with_context(|| format!("cannot create the user {username:?}"))
}

/// Registers the service account and returns its secret.
pub async fn create_client(
    issuer: &TokenIssuer,
    pool: &PgPool,
    client_id: &str,
    tenant: TenantId,
    permissions: &[String],
) -> anyhow::Result<String> {
    let taken: bool =
        sqlx::query_scalar("select exists (select 1 from arq_auth_clients where client_id = $1)")
            .bind(client_id)
            .fetch_one(pool)
            .await
            .context("cannot read the clients (did `auth migrate` run?)")?;
    if taken {
        anyhow::bail!("a client {client_id:?} already exists; choose another client id");
    }
    let permissions: Vec<&str> = permissions.iter().map(String::as_str).collect();
    issuer
        .create_client(client_id, Some(tenant), &permissions)
        .await
        .with_context(|| format!("cannot register the client {client_id:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    const T: &str = "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60";

    fn parse(args: &[&str]) -> Result<Command, UsageError> {
        Command::parse(args.iter().copied())
    }

    fn err(args: &[&str]) -> String {
        parse(args).unwrap_err().0
    }

    #[test]
    fn no_arguments_serve_and_subcommands_parse() {
        assert_eq!(parse(&[]).unwrap(), Command::Serve);
        assert_eq!(parse(&["--help"]).unwrap(), Command::Help);
        assert_eq!(parse(&["migrate"]).unwrap(), Command::Migrate);
        assert_eq!(
            parse(&["create-user", "alice", "--tenant", T, "--role", "member"]).unwrap(),
            Command::CreateUser {
                username: "alice".into(),
                tenant: Some(T.parse().unwrap()),
                role: Some("member".into())
            }
        );
        assert_eq!(
            parse(&["create-user", "alice"]).unwrap(),
            Command::CreateUser {
                username: "alice".into(),
                tenant: None,
                role: None
            }
        );
        assert_eq!(
            parse(&[
                "create-client",
                "--permission=read:tasks",
                "reporter",
                "--tenant",
                T,
                "--permission",
                "write:tasks"
            ])
            .unwrap(),
            Command::CreateClient {
                client_id: "reporter".into(),
                tenant: T.parse().unwrap(),
                permissions: vec!["read:tasks".into(), "write:tasks".into()]
            }
        );
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        assert!(err(&["serve"]).contains("unknown subcommand \"serve\""));
        assert!(err(&["migrate", "now"]).contains("takes no arguments"));
        assert!(
            err(&["create-user", "--tenant", T, "--role", "member"]).contains("needs USERNAME")
        );
        assert!(
            err(&["create-user", "alice", "--role", "member"])
                .contains("--tenant UUID is required")
        );
        assert!(
            err(&["create-user", "alice", "--tenant", "acme", "--role", "x"])
                .contains("is not a tenant id")
        );
        assert!(err(&["create-user", "alice", "--tenant", T]).contains("--role ROLE is required"));
        assert!(
            err(&[
                "create-user",
                "alice",
                "--tenant",
                T,
                "--role",
                "a",
                "--role",
                "b"
            ])
            .contains("given twice")
        );
        assert!(
            err(&["create-user", "alice", "--tenant", T, "--role"])
                .contains("--role needs a value")
        );
        assert!(
            err(&["create-user", "alice", "bob", "--tenant", T, "--role", "x"])
                .contains("unexpected argument")
        );
        assert!(
            err(&["create-user", "alice", "--tenant", T, "--admin", "yes"])
                .contains("unknown option --admin")
        );
        assert!(
            err(&["create-user", "../x", "--tenant", T, "--role", "member"])
                .contains("must be 1 to 100")
        );
        assert!(err(&["create-client", "c", "--tenant", T]).contains("at least one --permission"));
        // Every usage error ends with the usage.
        assert!(parse(&["nope"]).unwrap_err().to_string().ends_with(USAGE));
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("correct horse").is_ok());
    }
}
