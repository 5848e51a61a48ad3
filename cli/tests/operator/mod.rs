//! `sluice publish` and `sluice tail` on every broker backend, driven as a
//! user drives them: by broker URL, from separate processes.

mod log;

use std::io::Write;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;
use sluice_broker::Broker;
use sluice_broker::amqp::{AmqpBroker, AmqpOptions};
use sluice_broker::testing::{NatsServer, amqp_url, free_port, unique};
use sluice_proto::Registry;

const ORDER_PLACED: &str = "shop.orders.v1.OrderPlaced";

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env_remove("SLUICE_BROKER__URL")
        .timeout(Duration::from_secs(120));
    cmd
}

fn order(id: &str, quantity: u32) -> String {
    format!(
        r#"{{"orderId":"{id}","customerId":"c1","lines":[{{"productId":"p1","quantity":{quantity},"priceCents":"250"}},{{"productId":"p2","quantity":1,"priceCents":"1000"}}],"totalCents":"{}","currency":"EUR"}}"#,
        250 * i64::from(quantity) + 1000
    )
}

/// The JSON tail prints for `json`: the registry's canonical form.
fn canonical(json: &str) -> Value {
    let reg = Registry::global().unwrap();
    reg.to_json(ORDER_PLACED, &reg.from_json(ORDER_PLACED, json).unwrap())
        .unwrap()
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Publishes one order and 1,000 more from a JSONL file through `broker`,
/// then tails the domain from the beginning and checks every event.
fn publish_then_tail(broker: &str, domain: &str) {
    let subject = format!("{domain}.order.placed");
    let single = order("first", 3);
    let out = sluice()
        .args([
            "publish",
            &subject,
            "--type",
            ORDER_PLACED,
            "--json",
            &single,
        ])
        .args(["--key", "first", "--output", "json", "--broker", broker])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let published = json_lines(&out.stdout);
    assert_eq!(published.len(), 1);
    let first_id = published[0]["id"].as_str().unwrap().to_owned();

    let out = sluice()
        .args([
            "tail",
            &format!("{domain}.>"),
            "--from-beginning",
            "--limit",
            "1",
        ])
        .args(["--output", "json", "--broker", broker])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let seen = json_lines(&out.stdout);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0]["event"],
        canonical(&single),
        "tail shows the same JSON"
    );
    assert_eq!(seen[0]["subject"], subject.as_str());
    assert_eq!(seen[0]["headers"]["ce-id"], first_id.as_str());
    assert_eq!(seen[0]["headers"]["ce-type"], ORDER_PLACED);
    assert_eq!(seen[0]["headers"]["ce-subject"], "first");
    assert_eq!(seen[0]["headers"]["ce-source"], "/sluice/cli");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    for i in 0..1000 {
        writeln!(f, "{}", order(&format!("o{i}"), i % 7 + 1)).unwrap();
    }
    drop(f);
    let out = sluice()
        .args(["publish", &subject, "--type", ORDER_PLACED, "--file"])
        .arg(&file)
        .args(["--output", "json", "--broker", broker])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 1001, "1,000 ids and a summary");
    let summary = &lines[1000];
    assert_eq!(summary["published"], 1000);
    assert_eq!(summary["failed"], 0);
    assert!(summary["events_per_second"].as_f64().unwrap() > 0.0);
    let ids: Vec<&str> = lines[..1000]
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();

    let out = sluice()
        .args([
            "tail",
            &format!("{domain}.>"),
            "--from-beginning",
            "--limit",
            "1001",
        ])
        .args(["--output", "json", "--broker", broker])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let seen = json_lines(&out.stdout);
    assert_eq!(seen.len(), 1001);
    assert_eq!(seen[0]["headers"]["ce-id"], first_id.as_str());
    for (i, event) in seen[1..].iter().enumerate() {
        assert_eq!(event["headers"]["ce-id"], ids[i], "event {i} in order");
        assert_eq!(event["event"]["orderId"], format!("o{i}"));
        assert_eq!(
            event["headers"]["ce-subject"], ids[i],
            "the key defaults to the id"
        );
    }
    let sequences: Vec<u64> = seen.iter().filter_map(|e| e["sequence"].as_u64()).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "sequences increase"
    );

    // Pretty output: a readable block with the headers and the event.
    let out = sluice()
        .args([
            "tail",
            &format!("{domain}.>"),
            "--from-beginning",
            "--limit",
            "1",
        ])
        .args(["--broker", broker])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("ce-id: {first_id}")), "{text}");
    assert!(text.contains("\"orderId\": \"first\""), "{text}");
}

