//! The two kinds of consumer, as distinct types.
//!
//! - A [`Reactor`] causes side effects: its handlers get a [`Ctx`] that can
//!   emit events (through the outbox) and whose state may send e-mails or
//!   charge cards. It is never run during a replay.
//! - A [`Projection`] builds a read model: its handlers get a
//!   [`ProjectionCtx`], which only offers the transaction for the
//!   projection's own tables. Only projections can be rebuilt from the
//!   beginning of the log ([`Projection::reset`] exists, `Reactor` has no
//!   such method), so the type system keeps side effects out of replays.
//!
//! Both register typed handlers by subject pattern (NATS wildcards:
//! `orders.order.*`, `orders.>`). An event matching no pattern is acked and
//! ignored; one matching a pattern whose handler takes another type, or whose
//! payload does not decode, is dead-lettered with the reason.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::consumer::ConsumerOptions;
use crate::handler::{Batch, BatchFn, BatchOutcome, Ctx, Item, ProjectionCtx, Single, SingleFn};
use crate::retry::HandlerError;

/// How one route handles its events.
pub(crate) enum Handle<C> {
    Single(Box<dyn Single<C>>),
    Batch(Box<dyn Batch<C>>),
}

/// A subject pattern and its handler.
pub(crate) struct Route<C> {
    pub(crate) pattern: String,
    pub(crate) handle: Handle<C>,
}

/// What both consumer kinds are made of.
pub(crate) struct Spec<S, C> {
    pub(crate) name: String,
    pub(crate) state: Arc<S>,
    pub(crate) routes: Vec<Route<C>>,
    pub(crate) options: ConsumerOptions,
    pub(crate) after_commit: Option<AfterCommit>,
}

/// Called after each transaction of handled events commits.
pub(crate) type AfterCommit = Arc<dyn Fn() + Send + Sync>;

impl<S, C> Spec<S, C> {
    fn new(name: impl Into<String>, state: S) -> Self {
        Self {
            name: name.into(),
            state: Arc::new(state),
            routes: Vec::new(),
            options: ConsumerOptions::default(),
            after_commit: None,
        }
    }

    /// The index of the first route whose pattern matches `subject`.
    pub(crate) fn route(&self, subject: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| sluice_broker::subject::matches(&r.pattern, subject))
    }

    /// One subscription filter per domain the routes cover: the pattern
    /// itself when a domain has one route, otherwise the routes' longest
    /// common literal prefix followed by `>` (`orders.cmd.>` for
    /// `orders.cmd.place` and `orders.cmd.cancel`; at least `<domain>.>`),
    /// so a consumer is not sent the domain's other events only to ignore
    /// them.
    pub(crate) fn filters(&self) -> Vec<String> {
        let mut by_domain: Vec<(String, Vec<&str>)> = Vec::new();
        for r in &self.routes {
            let domain = r.pattern.split('.').next().unwrap_or_default().to_owned();
            match by_domain.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, ps)) => ps.push(&r.pattern),
                None => by_domain.push((domain, vec![&r.pattern])),
            }
        }
        by_domain
            .into_iter()
            .map(|(d, ps)| match ps.as_slice() {
                [one] => (*one).to_owned(),
                _ => format!("{}.>", common_prefix(&ps).unwrap_or(d)),
            })
            .collect()
    }
}

