//! The reference shop's notifications service: tells customers by e-mail
//! that their order was confirmed or cancelled, once per event.
//!
//! - `accounts.account.registered` (`AccountRegistered`) feeds the address
//!   book, a projection ([`ADDRESSES`], its own consumer group) of each
//!   customer's e-mail address (a customer id is an account id).
//! - `orders.order.confirmed` and `orders.order.cancelled` (a reactor,
//!   [`NAME`]) render an e-mail from the embedded templates ([`templates`])
//!   and record it in `notifications` as `pending`, keyed by an id derived
//!   from the event's id, in the handler's transaction. A customer whose
//!   address is not known yet (the registration may still be in flight) is
//!   retried; on the last allowed delivery the notification is recorded as
//!   `skipped`, with the reason, instead of being dead-lettered.
//! - A sender task delivers pending notifications ([`Delivery`]: SMTP, or
//!   one `.eml` file per message in a mailbox folder), then marks each one
//!   `sent` and emits `notifications.email.sent` (`EmailSent`) in one
//!   transaction. It is woken by the handlers and polls, so a restart
//!   finishes what a crash left pending.
//!
//! Never twice: a redelivered or re-published event finds its inbox entry
//! (and its notification row); a crash between delivering and marking
//! delivers again the same message — the same mailbox file is rewritten,
//! an SMTP resend carries the same `Message-ID` — and a notification is
//! marked once.
//!
//! It owns its database (`addresses`, `notifications`, and the kit's tables).

pub mod config;
mod handlers;
pub mod mailbox;
pub mod migration;
mod sender;
pub mod tables;
pub mod templates;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use sluice_broker::Broker;
use sluice_kit::outbox::Emitter;
use sluice_kit::{
    ConsumerError, KitConfig, Metrics, Projection, Reactor, RetryPolicy, Service, Shutdown,
};
use tokio::sync::Notify;

pub use config::{Delivery, NotificationsConfig};
pub use mailbox::{MailboxError, MailboxMessage, read_mailbox};

use crate::templates::Templates;

/// The service's name: its order consumer group and `ce-source`
/// (`/sluice/notifications`).
pub const NAME: &str = "notifications";

/// The consumer group of the address book projection.
pub const ADDRESSES: &str = "notifications-addresses";

/// Notification statuses, as stored in `notifications.status`.
pub mod status {
    /// Recorded; waiting for the sender.
    pub const PENDING: &str = "pending";
    /// Handed to SMTP or written to the mailbox.
    pub const SENT: &str = "sent";
    /// Not sent, and never will be (see the reason): no address known.
    pub const SKIPPED: &str = "skipped";
    /// The mail server refused it for good (see the reason).
    pub const FAILED: &str = "failed";
}

/// Namespace of the ids derived from event ids (UUIDv5).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a0c_5b8e_2f1d_4c37_9e4a_7d21_b3f0_c915);

/// The id of the notification caused by the event with id `event_id`: a
/// UUIDv5 of it, so every delivery of one event yields the same id (the
/// mailbox file's name and the `Message-ID`'s local part).
pub fn notification_id(event_id: &str) -> String {
    derived_id(event_id, "notification")
}

/// A UUIDv5 of `what` about `id`.
pub(crate) fn derived_id(id: &str, what: &str) -> String {
    uuid::Uuid::new_v5(&ID_NAMESPACE, format!("{what}:{id}").as_bytes()).to_string()
}

/// The subjects the service uses, built from the three domains it touches
/// (tests use unique domains).
#[derive(Debug, Clone)]
pub struct Subjects {
    /// `orders.order.confirmed`.
    pub order_confirmed: String,
    /// `orders.order.cancelled`.
    pub order_cancelled: String,
    /// `accounts.account.registered`.
    pub account_registered: String,
    /// `notifications.email.sent`.
    pub email_sent: String,
}

