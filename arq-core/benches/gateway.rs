//! The arq gateway against nginx as a reverse proxy, in front of the same upstream, in the same
//! run: throughput and p99 with wrk at 64 and 256 connections, and the memory 10 000 idle
//! client connections cost each proxy.
//!
//! Run: `cargo bench -p arq-core --features gateway --bench gateway` (needs `wrk` and `nginx`:
//! `apt-get install -y wrk nginx-light`). `ARQ_BENCH_SECS` sets each run's duration (default
//! 10), `ARQ_BENCH_ROUNDS` the rounds (default 1; the proxies alternate within a round),
//! `ARQ_BENCH_IDLE` the idle connections (default 10000).
//!
//! Fairness: nginx runs as many workers as the gateway has runtime threads (2), with
//! `proxy_pass` over HTTP/1.1 and an upstream keep-alive pool of 256 (the largest client
//! concurrency), access log off. The gateway runs the edge stack without authentication
//! (`require_identity(false)`); the upstream runs on its own runtime in this process.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic,
    reason = "benchmark driver"
)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arq_core::config::{ArqConfig, ConfigLoader};
use arq_core::edge::EdgeStack;
use arq_core::gateway::{Gateway, GatewayConfig, RouteConfig};
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::Server;
use axum::Router;
use axum::routing::get;

const THREADS: usize = 2;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_upstream(rt: &tokio::runtime::Runtime) -> SocketAddr {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/hello", get(|| async { "hello, world\n" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    })
}

fn start_gateway(rt: &tokio::runtime::Runtime, upstream: SocketAddr) -> SocketAddr {
    rt.block_on(async {
        let cfg = ArqConfig::load_from(
            &ConfigLoader::new("/nonexistent")
                .environment("bench")
                .vars([("ARQ__SERVER__ADDR", "127.0.0.1:0")]),
        )
        .unwrap()
        .0;
        let registry = MetricsRegistry::new();
        let mut settings = arq_core::resilience::DependencySettings::default();
        // The bulkhead must not be what limits a 256-connection run.
        settings.max_concurrent = Some(1024);
        settings.max_waiting = Some(4096);
        let gateway = Gateway::builder(GatewayConfig::new("").route(
            "hello",
            RouteConfig::new("/hello", format!("http://{upstream}")).resilience(settings),
        ))
        .require_identity(false)
        .build(&registry)
        .unwrap();
        let health = Health::new(Duration::from_secs(1));
        let svc = EdgeStack::from_config(&cfg, &registry)
            .unwrap()
            .wrap(gateway.router());
        let server = Server::bind(&cfg.server, health).await.unwrap();
        let addr = server.local_addr();
        tokio::spawn(server.serve(svc, std::future::pending()));
        addr
    })
}

struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master was started by this process; stopping it by its pid stops its workers.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn start_nginx(upstream: SocketAddr) -> Nginx {
    let dir = std::env::temp_dir().join(format!("arq-gw-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "worker_processes {THREADS};\nworker_rlimit_nofile 20000;\ndaemon off;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 16000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         keepalive_requests 1000000;\n\
         upstream up {{ server {upstream}; keepalive 256; keepalive_requests 1000000; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://up;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .spawn()
        .expect("nginx is needed: apt-get install -y nginx-light");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx {
        child,
        addr,
        _dir: dir,
    }
}

struct Run {
    rps: f64,
    p99_ms: f64,
}

fn wrk(addr: SocketAddr, conns: u32, secs: u64) -> Run {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            &format!("http://{addr}/hello"),
        ])
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
    if let Some(e) = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        println!("  wrk reported: {}", e.trim());
    }
    Run { rps, p99_ms: p99 }
}

fn parse_latency(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

/// Resident memory of `pids`, in KiB.
fn rss_kib(pids: &[u32]) -> u64 {
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
fn nginx_pids(master: u32) -> Vec<u32> {
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

/// Opens `n` keep-alive connections from a helper process (its own descriptor limit), makes
/// one request on each, and holds them idle until the returned child's stdin closes.
fn idle_clients(addr: SocketAddr, n: usize) -> Child {
    let script = format!(
        "import socket,sys\nconns=[]\nfor i in range({n}):\n    s=socket.create_connection(('{ip}',{port}))\n\
         s.sendall(b'GET /hello HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n    b=b''\n\
             while not b.endswith(b'hello, world\\n'):\n        c=s.recv(4096)\n        if not c: break\n        b+=c\n\
             conns.append(s)\nprint('ready',flush=True)\nsys.stdin.read()\n",
        ip = addr.ip(),
        port = addr.port()
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the idle clients could not connect");
    child
}

fn idle_cost(addr: SocketAddr, pids: &dyn Fn() -> Vec<u32>, n: usize) -> (u64, u64) {
    let before = rss_kib(&pids());
    let mut clients = idle_clients(addr, n);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(&pids());
    drop(clients.stdin.take().map(|mut s| s.flush()));
    let _ = clients.wait();
    (before, after)
}

fn main() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let secs = env("ARQ_BENCH_SECS", 10);
    let rounds = env("ARQ_BENCH_ROUNDS", 1);
    let idle = env("ARQ_BENCH_IDLE", 10_000) as usize;
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()
        .unwrap();
    let gateway_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()
        .unwrap();
    let upstream = start_upstream(&upstream_rt);
    let gateway = start_gateway(&gateway_rt, upstream);
    let nginx = start_nginx(upstream);
    let targets = [("nginx", nginx.addr), ("arq gateway", gateway)];
    for (_, a) in targets {
        wrk(a, 64, 1);
    }
    let mut results: Vec<(u32, &str, Vec<Run>)> = Vec::new();
    for conns in [64u32, 256] {
        for (name, _) in targets {
            results.push((conns, name, Vec::new()));
        }
    }
    for round in 0..rounds {
        for (conns, name, runs) in &mut results {
            let addr = targets.iter().find(|(n, _)| n == name).unwrap().1;
            let r = wrk(addr, *conns, secs);
            println!(
                "round {round}: {name:<12} c={conns:<4} {:>10.0} req/s  p99 {:>7.2} ms",
                r.rps, r.p99_ms
            );
            runs.push(r);
        }
    }
    let mean =
        |runs: &[Run], f: fn(&Run) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    println!();
    println!("| proxy | conns | req/s (mean of {rounds}) | p99 ms | vs nginx |");
    println!("|---|---:|---:|---:|---:|");
    for (conns, name, runs) in &results {
        let base = results
            .iter()
            .find(|(c, n, _)| c == conns && *n == "nginx")
            .map(|(_, _, r)| mean(r, |r| r.rps))
            .unwrap();
        let rps = mean(runs, |r| r.rps);
        println!(
            "| {name} | {conns} | {rps:.0} | {:.2} | {:.2}× |",
            mean(runs, |r| r.p99_ms),
            rps / base
        );
    }

    if idle > 0 {
        let master = nginx.child.id();
        let (nb, na) = idle_cost(nginx.addr, &|| nginx_pids(master), idle);
        let me = std::process::id();
        let (gb, ga) = idle_cost(gateway, &|| vec![me], idle);
        println!();
        println!("| proxy | RSS before | RSS with {idle} idle connections | per connection |");
        println!("|---|---:|---:|---:|");
        for (name, b, a) in [
            ("nginx (master + workers)", nb, na),
            ("arq gateway (bench process)", gb, ga),
        ] {
            println!(
                "| {name} | {:.1} MiB | {:.1} MiB | {:.2} KiB |",
                b as f64 / 1024.0,
                a as f64 / 1024.0,
                a.saturating_sub(b) as f64 / idle as f64
            );
        }
    }
    drop(nginx);
}
