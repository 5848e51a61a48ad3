//! The token signing key: generated on first start and kept in
//! `signing_keys`, the newest used; its public half is announced on
//! `accounts.signing_key.published` and served on `accounts.cmd.public_key`.
//!
//! Replicas starting at once on an empty database may each create a key;
//! every key is published and served, so tokens of either verify.

use std::sync::Arc;

use ring::signature::{Ed25519KeyPair, KeyPair};
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder, Set, TransactionTrait};
use sluice_kit::HandlerError;
use sluice_kit::db::now_micros;
use sluice_kit::outbox::Emitter;
use sluice_proto::Envelope;
use sluice_proto::shop::accounts::v1::{GetPublicKey, PublicKeys, SigningKeyPublished};

use crate::tables::signing_keys;
use crate::token::{Signer, TokenError, jwk};
use crate::{Accounts, Subjects};

/// Why the signing key could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// Generating a key failed.
    #[error("cannot generate an Ed25519 key")]
    Generate,
    /// A stored key does not parse.
    #[error(transparent)]
    Key(#[from] TokenError),
}

/// The newest stored key's signer, creating (and announcing) a key when
/// there is none.
pub(crate) async fn current_or_new(
    db: &DatabaseConnection,
    emitter: &Emitter,
    subjects: &Subjects,
) -> Result<Signer, KeyError> {
    if let Some(k) = newest(db).await? {
        tracing::info!(kid = %k.kid, "using the stored token signing key");
        return Ok(Signer::new(&k.kid, &k.private_pkcs8)?);
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
    let pair =
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| TokenError::Key(e.to_string()))?;
    let row = signing_keys::Model {
        kid: uuid::Uuid::now_v7().to_string(),
        private_pkcs8: pkcs8.as_ref().to_vec(),
        public_key: pair.public_key().as_ref().to_vec(),
        created_at: now_micros(),
    };
    let signer = Signer::new(&row.kid, &row.private_pkcs8)?;
    let txn = db.begin().await?;
    signing_keys::Entity::insert(signing_keys::ActiveModel {
        kid: Set(row.kid.clone()),
        private_pkcs8: Set(row.private_pkcs8.clone()),
        public_key: Set(row.public_key.clone()),
        created_at: Set(row.created_at),
    })
    .exec_without_returning(&txn)
    .await?;
    let event = SigningKeyPublished {
        key: Some(jwk(&row.kid, &row.public_key)),
        created_at: row.created_at,
    };
    let m = emitter.event(&subjects.signing_key_published, &row.kid, &event, None);
    emitter.commit(txn, &[m]).await?;
    tracing::info!(kid = %row.kid, "created a token signing key");
    Ok(signer)
}

async fn newest(db: &DatabaseConnection) -> Result<Option<signing_keys::Model>, sea_orm::DbErr> {
    signing_keys::Entity::find()
        .order_by_desc(signing_keys::Column::CreatedAt)
        .order_by_desc(signing_keys::Column::Kid)
        .one(db)
        .await
}

/// `accounts.cmd.public_key`: every signing key's public half, newest first.
pub(crate) async fn public_keys(
    accounts: Arc<Accounts>,
    _request: Envelope,
    _get: GetPublicKey,
) -> Result<PublicKeys, HandlerError> {
    let rows = signing_keys::Entity::find()
        .order_by_desc(signing_keys::Column::CreatedAt)
        .order_by_desc(signing_keys::Column::Kid)
        .all(&accounts.db)
        .await?;
    Ok(PublicKeys {
        keys: rows.iter().map(|k| jwk(&k.kid, &k.public_key)).collect(),
    })
}