macro_rules! builder {
    ($ty:ident, $ctx:ident) => {
        impl<S: Send + Sync + 'static> $ty<S> {
            /// A consumer named `name` (its durable consumer group and inbox
            /// name) over the service state `state`.
            pub fn new(name: impl Into<String>, state: S) -> Self {
                Self(Spec::new(name, state))
            }

            /// Handles events of type `T` on subjects matching `pattern` with
            /// `handler`, `async fn(ctx, event: T) -> Result<(), HandlerError>`.
            #[must_use]
            pub fn on<T, F, Fut>(mut self, pattern: &str, handler: F) -> Self
            where
                T: prost::Message + prost::Name + Default + 'static,
                F: Fn($ctx<S>, T) -> Fut + Send + Sync + 'static,
                Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
            {
                self.0.routes.push(Route {
                    pattern: pattern.to_owned(),
                    handle: Handle::Single(Box::new(SingleFn {
                        f: handler,
                        _t: PhantomData::<fn() -> T>,
                    })),
                });
                self
            }

            /// Handles events of type `T` on `pattern` in batches of up to
            /// [`ConsumerOptions::max_wave`] events, in one transaction (a
            /// batch is a run of consecutive events of this route within a
            /// wave, so events of different routes still apply in order):
            /// `async fn(ctx, events: Vec<Item<T>>) -> Result<BatchOutcome, HandlerError>`.
            /// An event that does not decode is dead-lettered and left out;
            /// events the outcome marks failed are settled alone; an `Err`
            /// retries every event of the batch on its own.
            #[must_use]
            pub fn on_batch<T, F, Fut>(mut self, pattern: &str, handler: F) -> Self
            where
                T: prost::Message + prost::Name + Default + 'static,
                F: Fn($ctx<S>, Vec<Item<T>>) -> Fut + Send + Sync + 'static,
                Fut: Future<Output = Result<BatchOutcome, HandlerError>> + Send + 'static,
            {
                self.0.routes.push(Route {
                    pattern: pattern.to_owned(),
                    handle: Handle::Batch(Box::new(BatchFn {
                        f: handler,
                        _t: PhantomData::<fn() -> T>,
                    })),
                });
                self
            }

            /// Calls `f` after every transaction of handled events has
            /// committed, e.g. to wake a task that acts on the rows the
            /// handlers wrote (it sees them, as they are committed).
            #[must_use]
            pub fn after_commit(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
                self.0.after_commit = Some(Arc::new(f));
                self
            }

            /// Sets how deliveries are consumed, retried and ordered.
            #[must_use]
            pub fn options(mut self, options: ConsumerOptions) -> Self {
                self.0.options = options;
                self
            }

            /// Applies the overrides configured for this consumer's name
            /// (`[consumers.<name>]` in the file, `SLUICE_CONSUMERS__<NAME>__…`).
            #[must_use]
            pub fn configured(mut self, config: &crate::config::KitConfig) -> Self {
                if let Some(c) = config.consumers.get(&self.0.name) {
                    self.0.options = self.0.options.clone().with_config(c);
                }
                self
            }

            /// The consumer's name.
            pub fn name(&self) -> &str {
                &self.0.name
            }

            /// The same consumer under another name (consumer group, inbox
            /// and checkpoint), e.g. to build a shadow copy beside the live one.
            #[must_use]
            pub fn renamed(mut self, name: impl Into<String>) -> Self {
                self.0.name = name.into();
                self
            }

            /// Changes some of the consumer's options in place (the others,
            /// e.g. a projection's concurrency of 1, stay as they are).
            #[must_use]
            pub fn tune(mut self, f: impl FnOnce(&mut ConsumerOptions)) -> Self {
                f(&mut self.0.options);
                self
            }

            /// Sets only where a new consumer group starts.
            #[must_use]
            pub fn start_at(mut self, start: sluice_broker::StartPosition) -> Self {
                self.0.options.start = start;
                self
            }

            /// The subscription filters: one per domain the routes cover.
            pub fn filters(&self) -> Vec<String> {
                self.0.filters()
            }
        }
    };
}

/// The literal tokens that every pattern in `patterns` starts with
/// (wildcards end the prefix), joined by dots; `None` when they share none.
fn common_prefix(patterns: &[&str]) -> Option<String> {
    let mut tokens: Vec<&str> = patterns.first()?.split('.').collect();
    // The last token of a pattern is never part of the prefix: the filter
    // must still match that pattern's own subjects below the prefix.
    tokens.pop();
    for p in &patterns[1..] {
        let other: Vec<&str> = p.split('.').collect();
        let same = tokens
            .iter()
            .zip(other.iter().take(other.len().saturating_sub(1)))
            .take_while(|(a, b)| a == b && **a != "*" && **a != ">")
            .count();
        tokens.truncate(same);
    }
    if let Some(w) = tokens.iter().position(|t| *t == "*" || *t == ">") {
        tokens.truncate(w);
    }
    (!tokens.is_empty()).then(|| tokens.join("."))
}

/// A consumer with side effects: its handlers get a [`Ctx`] and may emit
/// events. Never replayed.
pub struct Reactor<S>(pub(crate) Spec<S, Ctx<S>>);

/// A replay-safe consumer that only writes its own read-model tables: its
/// handlers get a [`ProjectionCtx`]. Rebuildable from the beginning of the log.
pub struct Projection<S>(pub(crate) Spec<S, ProjectionCtx<S>>);

builder!(Reactor, Ctx);
builder!(Projection, ProjectionCtx);

