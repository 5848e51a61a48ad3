//! The notifications service on every broker backend, with SQLite and
//! PostgreSQL: confirmation and cancellation e-mails into the mailbox, one
//! per event whatever the repeats, redeliveries and crashes; customers
//! without an address skipped; bad events dead-lettered; delivery by SMTP
//! to a small SMTP server in the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};
use sluice_broker::{
    Broker, InboundMessage, OutboundMessage, StartPosition, SubscribeOptions, Subscription,
};
use sluice_kit::config::ConsumerConfig;
use sluice_kit::testing::{BrokerBackend, DbBackend, FaultyBroker, TestBroker, TestDb};
use sluice_kit::{KitConfig, Metrics, Secret};
use sluice_notifications::tables::notifications;
use sluice_notifications::{
    ADDRESSES, Delivery, MailboxMessage, NAME, NotificationsConfig, Running, Subjects,
    notification_id, read_mailbox, status,
};
use sluice_proto::Envelope;
use sluice_proto::shop::accounts::v1::AccountRegistered;
use sluice_proto::shop::notifications::v1::EmailSent;
use sluice_proto::shop::orders::v1::{OrderCancelled, OrderConfirmed};

const WAIT: Duration = Duration::from_secs(30);

struct Env {
    tb: TestBroker,
    tdb: TestDb,
    /// The database the running service uses (reopened on restart).
    db: DatabaseConnection,
    subjects: Subjects,
    config: KitConfig,
    metrics: Metrics,
    mailbox: PathBuf,
    _dir: tempfile::TempDir,
    running: Option<Running>,
    events: Subscription,
}

impl Env {
    /// A broker, a database and a mailbox folder; no service yet.
    async fn new(b: BrokerBackend, d: DbBackend) -> Self {
        let tb = TestBroker::start(b).await;
        let tdb = TestDb::start(d).await;
        let dir = tempfile::tempdir().unwrap();
        let subjects = Subjects::new(&tb.domain, &tb.domain, &tb.domain);
        let mut config = KitConfig::default();
        // Fast retries, and a short ack wait so lost acks come back soon.
        let fast = ConsumerConfig {
            initial_backoff_ms: Some(50),
            ack_wait_ms: Some(2000),
            ..Default::default()
        };
        config.consumers.insert(NAME.into(), fast.clone());
        config.consumers.insert(ADDRESSES.into(), fast);
        let o = SubscribeOptions::new("observer", format!("{}.email.>", tb.domain))
            .start(StartPosition::Beginning);
        let events = tb.broker.subscribe(o).await.unwrap();
        let db = tdb.db.clone();
        Self {
            tb,
            tdb,
            db,
            subjects,
            config,
            metrics: Metrics::new(),
            mailbox: dir.path().join("mailbox"),
            _dir: dir,
            running: None,
            events,
        }
    }

    /// Starts the service on `broker`, delivering by `delivery`.
    async fn launch(&mut self, broker: Arc<dyn Broker>, delivery: Delivery) {
        let settings = NotificationsConfig {
            delivery,
            from: "Sluice Shop <shop@example.com>".into(),
            poll: Duration::from_millis(200),
            batch: 64,
        };
        let running = sluice_notifications::start(
            broker,
            self.db.clone(),
            &self.config,
            self.metrics.clone(),
            self.subjects.clone(),
            settings,
        )
        .await
        .unwrap();
        self.running = Some(running);
    }

    /// A new environment with the service delivering to its mailbox.
    async fn start(b: BrokerBackend, d: DbBackend) -> Self {
        let mut env = Self::new(b, d).await;
        env.launch(env.tb.broker.clone(), env.to_mailbox()).await;
        env
    }

    fn to_mailbox(&self) -> Delivery {
        Delivery::Mailbox(self.mailbox.clone())
    }

