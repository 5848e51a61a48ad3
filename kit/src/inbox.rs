//! The inbox: which events a consumer has already handled.
//!
//! The consumed event's `ce-id` is recorded in the same database transaction
//! as the handler's writes, so a redelivered duplicate finds its id and is
//! acked without running the handler again: at-least-once delivery becomes
//! effectively-once handling.

use std::collections::HashSet;

use sea_orm::sea_query::{InsertStatement, OnConflict, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, Statement,
    TransactionSession, TransactionTrait,
};

use crate::db::tables::inbox;

/// Ids per insert: three bound parameters each stays below SQLite's 32,766.
const CHUNK: usize = 5000;

/// Up to this many ids, one insert `RETURNING` the new ones costs less than
/// the savepoint's two extra statements (at low rates a wave is often one
/// event); above it, rows travelling back cost more.
const RETURNING_UP_TO: usize = 32;

/// Records `ids` as handled by `consumer`; returns those that were not
/// recorded before (the ones to handle).
///
/// More than [`RETURNING_UP_TO`] ids are first inserted without
/// `RETURNING` ([`all_new`]): when every id went in, all are fresh and no
/// row travels back. Otherwise (few ids, or one recorded before: a
/// redelivery) the insert returns the ids that went in.
pub(crate) async fn record<'a, C>(
    db: &C,
    consumer: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<HashSet<String>, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let now = crate::db::now_micros();
    let mut seen = HashSet::new();
    let ids: Vec<&str> = ids.into_iter().filter(|id| seen.insert(*id)).collect();
    if ids.len() > RETURNING_UP_TO && all_new(db, consumer, &ids, now).await? {
        return Ok(ids.into_iter().map(str::to_owned).collect());
    }
    let mut fresh = HashSet::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let mut returning = insert(consumer, chunk, now);
        returning.returning_col(inbox::Column::EventId);
        for row in db.query_all(&returning).await? {
            fresh.insert(row.try_get::<String>("", "event_id")?);
        }
    }
    Ok(fresh)
}

/// Inserts the distinct `ids` under a savepoint, each chunk built while the
/// one before runs, and keeps them if every one went in; else rolls back to
/// the savepoint and says so.
async fn all_new<C>(db: &C, consumer: &str, ids: &[&str], now: i64) -> Result<bool, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let backend = db.get_database_backend();
    let savepoint = db.begin().await?;
    let inserted =
        crate::db::execute_pipelined(&savepoint, inserts(backend, consumer, ids, now)).await?;
    if usize::try_from(inserted).is_ok_and(|n| n == ids.len()) {
        savepoint.commit().await?;
        Ok(true)
    } else {
        savepoint.rollback().await?;
        Ok(false)
    }
}

/// The inserts of `ids` for `consumer`, a chunk each, built as they are taken.
fn inserts<'a>(
    backend: DbBackend,
    consumer: &'a str,
    ids: &'a [&'a str],
    now: i64,
) -> impl Iterator<Item = Result<Statement, DbErr>> + Send + 'a {
    ids.chunks(CHUNK)
        .map(move |chunk| Ok(backend.build(&insert(consumer, chunk, now))))
}

/// The insert of `ids` for `consumer`, leaving out those recorded before.
fn insert(consumer: &str, ids: &[&str], now: i64) -> InsertStatement {
    let mut insert = Query::insert();
    insert
        .into_table(inbox::Entity)
        .columns([
            inbox::Column::Consumer,
            inbox::Column::EventId,
            inbox::Column::HandledAt,
        ])
        .on_conflict(
            OnConflict::columns([inbox::Column::Consumer, inbox::Column::EventId])
                .do_nothing()
                .to_owned(),
        );
    for id in ids {
        insert.values_panic([consumer.into(), (*id).into(), now.into()]);
    }
    insert
}