impl Subjects {
    /// The subjects with `orders`, `accounts` and `notifications` as the
    /// domains' names.
    pub fn new(orders: &str, accounts: &str, notifications: &str) -> Self {
        Self {
            order_confirmed: format!("{orders}.order.confirmed"),
            order_cancelled: format!("{orders}.order.cancelled"),
            account_registered: format!("{accounts}.account.registered"),
            email_sent: format!("{notifications}.email.sent"),
        }
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("orders", "accounts", "notifications")
    }
}

/// What the order handlers share.
pub(crate) struct Notifications {
    templates: Templates,
    /// Deliveries of an order event before a customer without an address
    /// is given up on (the consumer's max deliveries).
    max_attempts: u32,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Migrating the schema failed.
    #[error("cannot migrate the notifications schema: {0}")]
    Migrate(sea_orm::DbErr),
    /// The embedded templates do not compile.
    #[error(transparent)]
    Templates(#[from] templates::TemplateError),
    /// The delivery settings are invalid (sender address, SMTP URL).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A consumer could not subscribe.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

/// The running notifications service: its consumers and the sender (which
/// makes one last pass over what is pending when stopped; notifications
/// recorded while the consumers drain are sent by the next start).
pub type Running = sluice_kit::RunningWithTasks;

/// Migrates `db` and starts the address book, the order consumer and the
/// sender on `broker`.
///
/// # Errors
/// Migration, the templates, the delivery settings or subscribing failed.
pub async fn start(
    broker: Arc<dyn Broker>,
    db: DatabaseConnection,
    config: &KitConfig,
    metrics: Metrics,
    subjects: Subjects,
    notifications: NotificationsConfig,
) -> Result<Running, StartError> {
    let transport = sender::Transport::new(&notifications)?;
    let templates = Templates::new()?;
    migration::Migrator::up(&db, None)
        .await
        .map_err(StartError::Migrate)?;
    let wake = Arc::new(Notify::new());
    let max_attempts = config
        .consumers
        .get(NAME)
        .and_then(|c| c.max_deliveries)
        .unwrap_or(RetryPolicy::default().max_deliveries);
    let addresses = Projection::new(ADDRESSES, ())
        .on(&subjects.account_registered, handlers::account_registered)
        .configured(config);
    let orders = Reactor::new(
        NAME,
        Notifications {
            templates,
            max_attempts,
        },
    )
    .on(&subjects.order_confirmed, handlers::order_confirmed)
    .on(&subjects.order_cancelled, handlers::order_cancelled)
    .after_commit({
        // The sender delivers what the handlers recorded, once committed.
        let wake = wake.clone();
        move || wake.notify_one()
    })
    .configured(config);
    let service = Service::new(NAME, broker, db.clone())
        .metrics(metrics)
        .projection(addresses)
        .reactor(orders)
        .start()
        .await?;
    let shutdown = Shutdown::new();
    let sender = sender::Sender {
        db,
        transport,
        emitter: Emitter::new(NAME, service.relay_waker()),
        email_sent: subjects.email_sent,
        wake,
        poll: notifications.poll,
        batch: notifications.batch.max(1),
    };
    let sender = tokio::spawn(sender.run(shutdown.listener()));
    Ok(Running::new(service, shutdown, vec![sender]))
}

/// Where the service's own process serves `/healthz`, `/readyz` and
/// `/metrics` unless `SLUICE_LISTEN` says otherwise.
pub const LISTEN: &str = "127.0.0.1:9105";

/// Starts the service on a process's resources, with its delivery settings
/// from the environment (the `sluice-notifications` binary and
/// `sluice serve notifications`).
///
/// # Errors
/// As [`start`].
pub async fn from_resources(r: sluice_kit::app::Resources) -> Result<Running, StartError> {
    start(
        r.broker,
        r.db,
        &r.config,
        r.metrics,
        Subjects::default(),
        NotificationsConfig::from_env(),
    )
    .await
}
