//! Load benchmark of `POST /v1/credentials/{provider}` with a warm, unexpired token: 32
//! keep-alive connections from a load generator (this binary again, in a process and
//! session of its own, one thread) against the real server on loopback, every release
//! durably audited (checked at the end: one `credential.released` event per 200). SQLite,
//! and PostgreSQL when `DATABASE_URL` is set.
//!
//! Three runs per backend: closed loop (each connection sends its next request when the
//! answer arrives) for the throughput, then open loop at half the measured rate and at
//! the 5,000 req/s target rate (requests on a fixed schedule; when an answer arrives after
//! the next request's scheduled time, that request's latency counts from its scheduled
//! time, so a stall is not hidden).
//! Targets on the 2-core machine: ≥ 15,000 req/s closed loop on each backend, p99 ≤ 5 ms at
//! 5,000 req/s, CPU per release (service + database) ≤ 65 µs.
//! Each line also gives the service's own p50 / p99 (handler entry to response), which
//! leaves out the generator, the kernel and the wait for a worker thread.
//! Run: `cargo bench --bench release` (`RELEASE_SECONDS`, default 10; `RELEASE_BACKENDS`,
//! default `sqlite,postgres`; `RELEASE_LIMITS=defaults` keeps `[limits]` at its defaults).
//! Each backend also reports CPU per release in the closed loop (the service's own, and
//! PostgreSQL's server processes') and the service's resident memory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};
use strongbox::audit::Actor;
use strongbox::clock::{Clock, SystemClock};
use strongbox::crypto::Key32;
use strongbox::store::Db;
use strongbox::vault::{RootKey, RootKeySource, Vault, VaultSettings};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const CONNECTIONS: usize = 32;
/// The throughput target on PostgreSQL; latency is also measured at half of it.
const TARGET_RATE: f64 = 5_000.0;

#[path = "support/releases.rs"]
mod releases;

struct Run {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

type Served = Arc<std::sync::Mutex<Vec<Duration>>>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Run {
    /// The service-side times recorded since the last call, as a run of their own.
    fn served(served: &Served) -> Self {
        let latencies = std::mem::take(&mut *served.lock().unwrap());
        Self {
            ok: latencies.len(),
            failed: 0,
            elapsed: Duration::ZERO,
            latencies,
        }
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies[((self.latencies.len() - 1) as f64 * p).round() as usize]
    }
}

/// One keep-alive connection: send `request`, read one response; `true` on 200.
async fn once(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    request: &[u8],
    line: &mut String,
    body: &mut Vec<u8>,
) -> bool {
    w.write_all(request).await.unwrap();
    line.clear();
    r.read_line(line).await.unwrap();
    let ok = line.starts_with("HTTP/1.1 200");
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line
            .to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().to_owned())
        {
            len = v.parse().unwrap();
        }
    }
    body.resize(len, 0);
    r.read_exact(body).await.unwrap();
    ok
}

/// Drives `addr` for `seconds` from a generator process of its own; `rate` None is closed
/// loop, Some(r) open loop at r/s.
///
/// The generator runs in its own session (`setsid`), so the scheduler weighs it as a group
/// of its own, as it would a `wrk` started from another terminal, and not as one more
/// thread of the service's process. It reads the request from its stdin and writes
/// `ok failed` and then one latency in nanoseconds per line.
fn load(addr: std::net::SocketAddr, request: &[u8], seconds: u64, rate: Option<f64>) -> Run {
    use std::io::{BufRead, Write};
    let rate = rate.map_or_else(|| "closed".to_owned(), |r| r.to_string());
    let mut child = std::process::Command::new("setsid")
        .arg(std::env::current_exe().unwrap())
        .args(["--generate", &addr.to_string(), &seconds.to_string(), &rate])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setsid (util-linux) runs the generator");
    child.stdin.take().unwrap().write_all(request).unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let head = lines.next().unwrap().unwrap();
    let (ok, failed) = head.split_once(' ').unwrap();
    let latencies = lines
        .map(|l| Duration::from_nanos(l.unwrap().parse().unwrap()))
        .collect();
    assert!(child.wait().unwrap().success(), "the generator failed");
    Run {
        ok: ok.parse().unwrap(),
        failed: failed.parse().unwrap(),
        elapsed: Duration::from_secs(seconds),
        latencies,
    }
}

