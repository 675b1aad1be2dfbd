//! The load-generation driver shared by the HTTP benchmarks (arq-core's `edge_http` and
//! `gateway`, arq-auth's `edge_auth_http` and `gateway_auth`): free ports, wrk runs and their
//! parsing, an nginx reverse proxy as a baseline, resident-memory sampling and idle
//! keep-alive clients; the hello route every one of them serves, and the edge benchmarks'
//! configuration.
//!
//! Included by path (`#[path = ".../support/loadgen.rs"] mod loadgen;`), so each benchmark uses
//! only part of it.
#![allow(dead_code, reason = "each benchmark uses part of the driver")]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The route every HTTP benchmark serves: `GET /hello` answers `hello, world\n`.
pub(crate) fn hello_router() -> axum::Router {
    axum::Router::new().route("/hello", axum::routing::get(|| async { "hello, world\n" }))
}

/// The edge benchmarks' configuration: an ephemeral port, CORS with an exact and a wildcard
/// origin, and per-IP quotas no run can exhaust, so every request takes the admitted path.
pub(crate) fn edge_config() -> arq_core::config::ArqConfig {
    arq_core::config::ArqConfig::load_from(
        &arq_core::config::ConfigLoader::new("/nonexistent")
            .environment("bench")
            .vars([
                ("ARQ__SERVER__ADDR", "127.0.0.1:0"),
                (
                    "ARQ__CORS__ALLOWED_ORIGINS",
                    "https://app.arq.dev,https://*.arq.dev",
                ),
                ("ARQ__RATE_LIMIT__PER_MINUTE", "1000000000"),
                ("ARQ__RATE_LIMIT__PER_HOUR", "2000000000"),
                ("ARQ__RATE_LIMIT__KEY", "client_ip"),
            ]),
    )
    .unwrap()
    .0
}

/// `name` from the environment as a number, or `default`.
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A loopback port nothing listens on (at the time of asking).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One wrk run.
pub(crate) struct Run {
    /// Requests per second.
    pub(crate) rps: f64,
    /// 99th-percentile latency in milliseconds (NaN when wrk printed none).
    pub(crate) p99_ms: f64,
    /// wrk's `Socket errors: …` and `Non-2xx or 3xx responses: …` lines, in output order.
    pub(crate) errors: Vec<String>,
}

impl Run {
    /// Whether any response was not 2xx/3xx (e.g. a refused token: the wrong path measured).
    pub(crate) fn has_non_2xx(&self) -> bool {
        self.errors.iter().any(|e| e.contains("Non-2xx"))
    }
}

/// `wrk -t1 -c{conns} -d{secs}s --latency [-H header]… http://{addr}{path}`.
pub(crate) fn wrk(addr: SocketAddr, path: &str, conns: u32, secs: u64, headers: &[String]) -> Run {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1".to_owned(),
        format!("-c{conns}"),
        format!("-d{secs}s"),
        "--latency".to_owned(),
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("wrk is needed: apt-get install -y wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .unwrap_or(f64::NAN);
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(|l| l.trim().to_owned())
        .collect();
    Run {
        rps,
        p99_ms: p99,
        errors,
    }
}

/// The status code of one `GET {path}` to `addr` with `headers` (`Name: value` lines), over a
/// fresh HTTP/1.1 connection: a check that a server answers as the benchmark assumes.
pub(crate) fn status_of_get(addr: SocketAddr, path: &str, headers: &[&str]) -> u16 {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer from {addr}{path}: {text:?}"))
}

/// A wrk latency (`812.00us`, `1.23ms`, `2.00s`) in milliseconds.
pub(crate) fn parse_latency(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

/// An nginx master (and its workers) started by this process; stopped on drop.
pub(crate) struct Nginx {
    /// The master process.
    pub(crate) child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master was started by this process; stopping it by its pid stops its workers.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx as a reverse proxy in front of `upstream`: `workers` worker processes, `proxy_pass`
/// over HTTP/1.1 with an upstream keep-alive pool of `keepalive` connections, access log off.
pub(crate) fn start_nginx(upstream: SocketAddr, workers: usize, keepalive: u32) -> Nginx {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("arq-bench-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let conf = format!(
        "worker_processes {workers};\nworker_rlimit_nofile 20000;\ndaemon off;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 16000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         keepalive_requests 1000000;\n\
         upstream up {{ server {upstream}; keepalive {keepalive}; keepalive_requests 1000000; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://up;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut child = Command::new("nginx")
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .spawn()
        .expect("nginx is needed: apt-get install -y nginx-light");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Nginx { child, addr, dir };
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            panic!("nginx exited ({status}) before listening on {addr}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    panic!("nginx is not listening on {addr} after 5 s:\n{log}");
}

/// Resident memory of `pids`, in KiB.
pub(crate) fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// The nginx master and its workers.
pub(crate) fn nginx_pids(master: u32) -> Vec<u32> {
    let mut pids = vec![master];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the command name's closing parenthesis.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(master) {
            pids.push(pid);
        }
    }
    pids
}

/// The idle-client helper: opens `argv[3]` keep-alive connections to `argv[1]:argv[2]`, makes
/// one `GET /hello` on each and reads its answer, says `ready`, then holds them until stdin
/// closes.
const IDLE_CLIENTS_PY: &str = r#"
import resource, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
conns = []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(b'GET /hello HTTP/1.1\r\nHost: x\r\n\r\n')
    b = b''
    while not b.endswith(b'hello, world\n'):
        c = s.recv(4096)
        if not c:
            sys.exit('connection %d closed before the answer: %r' % (i, b))
        b += c
    conns.append(s)
print('ready', flush=True)
sys.stdin.read()
"#;

/// Opens `n` keep-alive connections from a helper process (its own descriptor limit), makes
/// one `GET /hello` on each (answered `hello, world\n`), and holds them idle until the
/// returned child's stdin closes.
pub(crate) fn idle_clients(addr: SocketAddr, n: usize) -> Child {
    let mut child = Command::new("python3")
        .args([
            "-c",
            IDLE_CLIENTS_PY,
            &addr.ip().to_string(),
            &addr.port().to_string(),
            &n.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the idle-connection clients");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "the idle clients could not connect to {addr} (see python's message above)"
    );
    child
}

/// The resident memory of `pids()` (KiB) before and while `n` idle clients hold connections
/// to `addr`.
pub(crate) fn idle_cost(addr: SocketAddr, pids: &dyn Fn() -> Vec<u32>, n: usize) -> (u64, u64) {
    let before = rss_kib(&pids());
    let mut clients = idle_clients(addr, n);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(&pids());
    drop(clients.stdin.take().map(|mut s| s.flush()));
    let _ = clients.wait();
    (before, after)
}

/// The arithmetic mean of `f` over `runs`.
pub(crate) fn mean(runs: &[Run], f: fn(&Run) -> f64) -> f64 {
    runs.iter().map(f).sum::<f64>() / runs.len() as f64
}
