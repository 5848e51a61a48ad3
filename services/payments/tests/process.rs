//! `sluice-payments` as an operator runs it: configured from the
//! environment, ready on /readyz, stopped gracefully by SIGTERM; a bad
//! setting is a one-line error and a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn http_get(addr: &str, path: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out[9..12].parse().unwrap()
}

#[test]
fn the_service_process_is_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-payments"))
        .env(
            "SLUICE_BROKER__URL",
            format!("embedded:{}", dir.path().join("broker.db").display()),
        )
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display()),
        )
        .env("SLUICE_LISTEN", "127.0.0.1:0")
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
    let line = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the service says it runs");
        if line.contains("service running") {
            break line;
        }
    };
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("an address")
        .to_owned();
    assert_eq!(http_get(&addr, "/readyz"), 200);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");
}

#[test]
fn a_bad_setting_is_a_one_line_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-payments"))
        .env("SLUICE_LISTEN", "not-an-address")
        .env("RUST_LOG", "off")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("SLUICE_LISTEN"), "{stderr}");
}