#[test]
fn publish_then_tail_on_the_embedded_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("embedded:{}", dir.path().join("broker.db").display());
    publish_then_tail(&broker, &unique("cli"));
}

#[test]
fn publish_then_tail_on_nats() {
    let server = NatsServer::start();
    publish_then_tail(&server.url(), &unique("cli"));
}

/// Runs `f(url, domain)` with a CLI URL naming an exchange of its own;
/// the test's own connection declares it and, at the end, removes the
/// domain's queues, the other domains `f` returns, and the exchange.
fn with_rabbitmq(f: impl FnOnce(&str, &str) -> Vec<String> + std::panic::UnwindSafe) {
    let exchange = unique("sluice-test-");
    let domain = unique("cli");
    let url = amqp_url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = rt.block_on(async {
        AmqpBroker::connect(&url, AmqpOptions::for_tests(&exchange))
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {url} is required (run scripts/test.sh): {e}"))
    });
    let cli_url = format!("{url}?exchange={exchange}");
    let result = std::panic::catch_unwind(|| f(&cli_url, &domain));
    let others = result.as_ref().map(Clone::clone).unwrap_or_default();
    rt.block_on(async {
        admin.delete_domain(&domain).await.unwrap();
        for other in others {
            admin.delete_domain(&other).await.unwrap();
        }
        admin.delete_topology().await.unwrap();
        admin.close().await;
    });
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Connects as the CLI does (an AMQP URL may name its exchange).
async fn connect(url: &str) -> std::sync::Arc<dyn Broker> {
    match url.split_once("?exchange=") {
        Some((plain, exchange)) => std::sync::Arc::new(
            AmqpBroker::connect(
                plain,
                AmqpOptions {
                    exchange: exchange.to_owned(),
                    ..AmqpOptions::default()
                },
            )
            .await
            .unwrap(),
        ),
        None => sluice_broker::connect(url).await.unwrap(),
    }
}

#[test]
fn publish_then_tail_on_rabbitmq() {
    with_rabbitmq(|url, domain| {
        publish_then_tail(url, domain);
        Vec::new()
    });
}

#[test]
fn stdin_publishes_one_event_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("embedded:{}", dir.path().join("broker.db").display());
    let input = format!("{}\n\n{}\n", order("a", 1), order("b", 2));
    let out = sluice()
        .args(["publish", "shop.order.placed", "--type", ORDER_PLACED, "-"])
        .args(["--broker", &broker])
        .write_stdin(input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "two ids"
    );
    assert!(
        stderr_of(&out).contains("published 2 of 2 events"),
        "{}",
        stderr_of(&out)
    );
    let out = sluice()
        .args([
            "tail",
            "shop.>",
            "--from-beginning",
            "--limit",
            "2",
            "--output",
            "json",
        ])
        .args(["--broker", &broker])
        .output()
        .unwrap();
    let seen = json_lines(&out.stdout);
    assert_eq!(seen[0]["event"]["orderId"], "a");
    assert_eq!(seen[1]["event"]["orderId"], "b");
}

#[test]
fn tail_since_a_duration_starts_at_that_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("embedded:{}", dir.path().join("broker.db").display());
    let out = sluice()
        .args([
            "publish",
            "shop.order.placed",
            "--type",
            ORDER_PLACED,
            "--json",
        ])
        .arg(order("recent", 1))
        .args(["--broker", &broker])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = sluice()
        .args([
            "tail", "shop.>", "--since", "10m", "--limit", "1", "--output", "json",
        ])
        .args(["--broker", &broker])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(json_lines(&out.stdout)[0]["event"]["orderId"], "recent");
    let out = sluice()
        .args(["tail", "shop.>", "--since", "ten minutes"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad duration is a usage error"
    );
}

/// Runs `sluice` with `args` and checks it failed with one line on stderr
/// containing every one of `needles`.
fn fails_with_one_line(args: &[&str], stdin: Option<&str>, needles: &[&str]) {
    let mut cmd = sluice();
    cmd.args(args);
    if let Some(input) = stdin {
        cmd.write_stdin(input.to_owned());
    }
    let out = cmd.output().unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("sluice: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: {needle:?} in {stderr}");
    }
    assert!(out.stdout.is_empty(), "nothing was published: {args:?}");
}

