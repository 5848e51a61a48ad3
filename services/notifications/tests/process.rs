//! `sluice-notifications` as an operator runs it: configured from the
//! environment, ready on /readyz, stopped gracefully by SIGTERM; a bad
//! setting is a one-line error and a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_kit::testing::{Lines, address_in, http_get};

#[test]
fn the_service_process_is_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-notifications"))
        .env(
            "SLUICE_BROKER__URL",
            format!("embedded:{}", dir.path().join("broker.db").display()),
        )
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.path().join("n.db").display()),
        )
        .env("SLUICE_MAILBOX_DIR", dir.path().join("mailbox"))
        .env("SLUICE_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::read(child.stderr.take().unwrap());
    let line = lines.wait_for("service running", Duration::from_secs(60));
    let addr = address_in(&line).expect("an address").to_owned();
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    sluice_kit::testing::scrape_metrics(&addr, "sluice_consumer_lag{");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");
}

#[test]
fn a_bad_sender_address_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-notifications"))
        .env(
            "SLUICE_BROKER__URL",
            format!("embedded:{}", dir.path().join("broker.db").display()),
        )
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.path().join("n.db").display()),
        )
        .env("SLUICE_MAIL_FROM", "not an address")
        .env("SLUICE_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sluice-notifications: cannot start notifications: the sender"),
        "{stderr}"
    );
}
