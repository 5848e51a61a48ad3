//! The sender: delivers pending notifications after their handler's
//! transaction committed, then marks each `sent` and emits
//! `notifications.email.sent` in one transaction.
//!
//! It is woken after each commit of the order consumer (the kit's
//! `after_commit` hook), polls otherwise, and makes one pass on start, so
//! what a crash left pending goes out after a restart.
//!
//! Delivering twice is possible only when a crash falls between delivering
//! and marking; the second delivery is the same message: the mailbox file is
//! replaced, and an SMTP resend carries the same `Message-ID`, which mail
//! clients use to drop the copy. On PostgreSQL each notification is claimed
//! (`FOR UPDATE SKIP LOCKED`) for its delivery, so replicas never deliver
//! the same one at the same time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use sluice_broker::OutboundMessage;
use sluice_kit::ShutdownListener;
use sluice_kit::db::now_micros;
use sluice_kit::outbox::Emitter;
use sluice_proto::Envelope;
use sluice_proto::shop::notifications::v1::EmailSent;
use tokio::sync::Notify;

use crate::config::{ConfigError, Delivery, NotificationsConfig};
use crate::tables::notifications;
use crate::{NAME, status};

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The first and the longest wait before a failed delivery is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Where messages go, and who they are from.
pub(crate) struct Transport {
    from: Mailbox,
    via: Via,
}

enum Via {
    Mailbox(PathBuf),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The SMTP transport holds credentials: never print it.
        let via = match &self.via {
            Via::Mailbox(dir) => format!("mailbox {}", dir.display()),
            Via::Smtp(_) => "smtp".to_owned(),
        };
        f.debug_struct("Transport")
            .field("from", &self.from.to_string())
            .field("via", &via)
            .finish()
    }
}

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// Will fail the same way every time (a bad address, a 5xx answer).
    #[error("{0}")]
    Permanent(String),
    /// May pass later (the server is down, a 4xx answer, a full disk).
    #[error("{0}")]
    Transient(String),
}

impl Transport {
    /// The transport `config` asks for.
    pub(crate) fn new(config: &NotificationsConfig) -> Result<Self, ConfigError> {
        let from: Mailbox = config.from.parse().map_err(|e| ConfigError::From {
            from: config.from.clone(),
            reason: format!("{e}"),
        })?;
        let via = match &config.delivery {
            Delivery::Mailbox(dir) => Via::Mailbox(dir.clone()),
            Delivery::Smtp(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
                    .map_err(|e| ConfigError::SmtpUrl {
                        url: sluice_kit::db::redact(url.expose()),
                        reason: e.to_string(),
                    })?
                    .timeout(Some(SMTP_TIMEOUT))
                    .build();
                Via::Smtp(transport)
            }
        };
        Ok(Self { from, via })
    }

    /// The RFC 5322 message of notification `row`. Its `Message-ID` and
    /// `Date` come from the row, so a second delivery is the same message.
    fn message(&self, row: &notifications::Model) -> Result<Message, SendError> {
        let to: Mailbox = row.recipient.parse().map_err(|e| {
            SendError::Permanent(format!("invalid recipient {:?}: {e}", row.recipient))
        })?;
        let date = SystemTime::UNIX_EPOCH
            + Duration::from_micros(u64::try_from(row.created_at).unwrap_or_default());
        let builder = Message::builder()
            .message_id(Some(format!("<{}@{}>", row.id, self.from.email.domain())))
            .date(date)
            .from(self.from.clone())
            .to(to)
            .subject(row.subject.clone());
        let built = match &row.body_html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                row.body_text.clone(),
                html.clone(),
            )),
            None => builder.singlepart(SinglePart::plain(row.body_text.clone())),
        };
        built.map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))
    }

    /// Delivers notification `row`.
    async fn deliver(&self, row: &notifications::Model) -> Result<(), SendError> {
        let message = self.message(row)?;
        match &self.via {
            Via::Mailbox(dir) => crate::mailbox::write_message(dir, &row.id, &message.formatted())
                .await
                .map(|_| ())
                .map_err(|e| {
                    SendError::Transient(format!(
                        "cannot write to the mailbox {}: {e}",
                        dir.display()
                    ))
                }),
            Via::Smtp(smtp) => match smtp.send(message).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(SendError::Permanent(format!(
                    "the mail server refused: {e}"
                ))),
                Err(e) => Err(SendError::Transient(format!("SMTP: {e}"))),
            },
        }
    }
}