/// The generator process: see [`load`].
fn generator(args: &[String]) {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = args[0].parse().unwrap();
    let seconds: u64 = args[1].parse().unwrap();
    let rate: Option<f64> = (args[2] != "closed").then(|| args[2].parse().unwrap());
    let mut request = Vec::new();
    std::io::stdin().read_to_end(&mut request).unwrap();
    let run = generate(addr, Arc::new(request), seconds, rate);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(out, "{} {}", run.ok, run.failed).unwrap();
    for l in &run.latencies {
        writeln!(out, "{}", l.as_nanos()).unwrap();
    }
    out.flush().unwrap();
}

/// 32 keep-alive connections on one thread.
fn generate(
    addr: std::net::SocketAddr,
    request: Arc<Vec<u8>>,
    seconds: u64,
    rate: Option<f64>,
) -> Run {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let start = Instant::now() + Duration::from_millis(200);
            let end = start + Duration::from_secs(seconds);
            let tasks: Vec<_> = (0..CONNECTIONS)
                .map(|c| {
                    let request = Arc::clone(&request);
                    tokio::spawn(async move {
                        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                        stream.set_nodelay(true).unwrap();
                        let (rd, mut w) = stream.into_split();
                        let mut r = BufReader::new(rd);
                        let (mut line, mut body) = (String::new(), Vec::new());
                        let (mut ok, mut failed, mut lat) = (0usize, 0usize, Vec::new());
                        let interval =
                            rate.map(|r| Duration::from_secs_f64(CONNECTIONS as f64 / r));
                        let mut next = start
                            + interval.map_or(Duration::ZERO, |i| {
                                i.mul_f64(c as f64 / CONNECTIONS as f64)
                            });
                        tokio::time::sleep_until(start.into()).await;
                        let mut busy_until = start;
                        loop {
                            if let Some(i) = interval {
                                tokio::time::sleep_until(next.into()).await;
                                if next >= end {
                                    break;
                                }
                                // Counted from the scheduled time when the connection was
                                // still busy with the previous answer then (queueing is the
                                // server's), else from the send (the runtime's timer wakes
                                // up to a millisecond late; that is not the server's).
                                let t = if busy_until > next {
                                    next
                                } else {
                                    Instant::now()
                                };
                                next += i;
                                if once(&mut w, &mut r, &request, &mut line, &mut body).await {
                                    ok += 1;
                                } else {
                                    failed += 1;
                                }
                                busy_until = Instant::now();
                                lat.push(busy_until - t);
                            } else {
                                let t = Instant::now();
                                if t >= end {
                                    break;
                                }
                                if once(&mut w, &mut r, &request, &mut line, &mut body).await {
                                    ok += 1;
                                } else {
                                    failed += 1;
                                }
                                lat.push(t.elapsed());
                            }
                        }
                        (ok, failed, lat)
                    })
                })
                .collect();
            let mut run = Run {
                ok: 0,
                failed: 0,
                elapsed: Duration::from_secs(seconds),
                latencies: Vec::new(),
            };
            for t in tasks {
                let (ok, failed, lat) = t.await.unwrap();
                run.ok += ok;
                run.failed += failed;
                run.latencies.extend(lat);
            }
            run
        })
    })
    .join()
    .unwrap()
}