    /// Kills the service as a crash would, then starts it again on a fresh
    /// connection to the same database.
    async fn crash_and_restart(&mut self, delivery: Delivery) {
        self.running.take().unwrap().kill();
        self.db = self.tdb.reopen().await;
        self.launch(self.tb.broker.clone(), delivery).await;
    }

    async fn publish<T: prost::Message + prost::Name>(
        &self,
        subject: &str,
        envelope: &Envelope,
        event: &T,
    ) {
        let m = OutboundMessage::event(subject, envelope, event);
        self.tb.broker.publish(m).await.unwrap();
    }

    async fn register(&self, customer: &str, email: &str) {
        let e = AccountRegistered {
            account_id: customer.into(),
            email: email.into(),
        };
        let env = Envelope::new::<AccountRegistered>("/sluice/accounts").subject(customer);
        self.publish(&self.subjects.account_registered, &env, &e)
            .await;
    }

    /// Publishes an `OrderConfirmed`; returns its envelope (to publish the
    /// same event again).
    async fn confirm(&self, order: &str, customer: &str, cents: i64) -> Envelope {
        let e = OrderConfirmed {
            order_id: order.into(),
            customer_id: customer.into(),
            total_cents: cents,
            currency: "EUR".into(),
        };
        let env = Envelope::new::<OrderConfirmed>("/sluice/orders")
            .subject(order)
            .correlation_id("req-1");
        self.publish(&self.subjects.order_confirmed, &env, &e).await;
        env
    }

    async fn cancel(&self, order: &str, customer: &str, reason: &str) -> Envelope {
        let e = OrderCancelled {
            order_id: order.into(),
            customer_id: customer.into(),
            reason: reason.into(),
        };
        let env = Envelope::new::<OrderCancelled>("/sluice/orders").subject(order);
        self.publish(&self.subjects.order_cancelled, &env, &e).await;
        env
    }

    /// The next `notifications.email.sent`, acked.
    async fn next_sent(&mut self) -> (Envelope, EmailSent) {
        let d = tokio::time::timeout(WAIT, self.events.next())
            .await
            .expect("an EmailSent in time")
            .unwrap()
            .unwrap();
        let m: InboundMessage = d.message.clone();
        d.ack().await.unwrap();
        m.decode::<EmailSent>().unwrap()
    }

    async fn quiet(&mut self) {
        assert!(
            tokio::time::timeout(Duration::from_millis(700), self.events.next())
                .await
                .is_err(),
            "no further EmailSent"
        );
    }

    fn mail(&self) -> Vec<MailboxMessage> {
        read_mailbox(&self.mailbox).unwrap()
    }

    async fn notification(&self, id: &str) -> Option<notifications::Model> {
        notifications::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .unwrap()
    }

