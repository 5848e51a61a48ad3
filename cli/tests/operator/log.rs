//! `sluice export` / `import` and `sluice dlq` on every backend.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use sluice_broker::scan::scan_all;
use sluice_broker::testing::{NatsServer, unique};
use sluice_broker::{Headers, StartPosition, SubscribeOptions};

use super::{ORDER_PLACED, json_lines, order, sluice, stderr_of};

/// Tests `$check(broker_url, domain)` on the embedded log, on a NATS
/// server of its own, and on RabbitMQ (an exchange of its own).
macro_rules! on_every_backend {
    ($check:ident) => {
        mod $check {
            use sluice_broker::testing::{NatsServer, unique};

            #[test]
            fn on_the_embedded_log() {
                let dir = tempfile::tempdir().unwrap();
                let broker = format!("embedded:{}", dir.path().join("broker.db").display());
                super::$check(&broker, &unique("cli"));
            }

            #[test]
            fn on_nats() {
                let server = NatsServer::start();
                super::$check(&server.url(), &unique("cli"));
            }

            #[test]
            fn on_rabbitmq() {
                super::super::with_rabbitmq(|url, domain| {
                    super::$check(url, domain);
                    Vec::new()
                });
            }
        }
    };
}

/// Every message stored on `filter`: subject, headers, payload, in order.
fn stored(broker: &str, filter: &str) -> Vec<(String, Headers, Vec<u8>)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = super::connect(broker).await;
        let mut all = Vec::new();
        scan_all(&*b, "test", filter, StartPosition::Beginning, |m| {
            all.push((m.subject.clone(), m.headers.clone(), m.payload.to_vec()));
        })
        .await
        .unwrap();
        b.close().await;
        all
    })
}

fn run_json_lines(args: &[&str]) -> Vec<Value> {
    let out = sluice().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    json_lines(&out.stdout)
}

fn run_json(args: &[&str]) -> Value {
    let out = sluice().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    json_lines(&out.stdout).pop().unwrap()
}

/// 10,000 events published from JSONL, exported, imported under a prefix
/// into a fresh stream (byte-equal, in order, same ids), imported again
/// (nothing added) — on NATS also after shrinking the stream's
/// de-duplication window to 1 s and waiting it out.
/// Returns the domains it made besides `domain`.
fn export_then_import(broker: &str, domain: &str, after_window: impl FnOnce(&str)) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("orders.jsonl");
    let mut f = std::fs::File::create(&jsonl).unwrap();
    for i in 0..10_000 {
        writeln!(f, "{}", order(&format!("o{i}"), i % 5 + 1)).unwrap();
    }
    drop(f);
    let subject = format!("{domain}.order.placed");
    let jsonl = jsonl.display().to_string();
    let summary = run_json(&[
        "publish",
        &subject,
        "--type",
        ORDER_PLACED,
        "--file",
        &jsonl,
        "--output",
        "json",
        "--broker",
        broker,
    ]);
    assert_eq!(summary["published"], 10_000);

    let file = dir.path().join("orders.sluice").display().to_string();
    let filter = format!("{domain}.>");
    let exported = run_json(&[
        "export", &filter, "-o", &file, "--output", "json", "--broker", broker,
    ]);
    assert_eq!(exported["exported"], 10_000, "{exported}");

    let prefix = unique("imp");
    let imported = run_json(&[
        "import",
        &file,
        "--to-subject-prefix",
        &prefix,
        "--output",
        "json",
        "--broker",
        broker,
    ]);
    assert_eq!(imported["imported"], 10_000, "{imported}");
    let source = stored(broker, &filter);
    let copy = stored(broker, &format!("{prefix}.>"));
    assert_eq!(source.len(), 10_000);
    assert_eq!(copy.len(), 10_000);
    for (i, (a, b)) in source.iter().zip(&copy).enumerate() {
        assert_eq!(format!("{prefix}.{}", a.0), b.0, "subject of event {i}");
        assert_eq!(a.1, b.1, "headers (and id) of event {i}");
        assert_eq!(a.2, b.2, "payload of event {i}");
    }

    after_window(&prefix);
    let again = run_json(&[
        "import",
        &file,
        "--to-subject-prefix",
        &prefix,
        "--output",
        "json",
        "--broker",
        broker,
    ]);
    assert_eq!(
        again["imported"], 0,
        "a second import adds nothing: {again}"
    );
    assert_eq!(stored(broker, &format!("{prefix}.>")).len(), 10_000);

    // A damaged file: one line, a non-zero exit, nothing published.
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    let damaged = dir.path().join("damaged.sluice");
    std::fs::write(&damaged, &bytes).unwrap();
    let fresh = unique("imp");
    let import_damaged = || {
        sluice()
            .args(["import"])
            .arg(&damaged)
            .args(["--to-subject-prefix", &fresh, "--broker", broker])
            .output()
            .unwrap()
    };
    let out = import_damaged();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("checksum mismatch") || err.contains("corrupt"),
        "{err}"
    );
    assert!(err.contains("nothing was imported"), "{err}");
    bytes[n / 2] ^= 0x55;
    std::fs::write(&damaged, &bytes[..n - 30]).unwrap();
    let out = import_damaged();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("truncated"), "{}", stderr_of(&out));
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("edge.db").display());
    let out = sluice()
        .args([
            "replay",
            "--projection",
            "orders",
            "--database",
            &db,
            "--file",
        ])
        .arg(&damaged)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("truncated") && err.contains("nothing was replayed"),
        "{err}"
    );
    assert!(stored(broker, &format!("{fresh}.>")).is_empty());
    vec![prefix, fresh]
}

