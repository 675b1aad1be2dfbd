//! Layered configuration: precedence, origins, and every kind of bad input reported at once.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::PathBuf;
use std::time::Duration;

use arq_core::config::{
    ArqConfig, ConfigError, ConfigLoader, Origin, RateLimitBackend, RedisFailurePolicy, Secret,
};

struct Dir(PathBuf);

impl Dir {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "arq-config-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(dir: &Dir, env: &str, vars: &[(&str, &str)]) -> Result<ArqConfig, ConfigError> {
    ArqConfig::load_from(
        &ConfigLoader::new(&dir.0)
            .environment(env)
            .vars(vars.iter().copied()),
    )
    .map(|(c, _)| c)
}

#[test]
fn precedence_defaults_file_env_file_variables() {
    let dir = Dir::new(&[
        (
            "default.toml",
            "[rate_limit]\nper_minute = 100\nper_hour = 1000\nkey_prefix = \"from-default\"\n[edge]\nrequest_timeout = \"10s\"\n",
        ),
        (
            "production.toml",
            "[rate_limit]\nper_hour = 2000\nkey_prefix = \"from-prod\"\n",
        ),
    ]);
    let c = load(
        &dir,
        "production",
        &[("ARQ__RATE_LIMIT__KEY_PREFIX", "from-env")],
    )
    .unwrap();
    assert_eq!(c.rate_limit.per_minute, 100); // default.toml
    assert_eq!(c.rate_limit.per_hour, 2000); // production.toml
    assert_eq!(c.rate_limit.key_prefix, "from-env"); // variable
    assert_eq!(c.edge.request_timeout, Duration::from_secs(10));
    assert_eq!(c.edge.stream_timeout, Duration::from_secs(300)); // built-in
    // Another environment does not see production's file.
    let c = load(&dir, "staging", &[]).unwrap();
    assert_eq!(c.rate_limit.per_hour, 1000);
}

#[test]
fn origins_are_tracked() {
    let dir = Dir::new(&[("default.toml", "[server]\naddr = \"127.0.0.1:1\"\n")]);
    let layers = ConfigLoader::new(&dir.0)
        .environment("test")
        .vars([("ARQ__SERVER__HTTP2", "false")])
        .load()
        .unwrap();
    assert!(matches!(
        layers.origin("server.addr"),
        Some(Origin::File { key, .. }) if key == "server.addr"
    ));
    assert_eq!(
        layers.origin("server.http2"),
        Some(&Origin::Env {
            var: "ARQ__SERVER__HTTP2".into()
        })
    );
    let c = ArqConfig::from_layers(&layers).unwrap();
    assert!(!c.server.http2);
}

#[test]
fn every_problem_is_reported_at_once_with_its_origin() {
    let dir = Dir::new(&[(
        "default.toml",
        r#"
[server]
addr = "nowhere"
shutdown_timeout = 30
[edge]
body_limit = "lots"
request_timeout = "0s"
timeout_status = "500"
sensitive_headers = ["ok", "bad header"]
[cors]
allowed_origins = ["https://app.arq.dev", "https://*.dev", "*"]
allowed_methods = ["GET", "*"]
[rate_limit]
per_minute = 0
key = "user"
backend = "redis"
trusted_proxies = ["10.0.0.0/8", "not-a-cidr"]
mystery = 1
[telemetry]
sampling_ratio = 1.5
log_level = "info,[["
otlp_endpoint = "grpc://collector"
[health]
postgres_url = "mysql://x"
"#,
    )]);
    let err = load(
        &dir,
        "test",
        &[
            ("ARQ__RATE_LIMIT__PER_HOUR", "many"),
            ("ARQ__SERVER__HTTP2", "yes"),
            ("ARQ__NOSECTION", "1"),
        ],
    )
    .unwrap_err();
    let text = err.to_string();
    let expected = [
        ("server.addr", "default.toml"),
        ("server.shutdown_timeout", "duration with a unit"),
        ("edge.body_limit", "size in bytes"),
        ("edge.request_timeout", "more than zero"),
        ("edge.timeout_status", "\"504\" or \"408\""),
        ("edge.sensitive_headers", "bad header"),
        ("cors.allowed_origins", "at least two labels"),
        ("cors.allowed_origins", "\"*\" alone"),
        ("cors.allowed_methods", "'*' is not allowed"),
        ("rate_limit.per_minute", "at least 1"),
        ("rate_limit.key", "principal, api_key"),
        ("rate_limit.backend", "redis_url"),
        ("rate_limit.trusted_proxies", "not-a-cidr"),
        ("rate_limit.mystery", "unknown setting"),
        ("rate_limit.per_hour", "ARQ__RATE_LIMIT__PER_HOUR"),
        ("server.http2", "ARQ__SERVER__HTTP2"),
        ("telemetry.sampling_ratio", "between 0.0 and 1.0"),
        ("telemetry.log_level", "not a tracing filter"),
        ("telemetry.otlp_endpoint", "http://"),
        ("health.postgres_url", "postgres://"),
    ];
    // The malformed variable name is reported together with the value problems.
    assert!(text.contains("ARQ__NOSECTION"), "{text}");
    let problems = err.problems();
    for (key, needle) in expected {
        assert!(
            problems
                .iter()
                .any(|p| p.key == key && p.to_string().contains(needle)),
            "missing problem for {key} mentioning {needle:?} in:\n{text}"
        );
    }
    // File problems name the file and key.
    assert!(text.contains("default.toml (key `server.addr`)"), "{text}");
}