/// The sender task's state.
#[derive(Debug)]
pub(crate) struct Sender {
    pub(crate) db: DatabaseConnection,
    pub(crate) transport: Transport,
    pub(crate) emitter: Emitter,
    pub(crate) email_sent: String,
    pub(crate) wake: Arc<Notify>,
    pub(crate) poll: Duration,
    pub(crate) batch: u64,
}

impl Sender {
    /// Delivers pending notifications until `stop` fires, then makes one
    /// last pass.
    pub(crate) async fn run(self, mut stop: ShutdownListener) {
        loop {
            let delivered = match self.pass().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "notification sender pass failed; retrying");
                    0
                }
            };
            if delivered >= self.batch {
                continue;
            }
            // The consumer wakes the sender after each commit of recorded
            // notifications; the poll finds retries that came due and rows
            // of other replicas.
            tokio::select! {
                () = stop.wait() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
            }
        }
        if let Err(e) = self.pass().await {
            tracing::warn!(error = %e, "notification sender's last pass failed");
        }
    }

    /// Delivers up to one batch of due notifications; returns how many were
    /// looked at.
    async fn pass(&self) -> Result<u64, DbErr> {
        let rows = notifications::Entity::find()
            .filter(notifications::Column::Status.eq(status::PENDING))
            .filter(notifications::Column::NextAttemptAt.lte(now_micros()))
            .order_by_asc(notifications::Column::CreatedAt)
            .limit(self.batch)
            .all(&self.db)
            .await?;
        let n = rows.len() as u64;
        for row in rows {
            self.send_one(row).await?;
        }
        Ok(n)
    }

    /// Delivers one notification and records the outcome.
    async fn send_one(&self, row: notifications::Model) -> Result<(), DbErr> {
        // PostgreSQL: hold the row for the delivery, so another replica
        // skips it. SQLite has one process and one writer: nothing to claim,
        // and a transaction held across an SMTP exchange would stall the
        // consumers.
        let (claim, row) = if self.db.get_database_backend() == DbBackend::Postgres {
            let txn = self.db.begin().await?;
            let claimed = notifications::Entity::find_by_id(row.id.clone())
                .filter(notifications::Column::Status.eq(status::PENDING))
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .one(&txn)
                .await?;
            match claimed {
                Some(row) => (Some(txn), row),
                None => {
                    txn.rollback().await?;
                    return Ok(());
                }
            }
        } else {
            (None, row)
        };
        let outcome = self.transport.deliver(&row).await;
        let txn = match claim {
            Some(txn) => txn,
            None => self.db.begin().await?,
        };
        match outcome {
            Ok(()) => self.mark_sent(txn, &row).await,
            Err(SendError::Permanent(reason)) => {
                tracing::warn!(notification = %row.id, order = %row.order_id, %reason, "notification failed for good");
                update_pending(
                    &txn,
                    &row.id,
                    [
                        (notifications::Column::Status, Expr::value(status::FAILED)),
                        (notifications::Column::Reason, Expr::value(reason)),
                        (
                            notifications::Column::Attempts,
                            Expr::value(row.attempts.saturating_add(1)),
                        ),
                    ],
                )
                .await?;
                txn.commit().await
            }
            Err(SendError::Transient(reason)) => {
                let attempts = row.attempts.saturating_add(1);
                let delay = retry_delay(attempts);
                tracing::warn!(notification = %row.id, order = %row.order_id, %reason, attempts, retry_in = ?delay, "notification not delivered; will retry");
                let next = now_micros()
                    .saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
                update_pending(
                    &txn,
                    &row.id,
                    [
                        (notifications::Column::Reason, Expr::value(reason)),
                        (notifications::Column::Attempts, Expr::value(attempts)),
                        (notifications::Column::NextAttemptAt, Expr::value(next)),
                    ],
                )
                .await?;
                txn.commit().await
            }
        }
    }

    /// Marks `row` sent and emits `EmailSent` in `txn`, then commits.
    async fn mark_sent(
        &self,
        txn: DatabaseTransaction,
        row: &notifications::Model,
    ) -> Result<(), DbErr> {
        let marked = update_pending(
            &txn,
            &row.id,
            [
                (notifications::Column::Status, Expr::value(status::SENT)),
                (notifications::Column::Reason, Expr::value("")),
                (notifications::Column::SentAt, Expr::value(now_micros())),
            ],
        )
        .await?;
        if marked == 0 {
            // Another replica got there first.
            return txn.rollback().await;
        }
        let event = EmailSent {
            notification_id: row.id.clone(),
            order_id: row.order_id.clone(),
            to: row.recipient.clone(),
            template: row.template.clone(),
            cause_event_id: row.event_id.clone(),
        };
        let mut envelope = Envelope::new::<EmailSent>(format!("/sluice/{NAME}"))
            .subject(row.order_id.clone())
            .correlation_id(row.correlation_id.clone())
            .causation_id(row.event_id.clone());
        // One id per notification: should it ever be announced twice, the
        // broker and consumers' inboxes drop the copy.
        envelope.id = crate::derived_id(&row.id, "email.sent");
        let mut message = OutboundMessage::event(&self.email_sent, &envelope, &event);
        // Sent later, by this task: the event continues the trace of the
        // handler that recorded the e-mail.
        sluice_kit::trace::produce_within(&mut message, row.trace_parent.as_deref());
        self.emitter.commit(txn, &[message]).await?;
        tracing::info!(notification = %row.id, order = %row.order_id, template = %row.template, "e-mail sent");
        Ok(())
    }
}