#[test]
fn export_then_import_on_the_embedded_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("embedded:{}", dir.path().join("broker.db").display());
    export_then_import(&broker, &unique("cli"), |_| {});
}

#[test]
fn export_then_import_on_nats_past_the_dedup_window() {
    let server = NatsServer::start();
    let url = server.url();
    export_then_import(&url, &unique("cli"), |prefix| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = async_nats::connect(&url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let name = sluice_broker::nats::stream_name(prefix);
            let mut stream = js.get_stream(&name).await.unwrap();
            let mut config = stream.info().await.unwrap().config.clone();
            config.duplicate_window = Duration::from_secs(1);
            js.update_stream(config).await.unwrap();
        });
        std::thread::sleep(Duration::from_millis(1500));
    });
}

#[test]
fn export_then_import_on_rabbitmq() {
    super::with_rabbitmq(|url, domain| export_then_import(url, domain, |_| {}));
}

/// A consumer dead-letters an event; `dlq list` shows it with its reason,
/// `dlq show` with its headers and event, `dlq redrive` delivers it again
/// and removes it from the list; `dlq purge --all` empties the list.
fn dead_letters(broker: &str, domain: &str) {
    let subject = format!("{domain}.order.placed");
    let filter = format!("{domain}.>");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(super::connect(broker));
    // Listing a domain without dead letters finds none and creates nothing.
    let empty = run_json_lines(&[
        "dlq",
        "list",
        "--subject",
        &filter,
        "--output",
        "json",
        "--broker",
        broker,
    ]);
    assert!(empty.is_empty(), "{empty:?}");
    let dlq = format!("dlq.{domain}");
    if b.kind() != sluice_broker::BrokerKind::Embedded {
        assert_eq!(
            rt.block_on(b.stream_stats(&dlq)).unwrap(),
            None,
            "{dlq} was not created"
        );
    }
    let mut sub = rt
        .block_on(b.subscribe(SubscribeOptions::new("picky", filter.as_str())))
        .unwrap();
    let published = run_json(&[
        "publish",
        &subject,
        "--type",
        ORDER_PLACED,
        "--json",
        &order("bad", 1),
        "--output",
        "json",
        "--broker",
        broker,
    ]);
    let id = published["id"].as_str().unwrap().to_owned();
    let next = |sub: &mut sluice_broker::Subscription| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .expect("a delivery")
                .unwrap()
                .unwrap()
        })
    };
    let d = next(&mut sub);
    assert_eq!(d.message.id(), Some(id.as_str()));
    let original = d.message.payload.clone();
    rt.block_on(d.dead_letter("price list unavailable"))
        .unwrap();

    let listed = |which: &str| {
        let out = sluice()
            .args([
                "dlq",
                "list",
                "--subject",
                which,
                "--output",
                "json",
                "--broker",
                broker,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        json_lines(&out.stdout)
    };
    let letters = listed(&filter);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["reason"], "price list unavailable");
    assert_eq!(letters[0]["group"], "picky");
    assert_eq!(letters[0]["subject"], subject.as_str());
    assert_eq!(letters[0]["ce_id"], id.as_str());
    assert_eq!(letters[0]["deliveries"], 1);
    let dl = letters[0]["id"].as_str().unwrap().to_owned();

    let shown = run_json(&["dlq", "show", &dl, "--output", "json", "--broker", broker]);
    assert_eq!(shown["event"]["orderId"], "bad");
    assert_eq!(shown["headers"]["ce-id"], id.as_str());
    assert_eq!(shown["reason"], "price list unavailable");

    let redriven = run_json(&[
        "dlq", "redrive", &dl, "--output", "json", "--broker", broker,
    ]);
    assert_eq!(redriven["action"], "redriven");
    let again = next(&mut sub);
    assert_eq!(again.message.id(), Some(id.as_str()), "delivered again");
    assert_eq!(again.message.payload, original);
    rt.block_on(again.ack()).unwrap();
    assert!(listed(&filter).is_empty(), "no longer a dead letter");
    let out = sluice()
        .args(["dlq", "show", &dl, "--broker", broker])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("no dead letter"),
        "{}",
        stderr_of(&out)
    );

    // Two more dead letters, purged at once.
    for n in 0..2 {
        run_json(&[
            "publish",
            &subject,
            "--type",
            ORDER_PLACED,
            "--json",
            &order(&format!("p{n}"), 1),
            "--output",
            "json",
            "--broker",
            broker,
        ]);
        let d = next(&mut sub);
        rt.block_on(d.dead_letter("refused")).unwrap();
    }
    assert_eq!(listed(&filter).len(), 2);
    let out = sluice()
        .args([
            "dlq",
            "purge",
            "--all",
            "--subject",
            &filter,
            "--output",
            "json",
            "--broker",
            broker,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(json_lines(&out.stdout).len(), 2);
    assert!(listed(&filter).is_empty());
    rt.block_on(async {
        sub.close().await;
        b.delete_group(&filter, "picky").await.unwrap();
        b.close().await;
    });
}

on_every_backend!(dead_letters);

/// `sluice stats` of a domain with 5 events, a group that acked one and
/// dead-lettered one: 5 messages, lag 3, 1 dead letter.
fn stats(broker: &str, domain: &str) {
    let subject = format!("{domain}.order.placed");
    let filter = format!("{domain}.>");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(super::connect(broker));
    // Joined before the events exist (start New): on RabbitMQ a group
    // starting earlier replays the stream queue, whose rest its lag cannot
    // count (it reports at least 1 until the replay is done).
    let options = SubscribeOptions::new("watcher", filter.as_str()).prefetch(1);
    let mut sub = rt.block_on(b.subscribe(options)).unwrap();
    for n in 0..5 {
        run_json(&[
            "publish",
            &subject,
            "--type",
            ORDER_PLACED,
            "--json",
            &order(&format!("s{n}"), 1),
            "--output",
            "json",
            "--broker",
            broker,
        ]);
    }
    rt.block_on(async {
        let first = sub.next().await.unwrap().unwrap();
        first.ack().await.unwrap();
        let second = sub.next().await.unwrap().unwrap();
        second.dead_letter("unwanted").await.unwrap();
        sub.close().await;
        b.close().await;
    });
    let mut seen = Vec::new();
    for _ in 0..100 {
        let out = sluice()
            .args(["stats", domain, "--group", "watcher", "--interval", "100ms"])
            .args(["--output", "json", "--broker", broker])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        seen = json_lines(&out.stdout);
        let lag = seen
            .iter()
            .find(|l| l["group"] == "watcher")
            .map(|l| l["lag"].clone());
        // RabbitMQ reports a stream queue's count some seconds late.
        let messages = seen
            .iter()
            .find(|l| l.get("group").is_none())
            .map(|l| l["messages"].clone());
        if lag == Some(Value::from(3)) && messages == Some(Value::from(5)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stream = seen
        .iter()
        .find(|l| l["stream"] == domain && l.get("group").is_none());
    let stream = stream.unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(stream["messages"], 5, "{seen:?}");
    assert_eq!(stream["dead_letters"], 1, "{seen:?}");
    let group = seen.iter().find(|l| l["group"] == "watcher").unwrap();
    assert_eq!(group["lag"], 3, "{seen:?}");
    let out = sluice()
        .args(["stats", domain, "--broker", broker])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("dead letters") && table.contains(domain),
        "{table}"
    );
    rt.block_on(async {
        let b = super::connect(broker).await;
        b.delete_group(&filter, "watcher").await.unwrap();
        b.close().await;
    });
}

on_every_backend!(stats);