async fn bench(name: &str, url: &str, seconds: u64) {
    let db = Db::connect(url).await.unwrap();
    db.migrate().await.unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let root = RootKey::new(Key32::generate().unwrap(), RootKeySource::Env);
    let vault = Arc::new(Vault::new(
        db.clone(),
        root,
        VaultSettings::default(),
        Arc::clone(&clock),
    ));
    vault.init(Actor::Cli).await.unwrap();
    let limits = if limits_at_defaults() {
        ""
    } else {
        releases::LIMITS_OFF
    };
    let fixture = releases::fixture(&db, &vault, &clock, limits, "bench-user").await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // As `strongbox serve` does.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // The service's own time per request (handler entry to response), to tell it apart
    // from the generator's and the kernel's share of what the client sees.
    let served: Served = Arc::default();
    let timing = Arc::clone(&served);
    let app = strongbox::app(fixture.state.clone()).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let timing = Arc::clone(&timing);
            async move {
                let t = Instant::now();
                let resp = next.run(req).await;
                timing.lock().unwrap().push(t.elapsed());
                resp
            }
        },
    ));
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let request = releases::request(addr, &fixture);

    let count = |url: String| async move {
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_event WHERE kind = 'credential.released'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        n
    };
    // Warm up (connections, caches), then measure.
    let _ = load(addr, &request, 1, None);
    served.lock().unwrap().clear();
    let before = count(url.to_owned()).await;
    let cpu_before = (cpu_seconds("self"), postgres_cpu_seconds());
    let mut closed = load(addr, &request, seconds, None);
    let cpu = (
        cpu_seconds("self") - cpu_before.0,
        postgres_cpu_seconds() - cpu_before.1,
    );
    let rss = memory();
    let full = closed.rate();
    let closed_served = Run::served(&served);
    let mut half = load(addr, &request, seconds, Some(full / 2.0));
    let half_served = Run::served(&served);
    let mut target = load(addr, &request, seconds, Some(TARGET_RATE));
    let target_served = Run::served(&served);
    let after = count(url.to_owned()).await;
    let released = closed.ok + half.ok + target.ok;
    println!("{name}: (p50 / p99 as the client saw them; in brackets, inside the service)");
    for (what, run, mut inside) in [
        ("closed loop", &mut closed, closed_served),
        ("half that rate", &mut half, half_served),
        ("the target rate", &mut target, target_served),
    ] {
        println!(
            "  {what:>15}: {:>6.0} req/s, p50 {:>8.3} ms, p99 {:>8.3} ms [{:.3} / {:.3} ms], {} failed",
            run.rate(),
            ms(run.pct(0.50)),
            ms(run.pct(0.99)),
            ms(inside.pct(0.50)),
            ms(inside.pct(0.99)),
            run.failed,
        );
    }
    let per = |seconds: f64| seconds * 1e6 / closed.ok.max(1) as f64;
    println!(
        "  CPU per release in the closed loop: service {:.1} µs, PostgreSQL {:.1} µs ({})",
        per(cpu.0),
        per(cpu.1),
        if name == "sqlite" {
            "SQLite runs inside the service"
        } else {
            "all server processes"
        },
    );
    println!("  service memory after the closed loop: {rss}");
    println!("  audited {} of {released} releases", after - before);
    assert_eq!(
        (after - before) as usize,
        released,
        "every release is audited"
    );
    server.abort();
    db.close().await;
}

/// `RELEASE_LIMITS=defaults` keeps `[limits]` at its defaults (one agent for one user is
/// then refused past its rate: the run measures refusals); otherwise every limit is off.
fn limits_at_defaults() -> bool {
    std::env::var("RELEASE_LIMITS").is_ok_and(|v| v == "defaults")
}

/// User + system CPU seconds of a process (`self` or a pid), from `/proc`.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name in parentheses: state, ppid, …; utime and stime are the
    // 14th and 15th fields of the line, in clock ticks (100 a second on Linux).
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every PostgreSQL server process on this machine.
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_seconds(&pid))
        .sum()
}

/// Resident memory now and at its peak, from `/proc/self/status`.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or("?".to_owned(), |v| v.trim().to_owned())
    };
    format!("RSS {}, peak {}", field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--generate") {
        generator(&args[i + 1..]);
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(service());
}

/// The service side: both backends in turn.
async fn service() {
    let seconds: u64 = std::env::var("RELEASE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    sqlx::any::install_default_drivers();
    // Writeback of files written before the run (a build's output, say) would compete
    // with the commits measured here: flushed first.
    let _ = std::process::Command::new("sync").status();
    // `RELEASE_BACKENDS=postgres` (or `sqlite`) runs one of the two.
    let backends = std::env::var("RELEASE_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let dir = tempfile::tempdir().unwrap();
    if backends.contains("sqlite") {
        bench(
            "sqlite",
            &format!("sqlite://{}/r.db", dir.path().display()),
            seconds,
        )
        .await;
    }
    if !backends.contains("postgres") {
        return;
    }
    if let Ok(admin) = std::env::var("DATABASE_URL") {
        let name = format!("sbx_bench_release_{}", std::process::id());
        let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap();
        conn.execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
            .await
            .unwrap();
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        bench("postgres", &format!("{base}/{name}"), seconds).await;
        conn.execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
            .await
            .unwrap();
    } else {
        println!("postgres: skipped (set DATABASE_URL)");
    }
}
