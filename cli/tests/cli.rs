//! The `sluice` binary as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod operator;

use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_kit::testing::{Lines, address_in, http_get};

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// `sluice up` on a free port with its data in `dir`, and its log lines.
fn start_up(dir: &std::path::Path) -> (std::process::Child, Lines) {
    let mut child = sluice()
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::read(child.stderr.take().unwrap());
    (child, lines)
}

#[test]
fn up_opens_the_embedded_log_says_what_runs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = start_up(dir.path());
    let key = lines.wait_for("admin API key", Duration::from_secs(30));
    assert!(key.contains("sk_admin_"), "{key}");
    let stored = std::fs::read_to_string(dir.path().join("admin-key")).unwrap();
    assert!(
        key.contains(stored.trim()),
        "the printed key is the stored one"
    );
    let ready = lines.wait_for("embedded broker ready", Duration::from_secs(30));
    assert!(
        ready
            .contains("running: accounts, inventory, payments, orders, notifications, media, edge"),
        "up says what runs and does not pretend to run the rest: {ready}"
    );
    assert!(ready.contains("mailbox"), "says where e-mails go: {ready}");
    assert!(dir.path().join("broker.db").exists());
    for service in [
        "accounts",
        "inventory",
        "payments",
        "orders",
        "notifications",
        "media",
        "edge",
    ] {
        assert!(
            dir.path().join(format!("{service}.db")).exists(),
            "{service}.db"
        );
    }
    let serving = lines.wait_for("/healthz", Duration::from_secs(30));
    let addr = address_in(&serving).expect("an address in the log line");
    assert_eq!(http_get(addr, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(http_get(addr, "/readyz"), (200, "ready\n".to_owned()));
    let (status, body) = http_get(addr, "/v1/products");
    assert_eq!(status, 200, "the REST edge answers: {body}");
    assert!(body.contains("\"items\":[]"), "{body}");
    // The all-in-one's /metrics has every service's and the edge's.
    let metrics = sluice_kit::testing::scrape_metrics(
        addr,
        "sluice_http_requests_total{method=\"GET\",route=\"/v1/products\",status=\"200\"}",
    );
    for service in ["orders", "inventory", "payments", "edge"] {
        let line = format!("sluice_outbox_backlog{{service=\"{service}\"}}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
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
fn completions_cover_every_command_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_sluice()"),
        ("zsh", "#compdef sluice"),
        ("fish", "complete -c sluice"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[sluice]"),
    ] {
        let out = sluice().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {marker}");
        for command in [
            "up",
            "serve",
            "publish",
            "tail",
            "export",
            "import",
            "replay",
            "dlq",
            "redrive",
            "stats",
            "bench-shop",
            "completions",
        ] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let out = sluice().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
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
        .arg("--telemetry-overhead")
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
    assert!(stdout.contains("\"telemetry_on_over_off\":"), "{stdout}");
    let out = sluice()
        .args(["bench-kit", "--events", "0"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bench_shop_drives_orders_through_every_service() {
    let out = sluice()
        .args([
            "bench-shop",
            "--orders",
            "50",
            "--rate",
            "20",
            "--seconds",
            "1",
            "--products",
            "2",
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
    assert!(stdout.contains("bare 5-hop chain"), "{stdout}");
    assert!(
        stdout.contains("shop: orders.cmd.place -> orders.order.confirmed"),
        "{stdout}"
    );
    assert!(stdout.contains("\"peak_rss_kib\":"), "{stdout}");
}

#[test]
fn serve_runs_one_service_against_the_given_broker_and_database() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("embedded:{}", dir.path().join("log.db").display());
    let database = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("orders.db").display()
    );
    let mut child = sluice()
        .args(["serve", "orders", "--listen", "127.0.0.1:0", "--broker"])
        .arg(&broker)
        .arg("--database")
        .arg(&database)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::read(child.stderr.take().unwrap());
    let running = lines.wait_for("service running", Duration::from_secs(30));
    let addr = address_in(&running).expect("an address in the log line");
    assert_eq!(http_get(addr, "/readyz"), (200, "ready\n".to_owned()));
    assert!(dir.path().join("orders.db").exists());
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());

    let out = sluice().args(["serve", "shipping"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = sluice()
        .args(["serve", "payments", "--broker", "nats://127.0.0.1:1"])
        .arg("--database")
        .arg(&database)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("broker"), "{stderr}");
}

fn run_ok(args: &[&str]) -> serde_json::Value {
    let out = sluice().args(args).env("RUST_LOG", "off").output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

/// `sluice replay orders` beside a running `sluice up`: the rebuilt model's
/// digest is the live one's; the same from an exported file.
#[test]
fn replay_rebuilds_the_orders_of_a_running_up() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = start_up(dir.path());
    lines.wait_for("/healthz", Duration::from_secs(60));
    let broker = format!("embedded:{}", dir.path().join("broker.db").display());
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("edge.db").display());
    let jsonl = dir.path().join("cancelled.jsonl");
    let events: Vec<String> = (0..300)
        .map(|i| {
            format!(
                r#"{{"orderId":"r{i}","customerId":"c{}","reason":"test {i}"}}"#,
                i % 7
            )
        })
        .collect();
    std::fs::write(&jsonl, events.join("\n")).unwrap();
    let published = run_ok(&[
        "publish",
        "orders.order.cancelled",
        "--type",
        "shop.orders.v1.OrderCancelled",
        "--file",
        &jsonl.display().to_string(),
        "--output",
        "json",
        "--broker",
        &broker,
    ]);
    assert_eq!(published["published"], 300);
    // Wait until the live projection has applied them all.
    let mut lag = None;
    for _ in 0..60 {
        let stats = sluice()
            .args(["stats", "orders", "--interval", "200ms", "--output", "json"])
            .args(["--group", "edge-orders", "--broker", &broker])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&stats.stdout).into_owned();
        lag = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["group"] == "edge-orders")
            .and_then(|v| v["lag"].as_u64());
        if lag == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(lag, Some(0), "the live projection caught up");

    let report = run_ok(&[
        "replay",
        "orders",
        "--broker",
        &broker,
        "--database",
        &database,
        "--output",
        "json",
    ]);
    assert_eq!(report["projection"], "edge-orders");
    assert_eq!(report["rows"], 300, "{report}");
    assert!(report["events"].as_u64().unwrap() >= 300, "{report}");
    assert_eq!(report["digest"], report["digest_before"], "{report}");
    assert_eq!(report["changed"], false);

    let file = dir.path().join("orders.sluice").display().to_string();
    run_ok(&[
        "export", "orders.>", "-o", &file, "--output", "json", "--broker", &broker,
    ]);
    let from_file = run_ok(&[
        "replay",
        "--file",
        &file,
        "--projection",
        "orders",
        "--database",
        &database,
        "--output",
        "json",
    ]);
    assert_eq!(from_file["digest"], report["digest"], "{from_file}");
    assert_eq!(from_file["rows"], 300);

    let out = sluice()
        .args([
            "replay",
            "nothing",
            "--broker",
            &broker,
            "--database",
            &database,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no projection"));
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

/// The built-in dashboard in headless Chromium (Debian's `chromium`, driven
/// by playwright-core from `cli/tests/browser`, both provisioned by
/// `scripts/test.sh`): a running `sluice up`, orders placed while the page
/// is open; rates, topology, groups and an order's trace appear, and a
/// dead letter is purged from the page. The screenshot is
/// `test-output/dashboard.png`.
#[test]
fn dashboard_shows_live_traffic_in_a_browser() {
    let browser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run scripts/test.sh --provision-only \
         (npm ci there)",
        browser.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = start_up(dir.path());
    let serving = lines.wait_for("/healthz", Duration::from_secs(60));
    let addr = address_in(&serving).expect("an address").to_owned();
    let admin_key = std::fs::read_to_string(dir.path().join("admin-key")).unwrap();
    // A command the orders service refuses: a dead letter to purge.
    let broker = format!("embedded:{}", dir.path().join("broker.db").display());
    run_ok(&[
        "publish",
        "orders.cmd.place",
        "--type",
        "shop.orders.v1.PlaceOrder",
        "--json",
        "{}",
        "--output",
        "json",
        "--broker",
        &broker,
    ]);
    let output = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-output");
    std::fs::create_dir_all(&output).unwrap();
    let screenshot = output.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let node = std::env::var("SLUICE_NODE").unwrap_or_else(|_| "node".to_owned());
    let run = Command::new(&node)
        .current_dir(&browser)
        .arg("dashboard.mjs")
        .arg(format!("http://{addr}"))
        .arg(admin_key.trim())
        .arg("orders.cmd.place")
        .arg(&screenshot)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {node} ({e}): scripts/test.sh installs Node.js"));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(run.status.success(), "the browser test failed:\n{log}");
    for step in [
        "rates:",
        "topology:",
        "groups:",
        "trace:",
        "purged from the page",
    ] {
        assert!(log.contains(step), "{step} in\n{log}");
    }
    assert!(
        screenshot.is_file(),
        "a screenshot at {}",
        screenshot.display()
    );
}