/// Why a projection could not be reset.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// Deleting the consumer group failed.
    #[error("cannot delete the consumer group of {name} on {filter}: {source}")]
    Group {
        /// The projection.
        name: String,
        /// The subscription filter.
        filter: String,
        /// The broker's error.
        source: sluice_broker::BrokerError,
    },
    /// Clearing the inbox or checkpoint failed.
    #[error("cannot clear the inbox and checkpoint of {name}: {source}")]
    Db {
        /// The projection.
        name: String,
        /// The database error.
        source: sea_orm::DbErr,
    },
}

impl<S: Send + Sync + 'static> Projection<S> {
    /// This projection as an [`crate::consumer::Applier`] writing into `db`:
    /// it applies messages a replay reads itself, without a consumer group.
    pub fn into_applier(self, db: sea_orm::DatabaseConnection) -> crate::consumer::Applier<S> {
        crate::consumer::Applier::new(self.0, db)
    }

    /// Prepares a rebuild from the beginning of the log: deletes the
    /// projection's consumer groups and forgets its inbox entries and
    /// checkpoint. Empty the read-model tables too (in `reset_tables`'s
    /// transaction), then run the projection again with
    /// `StartPosition::Beginning` (the default). Run it while the projection
    /// is stopped.
    ///
    /// # Errors
    /// The broker or the database refused.
    pub async fn reset<F, Fut>(
        &self,
        broker: &dyn sluice_broker::Broker,
        db: &sea_orm::DatabaseConnection,
        reset_tables: F,
    ) -> Result<(), ResetError>
    where
        F: FnOnce(sea_orm::DatabaseTransaction) -> Fut,
        Fut: Future<Output = Result<sea_orm::DatabaseTransaction, sea_orm::DbErr>>,
    {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};

        use crate::db::tables::{checkpoint, inbox};
        let name = &self.0.name;
        for filter in self.0.filters() {
            broker
                .delete_group(&filter, name)
                .await
                .map_err(|source| ResetError::Group {
                    name: name.clone(),
                    filter: filter.clone(),
                    source,
                })?;
        }
        let db_err = |source| ResetError::Db {
            name: name.clone(),
            source,
        };
        let txn = db.begin().await.map_err(db_err)?;
        inbox::Entity::delete_many()
            .filter(inbox::Column::Consumer.eq(name.as_str()))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        checkpoint::Entity::delete_by_id(name.clone())
            .exec(&txn)
            .await
            .map_err(db_err)?;
        let txn = reset_tables(txn).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)
    }
}

/// A projection's progress, from its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The highest stream sequence applied, where the backend has one.
    pub position: Option<i64>,
    /// Events applied since the projection was (re)built.
    pub events: i64,
    /// The watermark a replay left: the model holds every event of the
    /// projection's stream up to this sequence, so the projection skips
    /// deliveries at or below it (published up to `replayed_until`).
    pub replayed_to: Option<i64>,
    /// The log time (µs since the epoch) of the event at `replayed_to`.
    pub replayed_until: Option<i64>,
}

/// The checkpoint of projection `name`, if it has applied anything.
///
/// # Errors
/// The database failed.
pub async fn checkpoint(
    db: &impl sea_orm::ConnectionTrait,
    name: &str,
) -> Result<Option<Checkpoint>, sea_orm::DbErr> {
    use sea_orm::EntityTrait;
    Ok(
        crate::db::tables::checkpoint::Entity::find_by_id(name.to_owned())
            .one(db)
            .await?
            .map(|m| Checkpoint {
                position: m.position,
                events: m.events,
                replayed_to: m.replayed_to,
                replayed_until: m.replayed_until,
            }),
    )
}

impl<S> std::fmt::Debug for Reactor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("name", &self.0.name)
            .finish_non_exhaustive()
    }
}

impl<S> std::fmt::Debug for Projection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("name", &self.0.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn filters_narrow_to_the_common_prefix() {
        let p = |ps: &[&str]| common_prefix(ps);
        assert_eq!(
            p(&["orders.cmd.place", "orders.cmd.cancel"]).as_deref(),
            Some("orders.cmd")
        );
        assert_eq!(
            p(&["orders.order.placed", "orders.cmd.cancel"]).as_deref(),
            Some("orders")
        );
        assert_eq!(p(&["orders.>", "orders.cmd.x"]).as_deref(), Some("orders"));
        assert_eq!(p(&["a.*.b", "a.*.c"]).as_deref(), Some("a"));
        assert_eq!(p(&["a.b", "a.b.c"]).as_deref(), Some("a"));
        assert_eq!(p(&["*.x", "*.y"]), None);
    }
}
