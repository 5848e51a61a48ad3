//! The inbox: which events a consumer has already handled.
//!
//! The consumed event's `ce-id` is recorded in the same database transaction
//! as the handler's writes, so a redelivered duplicate finds its id and is
//! acked without running the handler again: at-least-once delivery becomes
//! effectively-once handling.

use std::collections::HashSet;

use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use crate::db::tables::inbox;

/// Ids per insert: three bound parameters each stays below SQLite's 32,766.
const CHUNK: usize = 5000;

/// Records `ids` as handled by `consumer`; returns those that were not
/// recorded before (the ones to handle).
pub(crate) async fn record<'a>(
    db: &impl ConnectionTrait,
    consumer: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<HashSet<String>, DbErr> {
    let now = crate::db::now_micros();
    let ids: Vec<&str> = ids.into_iter().collect();
    let mut fresh = HashSet::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
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
            )
            .returning_col(inbox::Column::EventId);
        for id in chunk {
            insert.values_panic([consumer.into(), (*id).into(), now.into()]);
        }
        for row in db.query_all(&insert).await? {
            fresh.insert(row.try_get::<String>("", "event_id")?);
        }
    }
    Ok(fresh)
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
}
