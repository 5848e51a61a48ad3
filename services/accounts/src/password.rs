//! Password hashes: argon2id with OWASP's parameters (19 MiB, 2 passes, one
//! lane), computed on the blocking pool so a hash never stalls the runtime.
//!
//! Each hash takes about 19 MiB for tens of milliseconds, so concurrent
//! hashes are bounded (one per core): a burst of logins queues instead of
//! exhausting memory. Verifying an unknown account checks a dummy hash, so
//! it costs what a wrong password costs and timing does not tell which
//! e-mails are registered.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Semaphore;

/// Memory cost in KiB (OWASP: 19 MiB).
const M_COST: u32 = 19_456;
/// Passes (OWASP: 2).
const T_COST: u32 = 2;
/// Lanes (OWASP: 1).
const P_COST: u32 = 1;

/// Why hashing or verifying failed (never "the password is wrong").
#[derive(Debug, thiserror::Error)]
pub(crate) enum PasswordError {
    /// The system's random source failed.
    #[error("no randomness for a salt")]
    Random,
    /// argon2 refused (parameters, or an unreadable stored hash).
    #[error("argon2: {0}")]
    Argon2(String),
    /// The blocking task died.
    #[error("hashing task failed: {0}")]
    Task(String),
}

/// Hashes and verifies passwords.
pub(crate) struct Passwords {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    rng: SystemRandom,
    /// A hash of a random password, verified when the account is unknown.
    dummy: String,
}

impl Passwords {
    /// A hasher with OWASP's parameters and a fresh dummy hash.
    pub(crate) async fn new() -> Result<Self, PasswordError> {
        let params = Params::new(M_COST, T_COST, P_COST, None)
            .map_err(|e| PasswordError::Argon2(e.to_string()))?;
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let mut hasher = Self {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            permits: Arc::new(Semaphore::new(cores)),
            rng: SystemRandom::new(),
            dummy: String::new(),
        };
        let mut secret = [0u8; 24];
        hasher
            .rng
            .fill(&mut secret)
            .map_err(|_| PasswordError::Random)?;
        hasher.dummy = hasher.hash(crate::api_keys::base64url(&secret)).await?;
        Ok(hasher)
    }

    /// The PHC string of `password` with a fresh salt.
    pub(crate) async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let mut salt = [0u8; 16];
        self.rng
            .fill(&mut salt)
            .map_err(|_| PasswordError::Random)?;
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| PasswordError::Argon2(e.to_string()))?;
        let argon = self.argon.clone();
        self.blocking(move || {
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Argon2(e.to_string()))
        })
        .await
    }

    /// Whether `password` matches `stored` (a PHC string). With no stored
    /// hash it checks the dummy and answers `false`, at the same cost.
    pub(crate) async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy.clone());
        let argon = self.argon.clone();
        let matched = self
            .blocking(move || {
                let parsed =
                    PasswordHash::new(&hash).map_err(|e| PasswordError::Argon2(e.to_string()))?;
                match argon.verify_password(password.as_bytes(), &parsed) {
                    Ok(()) => Ok(true),
                    Err(argon2::password_hash::Error::Password) => Ok(false),
                    Err(e) => Err(PasswordError::Argon2(e.to_string())),
                }
            })
            .await?;
        Ok(known && matched)
    }

    /// Runs `work` on the blocking pool once a permit is free.
    async fn blocking<T, F>(&self, work: F) -> Result<T, PasswordError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PasswordError> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PasswordError::Task(e.to_string()))?;
        // The permit moves into the task: it is released when the hash is
        // done, even if this future is dropped first.
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|e| PasswordError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let p = Passwords::new().await.unwrap();
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(
            p.verify("correct horse".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(!p.verify("wrong horse".into(), Some(h)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        let p = Passwords::new().await.unwrap();
        assert!(!p.verify("anything".into(), None).await.unwrap());
    }
}
