//! The `sluice` binary as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn up_opens_the_embedded_log_says_what_runs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = sluice()
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let ready = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sluice up logs readiness");
        if line.contains("embedded broker ready") {
            break line;
        }
        assert!(started.elapsed() < Duration::from_secs(30));
    };
    assert!(
        ready.contains("running: inventory, payments; not built yet:"),
        "up says what runs and does not pretend to run the rest: {ready}"
    );
    assert!(dir.path().join("broker.db").exists());
    assert!(dir.path().join("inventory.db").exists());
    assert!(dir.path().join("payments.db").exists());
    let serving = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sluice up logs where it serves");
        if line.contains("/healthz") {
            break line;
        }
    };
    let addr = serving
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("an address in the log line");
    assert_eq!(http_get(addr, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(http_get(addr, "/readyz"), (200, "ready\n".to_owned()));
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
}

#[test]
fn a_bad_argument_is_a_usage_error_with_exit_code_2() {
    let out = sluice()
        .args(["bench", "--backends", "kafka"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka"));
    let out = sluice().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_runtime_failure_is_one_line_and_exit_code_1() {
    let out = sluice()
        .args(["up", "--data-dir", "/proc/nope"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("sluice: "), "{stderr}");
}

#[test]
fn the_embedded_bench_reports_both_operations() {
    let out = sluice()
        .args([
            "bench",
            "--backends",
            "embedded",
            "--messages",
            "2000",
            "--json",
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"operation\":\"publish\""), "{stdout}");
    assert!(stdout.contains("\"operation\":\"consume\""), "{stdout}");
}

#[test]
fn the_kit_bench_reports_the_kit_against_a_bare_loop() {
    let out = sluice()
        .args(["bench-kit", "--events", "2000", "--rounds", "1", "--json"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bare consume loop"), "{stdout}");
    assert!(stdout.contains("kit handler"), "{stdout}");
    assert!(stdout.contains("\"kit_over_bare\":"), "{stdout}");
    let out = sluice()
        .args(["bench-kit", "--events", "0"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
