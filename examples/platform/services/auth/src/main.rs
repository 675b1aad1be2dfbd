//! Runs the auth service from its configuration (`config/`, `ARQ__SECTION__KEY`
//! variables) until SIGTERM or Ctrl-C, then drains in-flight requests and exits.
//!
//! Subcommands (see [`auth::admin`]): `auth migrate` runs the migrations connected as the owner
//! role (`DATABASE_OWNER_URL`); `auth create-user` and `auth create-client` bootstrap users and
//! service accounts. Serving connects as the runtime role (`DATABASE_URL`) and refuses to start
//! when that role could bypass row-level security. Beside the HTTP server, the membership
//! consumer ([`auth::memberships`]) applies the workspace service's membership events from
//! RabbitMQ (`[queue]`); it waits for the broker without holding up the token endpoint, and
//! stops after the server has drained.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::{BackgroundTask, Server, shutdown_signal};
use arq_queue::QueueMetrics;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use auth as svc;
use svc::admin::{self, Command};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "a binary reporting why it stopped")]
            {
                eprintln!("{}: {e:#}", svc::NAME);
            }
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("set {name} to the PostgreSQL URL"))
}

async fn connect(var: &str, max: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .connect(&env(var)?)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL ({var})"))
}

/// The first line of standard input, without its line ending.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        #[allow(clippy::print_stderr, reason = "an interactive prompt")]
        {
            eprint!("password (shown as you type; pipe it in to hide it): ");
        }
        std::io::stderr().flush().ok();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

#[allow(clippy::print_stdout, reason = "the subcommands' output")]
async fn run() -> anyhow::Result<()> {
    let command = Command::parse(std::env::args().skip(1))?;
    if command == Command::Help {
        println!("{}", admin::USAGE);
        return Ok(());
    }
    let settings = svc::load_settings()?;
    arq_core::telemetry::init(&settings.arq.telemetry)?;
    match command {
        Command::Help => Ok(()),
        Command::Migrate => {
            let owner = connect("DATABASE_OWNER_URL", 1).await?;
            svc::migrate(&owner).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::CreateUser {
            username,
            tenant,
            role,
        } => {
            let password = read_password()?;
            admin::check_password(&password)?;
            let pool = connect("DATABASE_URL", 1).await?;
            let issuer = svc::issuer(
                &settings,
                svc::signing_keys(&settings.issuer)?,
                pool.clone(),
            )?;
            let roles: Vec<String> = settings.rbac.roles.keys().cloned().collect();
            match (tenant, role) {
                (Some(tenant), Some(role)) => {
                    let id = admin::create_user(
                        &issuer, &pool, &roles, &username, &password, tenant, &role,
                    )
                    .await?;
                    println!("created user {username} ({id}) in tenant {tenant} with role {role}");
                }
                _ => {
                    let id =
                        admin::create_unbound_user(&issuer, &pool, &username, &password).await?;
                    println!(
                        "created user {username} ({id}) with no workspace yet: creating or \
                         joining one gives a role there"
                    );
                }
            }
            Ok(())
        }
        Command::CreateClient {
            client_id,
            tenant,
            permissions,
        } => {
            let pool = connect("DATABASE_URL", 1).await?;
            let issuer = svc::issuer(
                &settings,
                svc::signing_keys(&settings.issuer)?,
                pool.clone(),
            )?;
            let secret =
                admin::create_client(&issuer, &pool, &client_id, tenant, &permissions).await?;
            println!("registered client {client_id} in tenant {tenant}");
            println!("client_secret: {secret}");
            println!("(shown once: only its hash is stored)");
            Ok(())
        }
        Command::Serve => serve(settings).await,
    }
}

async fn serve(settings: svc::Settings) -> anyhow::Result<()> {
    let keys = svc::signing_keys(&settings.issuer)?;
    let pool = connect("DATABASE_URL", settings.database.max_connections).await?;
    // Refuses to start if the runtime role is a superuser, bypasses row-level security or owns
    // tenant tables: the issuer needs only the grants of migrations/0001_runtime_grants.sql.
    {
        let mut conn = pool
            .acquire()
            .await
            .context("cannot connect to PostgreSQL")?;
        arq_tenancy::audit::ensure_safe(&mut conn).await?;
    }
    let verifier = svc::verifier(&settings, &keys)?;
    let issuer = svc::issuer(&settings, keys, pool.clone())?;
    let router = svc::app(issuer, verifier);
    let registry = MetricsRegistry::global().clone();
    // The consumer's deliveries, acks, retries and dead letters, on /metrics.
    let queue_metrics = QueueMetrics::register(&registry)?;
    let rbac = svc::rbac(&settings)?;
    let consumer = BackgroundTask::spawn("membership consumer", |stop| {
        svc::memberships::run(
            pool,
            rbac,
            settings.queue.clone(),
            queue_metrics,
            settings.arq.server.shutdown_timeout,
            stop,
        )
    });
    let health = Health::from_config(&settings.arq.health);
    let service = svc::service(router, &settings.arq, &registry, &health)?;
    let server = Server::bind(&settings.arq.server, health).await?;
    // Scripts wait for this line before they send requests.
    #[allow(clippy::print_stdout, reason = "a binary announcing where it listens")]
    {
        println!("{} listening on http://{}", svc::NAME, server.local_addr());
    }
    let outcome = server.serve(service, shutdown_signal()).await;
    // The consumer may finish the event in hand (within the shutdown timeout); an unsettled one
    // is redelivered to the next start.
    consumer.stop(settings.arq.server.shutdown_timeout).await;
    tracing::info!(?outcome, "stopped");
    Ok(())
}