    async fn cleanup(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.events.close().await;
        self.tb.cleanup().await;
        self.tdb.cleanup().await;
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// --- scenarios ---------------------------------------------------------------

async fn a_confirmed_order_is_one_email_with_the_amount(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::start(b, d).await;
    env.register("c-1", "alice@example.com").await;
    let order = env.confirm("o-1", "c-1", 1234).await;
    let (envelope, sent) = env.next_sent().await;
    let id = notification_id(&order.id);
    assert_eq!(sent.notification_id, id);
    assert_eq!(sent.order_id, "o-1");
    assert_eq!(sent.to, "alice@example.com");
    assert_eq!(sent.template, "order_confirmed");
    assert_eq!(sent.cause_event_id, order.id);
    assert_eq!(envelope.causation_id.as_deref(), Some(order.id.as_str()));
    assert_eq!(envelope.correlation_id.as_deref(), Some("req-1"));
    assert_eq!(envelope.subject.as_deref(), Some("o-1"));

    let mail = env.mail();
    assert_eq!(mail.len(), 1, "{mail:?}");
    let m = &mail[0];
    assert_eq!(m.id, id);
    assert_eq!(m.to, "alice@example.com");
    assert!(m.from.contains("<shop@example.com>"), "{}", m.from);
    assert_eq!(m.subject, "Your order o-1 is confirmed");
    assert_eq!(m.message_id, format!("<{id}@example.com>"));
    assert!(m.text.contains("Total: 12.34 EUR"), "{}", m.text);
    assert!(m.html.as_deref().unwrap().contains("12.34 EUR"));
    let row = env.notification(&id).await.unwrap();
    assert_eq!(row.status, status::SENT);
    assert!(row.sent_at.is_some());

    // The same event again (same ce-id): still one e-mail.
    env.publish(
        &env.subjects.order_confirmed,
        &order,
        &OrderConfirmed {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            total_cents: 1234,
            currency: "EUR".into(),
        },
    )
    .await;
    env.quiet().await;
    assert_eq!(env.mail().len(), 1);
    env.cleanup().await;
}

async fn a_cancelled_order_is_one_email_with_the_reason(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::start(b, d).await;
    // The order event may come before the address: it is retried.
    let order = env
        .cancel("o-2", "c-2", "payment declined: card declined")
        .await;
    env.register("c-2", "bob@example.com").await;
    let (_, sent) = env.next_sent().await;
    assert_eq!(sent.template, "order_cancelled");
    assert_eq!(sent.to, "bob@example.com");
    let mail = env.mail();
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert_eq!(mail[0].id, notification_id(&order.id));
    assert_eq!(mail[0].subject, "Your order o-2 was cancelled");
    assert!(
        mail[0]
            .text
            .contains("Reason: payment declined: card declined"),
        "{}",
        mail[0].text
    );
    env.quiet().await;
    env.cleanup().await;
}

async fn an_event_redelivered_after_a_crash_is_one_email(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::new(b, d).await;
    // First run: every ack is lost, as in a crash between commit and ack.
    let faulty = Arc::new(FaultyBroker::new(env.tb.broker.clone()));
    faulty.lose_acks(true);
    env.launch(faulty.clone(), env.to_mailbox()).await;
    env.register("c-3", "carol@example.com").await;
    let order = env.confirm("o-3", "c-3", 999).await;
    let (_, sent) = env.next_sent().await;
    assert_eq!(sent.notification_id, notification_id(&order.id));
    assert_eq!(env.mail().len(), 1);

    // The restarted service is delivered the event again: its inbox knows it.
    env.crash_and_restart(env.to_mailbox()).await;
    let metrics = env.metrics.clone();
    let subject = env.subjects.order_confirmed.clone();
    eventually("the redelivered order event", || async {
        metrics.counts(NAME, &subject).duplicates >= 1
    })
    .await;
    env.quiet().await;
    let mail = env.mail();
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert_eq!(mail[0].subject, "Your order o-3 is confirmed");
    env.cleanup().await;
}

async fn a_pending_email_is_sent_once_after_a_restart(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::new(b, d).await;
    // The mailbox cannot be created (a file is in the way): the e-mail
    // stays pending and is retried.
    let blocked = env._dir.path().join("blocked");
    std::fs::write(&blocked, b"not a folder").unwrap();
    env.launch(env.tb.broker.clone(), Delivery::Mailbox(blocked))
        .await;
    env.register("c-4", "dave@example.com").await;
    let order = env.confirm("o-4", "c-4", 100).await;
    let id = notification_id(&order.id);
    eventually("a failed attempt", || async {
        env.notification(&id)
            .await
            .is_some_and(|r| r.attempts >= 1 && r.status == status::PENDING)
    })
    .await;
    assert!(
        env.notification(&id)
            .await
            .unwrap()
            .reason
            .contains("cannot write to the mailbox")
    );

    // Restarted with a usable mailbox, the pending e-mail goes out once.
    env.crash_and_restart(env.to_mailbox()).await;
    let (_, sent) = env.next_sent().await;
    assert_eq!(sent.notification_id, id);
    assert_eq!(env.mail().len(), 1);
    let first_sent = env.notification(&id).await.unwrap().sent_at.unwrap();

    // A crash after the file was written and before the row was marked
    // leaves it pending: the restart writes the same file again, and the
    // repeated EmailSent carries the same id, so nobody sees it twice.
    env.db
        .execute_unprepared(&format!(
            "UPDATE notifications SET status = 'pending', sent_at = NULL WHERE id = '{id}'"
        ))
        .await
        .unwrap();
    env.crash_and_restart(env.to_mailbox()).await;
    eventually("the notification marked sent again", || async {
        env.notification(&id)
            .await
            .is_some_and(|r| r.status == status::SENT && r.sent_at > Some(first_sent))
    })
    .await;
    env.quiet().await;
    let mail = env.mail();
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert_eq!(mail[0].id, id);
    env.cleanup().await;
}

async fn a_customer_without_an_address_is_skipped(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::start(b, d).await;
    let order = env.confirm("o-5", "c-nobody", 500).await;
    let id = notification_id(&order.id);
    eventually("the notification skipped", || async {
        env.notification(&id)
            .await
            .is_some_and(|r| r.status == status::SKIPPED)
    })
    .await;
    let row = env.notification(&id).await.unwrap();
    assert!(
        row.reason
            .contains("no e-mail address for customer c-nobody"),
        "{}",
        row.reason
    );
    let counts = env.metrics.counts(NAME, &env.subjects.order_confirmed);
    assert_eq!(counts.dead_lettered, 0, "skipped, not dead-lettered");
    env.quiet().await;
    assert!(env.mail().is_empty());
    env.cleanup().await;
}

async fn bad_events_are_dead_lettered_with_a_reason(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::start(b, d).await;
    env.confirm("", "c-6", 100).await;
    let e = Envelope::new::<OrderConfirmed>("/sluice/orders").subject("x");
    let garbage = OutboundMessage::new(
        &env.subjects.order_confirmed,
        e.to_headers(),
        Bytes::from_static(&[0xff]),
    );
    env.tb.broker.publish(garbage).await.unwrap();
    let reasons =
        sluice_kit::testing::dead_letter_reasons(env.tb.broker.as_ref(), &env.tb.domain, 2, WAIT)
            .await;
    assert!(
        reasons[0].contains("order event without an order id"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("payload does not decode"),
        "{reasons:?}"
    );
    env.quiet().await;
    assert!(env.mail().is_empty());
    env.cleanup().await;
}

async fn smtp_delivery_reaches_the_server_once(b: BrokerBackend, d: DbBackend) {
    let smtp = fake_smtp::FakeSmtp::start("bounce@").await;
    let mut env = Env::new(b, d).await;
    let url = Secret::new(format!("smtp://127.0.0.1:{}", smtp.port));
    env.launch(env.tb.broker.clone(), Delivery::Smtp(url)).await;
    env.register("c-7", "erin@example.com").await;
    let order = env.confirm("o-7", "c-7", 4200).await;
    let (_, sent) = env.next_sent().await;
    let id = notification_id(&order.id);
    assert_eq!(sent.notification_id, id);
    let received = smtp.messages();
    assert_eq!(received.len(), 1, "{received:?}");
    let m = &received[0];
    assert_eq!(m.from, "shop@example.com");
    assert_eq!(m.to, vec!["erin@example.com".to_owned()]);
    assert!(
        m.data.contains("Subject: Your order o-7 is confirmed"),
        "{}",
        m.data
    );
    assert!(
        m.data.contains(&format!("<{id}@example.com>")),
        "{}",
        m.data
    );
    assert!(m.data.contains("42.00 EUR"), "{}", m.data);
    assert!(env.mail().is_empty(), "nothing in the mailbox");

    // A recipient the server refuses for good: failed, not retried.
    env.register("c-8", "bounce@example.com").await;
    let order = env.confirm("o-8", "c-8", 100).await;
    let id = notification_id(&order.id);
    eventually("the notification failed", || async {
        env.notification(&id)
            .await
            .is_some_and(|r| r.status == status::FAILED)
    })
    .await;
    let row = env.notification(&id).await.unwrap();
    assert!(row.reason.contains("refused"), "{}", row.reason);
    env.quiet().await;
    assert_eq!(smtp.messages().len(), 1);
    env.cleanup().await;
}

sluice_kit::backend_matrix!(
    a_confirmed_order_is_one_email_with_the_amount,
    a_cancelled_order_is_one_email_with_the_reason,
    an_event_redelivered_after_a_crash_is_one_email,
    a_pending_email_is_sent_once_after_a_restart,
    a_customer_without_an_address_is_skipped,
    bad_events_are_dead_lettered_with_a_reason,
    smtp_delivery_reaches_the_server_once,
);

/// Just enough of an SMTP server to receive mail: greeting, EHLO/HELO,
/// MAIL, RCPT (refusing recipients containing a marker with 550), DATA,
/// RSET, NOOP, QUIT. It records each message accepted.
mod fake_smtp {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    /// One message the server accepted.
    #[derive(Debug, Clone)]
    pub(crate) struct Received {
        pub(crate) from: String,
        pub(crate) to: Vec<String>,
        pub(crate) data: String,
    }

    pub(crate) struct FakeSmtp {
        pub(crate) port: u16,
        messages: Arc<Mutex<Vec<Received>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl FakeSmtp {
        /// Listens on a free port; recipients containing `refuse` get 550.
        pub(crate) async fn start(refuse: &'static str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let messages = Arc::new(Mutex::new(Vec::new()));
            let m = messages.clone();
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(session(stream, m.clone(), refuse));
                }
            });
            Self {
                port,
                messages,
                task,
            }
        }

        pub(crate) fn messages(&self) -> Vec<Received> {
            self.messages.lock().unwrap().clone()
        }
    }

    impl Drop for FakeSmtp {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn address(arg: &str) -> String {
        let start = arg.find('<').map_or(0, |i| i + 1);
        let end = arg.find('>').unwrap_or(arg.len());
        arg[start..end].to_owned()
    }

    async fn session(stream: TcpStream, messages: Arc<Mutex<Vec<Received>>>, refuse: &str) {
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let mut from = String::new();
        let mut to = Vec::new();
        if w.write_all(b"220 fake ESMTP\r\n").await.is_err() {
            return;
        }
        while let Ok(Some(line)) = lines.next_line().await {
            let upper = line.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                b"250 fake\r\n"
            } else if upper.starts_with("MAIL FROM:") {
                from = address(&line);
                to.clear();
                b"250 2.1.0 OK\r\n"
            } else if upper.starts_with("RCPT TO:") {
                let rcpt = address(&line);
                if rcpt.contains(refuse) {
                    b"550 5.1.1 no such user\r\n"
                } else {
                    to.push(rcpt);
                    b"250 2.1.5 OK\r\n"
                }
            } else if upper == "DATA" {
                if w.write_all(b"354 end with <CRLF>.<CRLF>\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut data = String::new();
                while let Ok(Some(l)) = lines.next_line().await {
                    if l == "." {
                        break;
                    }
                    let l = l.strip_prefix('.').unwrap_or(&l);
                    data.push_str(l);
                    data.push('\n');
                }
                messages.lock().unwrap().push(Received {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data,
                });
                b"250 2.0.0 queued\r\n"
            } else if upper == "RSET" || upper == "NOOP" {
                b"250 OK\r\n"
            } else if upper == "QUIT" {
                let _ = w.write_all(b"221 bye\r\n").await;
                return;
            } else {
                b"502 5.5.2 not implemented\r\n"
            };
            if w.write_all(reply).await.is_err() {
                return;
            }
        }
    }
}