/// Sets `values` on notification `id` if it is still pending; returns how
/// many rows changed (0 or 1).
async fn update_pending<const N: usize>(
    conn: &impl ConnectionTrait,
    id: &str,
    values: [(notifications::Column, Expr); N],
) -> Result<u64, DbErr> {
    let mut update = notifications::Entity::update_many()
        .filter(notifications::Column::Id.eq(id))
        .filter(notifications::Column::Status.eq(status::PENDING));
    for (column, value) in values {
        update = update.col_expr(column, value);
    }
    Ok(update.exec(conn).await?.rows_affected)
}

/// The wait before the `attempts`-th retry: doubling from a second, up to
/// five minutes.
fn retry_delay(attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    RETRY_FIRST
        .saturating_mul(2u32.saturating_pow(exp))
        .min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config(delivery: Delivery, from: &str) -> NotificationsConfig {
        NotificationsConfig {
            delivery,
            from: from.into(),
            ..NotificationsConfig::default()
        }
    }

    fn smtp(url: &str) -> Delivery {
        Delivery::Smtp(sluice_kit::Secret::new(url))
    }

    #[test]
    fn smtp_urls_with_and_without_tls_are_accepted() {
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://user:pass@mail.example.com:587?tls=required",
            "smtps://user:pass@mail.example.com",
        ] {
            let t = Transport::new(&config(smtp(url), "shop@example.com")).unwrap();
            assert!(!format!("{t:?}").contains("pass"), "{t:?}");
        }
    }

    #[test]
    fn a_bad_sender_or_smtp_url_is_refused_without_showing_the_password() {
        let e = Transport::new(&config(smtp("smtp://h"), "not an address")).unwrap_err();
        assert!(matches!(e, ConfigError::From { .. }), "{e}");
        let e = Transport::new(&config(smtp("smtpx://u:hunter2@h"), "a@b.c")).unwrap_err();
        assert!(matches!(e, ConfigError::SmtpUrl { .. }), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_message_is_the_same_each_time_it_is_built() {
        let t = Transport::new(&config(
            Delivery::Mailbox("unused".into()),
            "Shop <shop@example.com>",
        ))
        .unwrap();
        let row = notifications::Model {
            id: "n-1".into(),
            event_id: "e-1".into(),
            correlation_id: "e-1".into(),
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            template: "order_confirmed".into(),
            recipient: "alice@example.com".into(),
            subject: "Your order o-1 is confirmed".into(),
            body_text: "Total: 12.34 EUR\n".into(),
            body_html: None,
            status: status::PENDING.into(),
            reason: String::new(),
            attempts: 0,
            next_attempt_at: 0,
            created_at: 1_700_000_000_000_000,
            sent_at: None,
            trace_parent: None,
        };
        let one = t.message(&row).unwrap().formatted();
        let two = t.message(&row).unwrap().formatted();
        assert_eq!(one, two, "a resend is byte for byte the same message");
        let text = String::from_utf8(one).unwrap();
        assert!(text.contains("Message-ID: <n-1@example.com>"), "{text}");
        assert!(text.contains("Date: Tue, 14 Nov 2023 22:13:20"), "{text}");

        let bad = notifications::Model {
            recipient: "nobody".into(),
            ..row
        };
        assert!(matches!(t.message(&bad), Err(SendError::Permanent(_))));
    }

    #[test]
    fn retries_back_off_up_to_five_minutes() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(40), Duration::from_secs(300));
    }
}
