//! Start-up and idle footprint of `strongbox serve` on an empty SQLite database: time from
//! process spawn to the first 200 from `/readyz` (fresh directory: creates the database,
//! runs migrations, generates the development root key and first KEK), and resident
//! memory after two idle seconds. Targets: ready ≤ 300 ms, idle RSS ≤ 30 MB.
//! Run: `cargo bench --bench serve`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = 10;
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_strongbox"))
            .arg("serve")
            .current_dir(dir.path())
            .env("STRONGBOX_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while !ready(port) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "not ready in 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(start.elapsed());
        std::thread::sleep(Duration::from_secs(2));
        rss.push(rss_kib(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    times.sort();
    rss.sort_unstable();
    println!(
        "serve ready on empty SQLite: median {:?}, max {:?} over {runs} runs",
        times[runs / 2],
        times[runs - 1]
    );
    println!(
        "idle RSS after 2 s: median {:.1} MB, max {:.1} MB",
        rss[runs / 2] as f64 / 1024.0,
        rss[runs - 1] as f64 / 1024.0
    );
}