/// Forgets `id` for `consumer` (its handler failed after it was recorded).
pub(crate) async fn forget(
    db: &impl ConnectionTrait,
    consumer: &str,
    id: &str,
) -> Result<(), DbErr> {
    inbox::Entity::delete_many()
        .filter(inbox::Column::Consumer.eq(consumer))
        .filter(inbox::Column::EventId.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

/// Whether `consumer` has handled `id`.
///
/// # Errors
/// The database failed.
pub async fn contains(db: &impl ConnectionTrait, consumer: &str, id: &str) -> Result<bool, DbErr> {
    Ok(
        inbox::Entity::find_by_id((consumer.to_owned(), id.to_owned()))
            .one(db)
            .await?
            .is_some(),
    )
}

/// Deletes inbox entries handled before `older_than_micros`, returning how
/// many went. Duplicates older than the retention are no longer detected,
/// so keep it well above the broker's redelivery horizon.
///
/// # Errors
/// The database failed.
pub async fn prune(db: &impl ConnectionTrait, older_than_micros: i64) -> Result<u64, DbErr> {
    let r = inbox::Entity::delete_many()
        .filter(inbox::Column::HandledAt.lt(older_than_micros))
        .exec(db)
        .await?;
    Ok(r.rows_affected)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn more_ids_than_one_statement_binds_are_recorded_once() {
        let db = crate::db::open("sqlite::memory:", 1).await.unwrap();
        let ids: Vec<String> = (0..12_345).map(|i| format!("id-{i}")).collect();
        let fresh = record(&db, "c", ids.iter().map(String::as_str))
            .await
            .unwrap();
        assert_eq!(fresh.len(), ids.len());
        let again = record(&db, "c", ids.iter().map(String::as_str))
            .await
            .unwrap();
        assert!(again.is_empty(), "all were recorded");
        assert!(contains(&db, "c", "id-12344").await.unwrap());
    }

    #[tokio::test]
    async fn a_chunk_with_ids_recorded_before_returns_only_the_new_ones_and_keeps_the_transaction()
    {
        let db = crate::db::open("sqlite::memory:", 1).await.unwrap();
        let txn = db.begin().await.unwrap();
        let first = record(&txn, "c", ["a", "b", "a"]).await.unwrap();
        assert_eq!(first, HashSet::from(["a".to_owned(), "b".to_owned()]));
        // "b" was recorded: the insert returns only what went in.
        let second = record(&txn, "c", ["b", "c", "c", "d"]).await.unwrap();
        assert_eq!(second, HashSet::from(["c".to_owned(), "d".to_owned()]));
        let other = record(&txn, "other", ["b"]).await.unwrap();
        assert_eq!(other, HashSet::from(["b".to_owned()]));
        txn.commit().await.unwrap();
        for id in ["a", "b", "c", "d"] {
            assert!(contains(&db, "c", id).await.unwrap(), "{id} is recorded");
        }
        let rows = inbox::Entity::find().all(&db).await.unwrap();
        assert_eq!(rows.len(), 5, "each id once per consumer: {rows:?}");
    }

    #[tokio::test]
    async fn a_large_wave_with_an_id_recorded_before_rolls_back_its_fast_insert_and_returns_the_new_ones()
     {
        let db = crate::db::open("sqlite::memory:", 1).await.unwrap();
        let ids: Vec<String> = (0..=RETURNING_UP_TO * 2)
            .map(|i| format!("id-{i}"))
            .collect();
        let (first, second) = ids.split_at(RETURNING_UP_TO + 1);
        let txn = db.begin().await.unwrap();
        let fresh = record(&txn, "c", first.iter().map(String::as_str))
            .await
            .unwrap();
        assert_eq!(fresh.len(), first.len(), "all new: kept without RETURNING");
        // Overlapping by one id: the savepoint is rolled back and the insert
        // done again, returning only the new ones.
        let overlapping =
            std::iter::once(first[0].as_str()).chain(second.iter().map(String::as_str));
        let fresh = record(&txn, "c", overlapping).await.unwrap();
        let expected: HashSet<String> = second.iter().cloned().collect();
        assert_eq!(fresh, expected);
        txn.commit().await.unwrap();
        let rows = inbox::Entity::find().all(&db).await.unwrap();
        assert_eq!(rows.len(), ids.len(), "each id once, the transaction kept");
    }
}