#[test]
fn loader_problems_are_reported_together() {
    let dir = Dir::new(&[
        ("default.toml", "[server\naddr = 1"),
        ("test.toml", "x = = 2"),
    ]);
    let err = ConfigLoader::new(&dir.0)
        .environment("test")
        .vars([("ARQ__NOSECTION", "1"), ("ARQ____X", "1")])
        .load()
        .unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 4, "{err}");
    let text = err.to_string();
    assert!(text.contains("default.toml"));
    assert!(text.contains("test.toml"));
    assert!(text.contains("not valid TOML"));
    assert!(text.contains("ARQ__NOSECTION"));
    assert!(text.contains("ARQ____X"));
}

#[test]
fn bad_environment_names_are_refused() {
    let err = ConfigLoader::new("/nonexistent")
        .environment("../etc")
        .vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_err();
    assert!(err.to_string().contains("ARQ_ENV"));
}

#[test]
fn missing_files_mean_defaults() {
    let c = load(&Dir::new(&[]), "test", &[]).unwrap();
    assert_eq!(c.rate_limit.per_minute, 600);
    assert_eq!(c.rate_limit.per_hour, 10_000);
    assert_eq!(c.rate_limit.backend, RateLimitBackend::Local);
    assert_eq!(c.rate_limit.on_redis_error, RedisFailurePolicy::Local);
    assert!(c.cors.allowed_origins.is_empty());
}

#[test]
fn tls_needs_both_files_and_existing_paths() {
    let dir = Dir::new(&[]);
    let err = load(
        &dir,
        "test",
        &[("ARQ__SERVER__TLS__CERT_FILE", "/nonexistent/cert.pem")],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("does not exist"), "{text}");
    assert!(text.contains("key_file is missing"), "{text}");
}

#[test]
fn secrets_never_show() {
    let dir = Dir::new(&[]);
    let c = load(
        &dir,
        "test",
        &[
            ("ARQ__RATE_LIMIT__BACKEND", "redis"),
            (
                "ARQ__RATE_LIMIT__REDIS_URL",
                "redis://:hunter2@127.0.0.1:6379",
            ),
        ],
    )
    .unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("Secret(***)"));
    assert_eq!(
        c.rate_limit.redis_url.as_ref().map(Secret::expose).unwrap(),
        "redis://:hunter2@127.0.0.1:6379"
    );
    // A malformed secret is reported without its value.
    let err = load(
        &dir,
        "test",
        &[("ARQ__RATE_LIMIT__REDIS_URL", "http://:hunter2@x")],
    )
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"));
    assert!(!format!("{err:?}").contains("hunter2"));
}

#[test]
fn service_sections_deserialize_with_serde() {
    #[derive(serde::Deserialize, Debug)]
    struct App {
        workers: u32,
        name: String,
        tags: Vec<String>,
    }
    let dir = Dir::new(&[(
        "default.toml",
        "[app]\nname = \"tasks\"\ntags = [\"a\"]\nworkers = 1\n",
    )]);
    let layers = ConfigLoader::new(&dir.0)
        .environment("test")
        .vars([("ARQ__APP__WORKERS", "8")])
        .load()
        .unwrap();
    let app: App = layers.section("app").unwrap();
    assert_eq!(app.workers, 8);
    assert_eq!(app.name, "tasks");
    assert_eq!(app.tags, ["a"]);
    // arq's own sections ignore [app].
    assert!(ArqConfig::from_layers(&layers).is_ok());
    let bad = ConfigLoader::new(&dir.0)
        .environment("test")
        .vars([("ARQ__APP__WORKERS", "\"eight\"")])
        .load()
        .unwrap();
    let err = bad.section::<App>("app").unwrap_err();
    assert!(err.to_string().contains("ARQ__APP__WORKERS"), "{err}");
}

#[test]
fn sampling_ratio_outside_zero_to_one_or_nan_is_refused_with_its_origin() {
    let dir = Dir::new(&[]);
    for bad in ["-0.1", "1.01", "nan", "-inf"] {
        let err = load(&dir, "test", &[("ARQ__TELEMETRY__SAMPLING_RATIO", bad)]).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems().len(), 1, "{text}");
        assert_eq!(err.problems()[0].key, "telemetry.sampling_ratio");
        assert!(
            text.contains("ARQ__TELEMETRY__SAMPLING_RATIO"),
            "{bad}: {text}"
        );
        assert!(
            text.contains("between 0.0 and 1.0") || text.contains("expected a finite number"),
            "{bad}: {text}"
        );
    }
    for good in ["0", "0.01", "1"] {
        let c = load(&dir, "test", &[("ARQ__TELEMETRY__SAMPLING_RATIO", good)]).unwrap();
        assert_eq!(c.telemetry.sampling_ratio, good.parse::<f64>().unwrap());
    }
}

proptest::proptest! {
    #[test]
    fn arbitrary_variable_values_never_panic(key in "[A-Z_]{1,12}", section in "[A-Z_]{1,10}", value in ".{0,30}") {
        let name = format!("ARQ__{section}__{key}");
        if let Ok(layers) = ConfigLoader::new("/nonexistent").environment("t").vars([(name, value)]).load() {
            let _ = ArqConfig::from_layers(&layers);
        }
    }

    #[test]
    fn arbitrary_toml_files_never_panic(text in "[\\[\\]a-z_=\" .0-9\n]{0,120}") {
        let dir = Dir::new(&[("default.toml", &text)]);
        if let Ok(layers) = ConfigLoader::new(&dir.0).environment("t").vars(Vec::<(String, String)>::new()).load() {
            let _ = ArqConfig::from_layers(&layers);
        }
    }
}