#[test]
fn bad_input_is_a_one_line_error_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broker.db");
    let broker = format!("embedded:{}", db.display());
    let b = broker.as_str();
    fails_with_one_line(
        &[
            "publish",
            "shop.x",
            "--type",
            "shop.orders.v1.Nope",
            "--json",
            "{}",
            "--broker",
            b,
        ],
        None,
        &["unknown event type", "shop.orders.v1.Nope"],
    );
    fails_with_one_line(
        &[
            "publish",
            "shop.x",
            "--type",
            ORDER_PLACED,
            "--json",
            r#"{"orderId":"o1","lines":[{"productId":"p1","quantity":"two"}]}"#,
            "--broker",
            b,
        ],
        None,
        &["lines[0].quantity"],
    );
    fails_with_one_line(
        &[
            "publish",
            "shop.x",
            "--type",
            ORDER_PLACED,
            "--json",
            r#"{"orderID":"o1"}"#,
            "--broker",
            b,
        ],
        None,
        &["orderID"],
    );
    let file = dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n{{\"orderId\": 7\n{}\n",
            order("a", 1),
            order("b", 1),
            order("c", 1)
        ),
    )
    .unwrap();
    let path = file.display().to_string();
    fails_with_one_line(
        &[
            "publish",
            "shop.x",
            "--type",
            ORDER_PLACED,
            "--file",
            &path,
            "--broker",
            b,
        ],
        None,
        &["line 3", "nothing was published"],
    );
    fails_with_one_line(
        &[
            "publish",
            "shop.x",
            "--type",
            ORDER_PLACED,
            "-",
            "--broker",
            b,
        ],
        Some(&format!(
            "{}\n{{\"lines\":[{{\"quantity\":-1}}]}}\n",
            order("a", 1)
        )),
        &["line 2", "lines[0].quantity"],
    );
    assert!(!db.exists(), "bad input never reaches the broker");
    fails_with_one_line(
        &[
            "publish",
            "shop.x",
            "--type",
            ORDER_PLACED,
            "--file",
            "/nonexistent.jsonl",
            "--broker",
            b,
        ],
        None,
        &["/nonexistent.jsonl"],
    );
}

#[test]
fn an_unreachable_broker_is_a_one_line_error() {
    let nats = format!("nats://127.0.0.1:{}", free_port());
    let amqp = format!("amqp://guest:secret@127.0.0.1:{}/%2f", free_port());
    for url in [nats.as_str(), amqp.as_str()] {
        fails_with_one_line(
            &[
                "publish",
                "shop.x",
                "--type",
                ORDER_PLACED,
                "--json",
                "{}",
                "--broker",
                url,
            ],
            None,
            &["connecting to the broker", "127.0.0.1"],
        );
        fails_with_one_line(
            &["tail", "shop.>", "--limit", "1", "--broker", url],
            None,
            &["connecting to the broker"],
        );
        for args in [
            &["export", "shop.>", "-o", "/tmp/never.sluice"][..],
            &["dlq", "list"],
            &["stats"],
            &["replay", "orders", "--database", "sqlite::memory:"],
        ] {
            let mut all = args.to_vec();
            all.extend(["--broker", url]);
            fails_with_one_line(&all, None, &["connecting to the broker"]);
        }
        assert!(
            !std::path::Path::new("/tmp/never.sluice.partial").exists()
                && !std::path::Path::new("/tmp/never.sluice").exists(),
            "a failed export leaves no file"
        );
    }
    let out = sluice()
        .args([
            "publish",
            "shop.x",
            "--type",
            ORDER_PLACED,
            "--json",
            "{}",
            "--broker",
            &amqp,
        ])
        .output()
        .unwrap();
    assert!(
        !stderr_of(&out).contains("secret"),
        "passwords are redacted"
    );
}

#[test]
fn usage_errors_exit_with_code_2() {
    for args in [
        &["publish", "shop.x", "--type", ORDER_PLACED][..],
        &[
            "publish",
            "shop.x",
            "--type",
            ORDER_PLACED,
            "--json",
            "{}",
            "--file",
            "f",
        ],
        &["tail", "shop.>", "--from-beginning", "--from-seq", "3"],
        &["tail", "shop.>", "--output", "yaml"],
        &["export", "shop.>"],
        &["export", "shop.>", "-o", "f", "--since", "yesterday-ish"],
        &["import"],
        &["replay"],
        &["replay", "orders", "--file", "f", "--since", "1h"],
        &["dlq", "redrive"],
        &["dlq", "purge", "orders:1", "--all"],
        &["stats", "--interval", "soon"],
    ] {
        let out = sluice().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr_of(&out));
    }
}
