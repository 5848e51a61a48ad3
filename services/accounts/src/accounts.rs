//! Registering accounts and logging in.

use std::sync::Arc;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set, TransactionTrait};
use sluice_kit::HandlerError;
use sluice_kit::db::now_micros;
use sluice_proto::Envelope;
use sluice_proto::shop::accounts::v1::{
    AccountRegistered, Login, LoginResult, Register, RegisterResult,
};

use crate::tables::accounts;
use crate::{Accounts, Refusal};

/// Longest e-mail address accepted (RFC 5321's path limit less the brackets).
const EMAIL_MAX: usize = 254;
/// Password length bounds, in characters.
const PASSWORD_MIN: usize = 8;
/// Longest password accepted, in characters.
const PASSWORD_MAX: usize = 128;

/// `email` trimmed and lower-cased.
pub(crate) fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Checks a normalised e-mail: one '@' with something either side, no
/// spaces, at most 254 characters.
fn check_email(email: &str) -> Result<(), String> {
    if email.is_empty() {
        return Err("email is required".into());
    }
    if email.len() > EMAIL_MAX {
        return Err(format!("email must have at most {EMAIL_MAX} characters"));
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err("email must contain an '@'".into());
    };
    if local.is_empty() || domain.is_empty() || email.chars().any(char::is_whitespace) {
        return Err(format!("{email:?} is not an e-mail address"));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(format!(
            "password must have {PASSWORD_MIN} to {PASSWORD_MAX} characters (has {n})"
        ));
    }
    Ok(())
}

fn register_refused(why: Refusal, error: impl Into<String>) -> RegisterResult {
    RegisterResult {
        ok: false,
        error_code: why.code(),
        error: error.into(),
        ..RegisterResult::default()
    }
}

fn login_refused(why: Refusal, error: impl Into<String>) -> LoginResult {
    LoginResult {
        ok: false,
        error_code: why.code(),
        error: error.into(),
        ..LoginResult::default()
    }
}

fn hashing_failed(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Transient(format!("password hashing: {e}"))
}

async fn taken(accounts: &Accounts, email: &str) -> Result<bool, sea_orm::DbErr> {
    Ok(accounts::Entity::find()
        .filter(accounts::Column::Email.eq(email))
        .one(&accounts.db)
        .await?
        .is_some())
}

/// `accounts.cmd.register`.
pub(crate) async fn register(
    acc: Arc<Accounts>,
    request: Envelope,
    r: Register,
) -> Result<RegisterResult, HandlerError> {
    let email = normalise_email(&r.email);
    if let Err(e) = check_email(&email).and_then(|()| check_password(&r.password)) {
        return Ok(register_refused(Refusal::Invalid, e));
    }
    let conflict = || {
        register_refused(
            Refusal::Conflict,
            format!("an account with email {email} already exists"),
        )
    };
    // Checked before hashing, so a duplicate costs no argon2 run.
    if taken(&acc, &email).await? {
        return Ok(conflict());
    }
    let hash = acc
        .passwords
        .hash(r.password)
        .await
        .map_err(hashing_failed)?;
    let row = accounts::Model {
        id: uuid::Uuid::now_v7().to_string(),
        email: email.clone(),
        password_hash: hash,
        created_at: now_micros(),
    };
    let txn = acc.db.begin().await?;
    let insert = accounts::Entity::insert(accounts::ActiveModel {
        id: Set(row.id.clone()),
        email: Set(row.email.clone()),
        password_hash: Set(row.password_hash.clone()),
        created_at: Set(row.created_at),
    })
    .exec_without_returning(&txn)
    .await;
    if let Err(e) = insert {
        // A concurrent registration of the same e-mail won the unique index.
        let _ = txn.rollback().await;
        return if taken(&acc, &email).await? {
            Ok(conflict())
        } else {
            Err(e.into())
        };
    }
    let event = AccountRegistered {
        account_id: row.id.clone(),
        email: row.email.clone(),
    };
    let m = acc.emitter.event(
        &acc.subjects.account_registered,
        &row.id,
        &event,
        request.correlation_id.as_deref(),
    );
    acc.emitter.commit(txn, &[m]).await?;
    tracing::info!(account = %row.id, "account registered");
    Ok(RegisterResult {
        ok: true,
        account_id: row.id,
        email: row.email,
        ..RegisterResult::default()
    })
}

/// `accounts.cmd.login`: a token for the right password; the same answer,
/// at the same cost, for a wrong password and an unknown e-mail.
pub(crate) async fn login(
    acc: Arc<Accounts>,
    _request: Envelope,
    l: Login,
) -> Result<LoginResult, HandlerError> {
    let email = normalise_email(&l.email);
    if email.is_empty() || l.password.is_empty() {
        return Ok(login_refused(
            Refusal::Invalid,
            "email and password are required",
        ));
    }
    let row = accounts::Entity::find()
        .filter(accounts::Column::Email.eq(email.as_str()))
        .one(&acc.db)
        .await?;
    // A password no account can have is checked, as an empty one, against
    // the dummy hash: refused at the usual cost, without hashing a huge input.
    let plausible = l.password.chars().count() <= PASSWORD_MAX;
    let (password, stored) = if plausible {
        (l.password, row.as_ref().map(|r| r.password_hash.clone()))
    } else {
        (String::new(), None)
    };
    let matched = acc
        .passwords
        .verify(password, stored)
        .await
        .map_err(hashing_failed)?;
    let Some(account) = row.filter(|_| matched) else {
        tracing::info!("login refused");
        return Ok(login_refused(
            Refusal::Unauthorized,
            "wrong email or password",
        ));
    };
    let (token, claims) = acc
        .signer
        .issue(&account.id, &acc.login_scope, acc.token_ttl)
        .map_err(|e| HandlerError::Transient(format!("signing a token: {e}")))?;
    tracing::info!(account = %account.id, jti = %claims.jti, "logged in");
    Ok(LoginResult {
        ok: true,
        access_token: token,
        expires_in: i64::try_from(claims.exp.saturating_sub(claims.iat)).unwrap_or(i64::MAX),
        token_type: "Bearer".into(),
        account_id: account.id,
        scope: claims.scope,
        ..LoginResult::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(normalise_email("  Ann@Example.COM \n"), "ann@example.com");
    }

    #[test]
    fn email_checks_name_the_problem() {
        assert!(check_email("a@b").is_ok());
        assert!(check_email("").is_err_and(|e| e.contains("required")));
        assert!(check_email("ann.example.com").is_err_and(|e| e.contains("'@'")));
        assert!(check_email("@example.com").is_err());
        assert!(check_email("ann@").is_err());
        assert!(check_email("a n@example.com").is_err());
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(check_email(&long).is_err_and(|e| e.contains("254")));
    }

    #[test]
    fn passwords_have_8_to_128_characters() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"é".repeat(128)).is_ok());
        assert!(check_password(&"x".repeat(129)).is_err());
    }
}
