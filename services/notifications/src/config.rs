//! How notifications leave the service: by SMTP when a server is
//! configured, else as files in a mailbox folder; and who they are from.
//!
//! The binary reads `SLUICE_SMTP_URL`, `SLUICE_MAILBOX_DIR` and
//! `SLUICE_MAIL_FROM` ([`NotificationsConfig::from_env`]).

use std::path::PathBuf;
use std::time::Duration;

use sluice_kit::Secret;

/// Where e-mails go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// One RFC 5322 file per message, `<folder>/<notification id>.eml`.
    Mailbox(PathBuf),
    /// An SMTP server: `smtp://[user:pass@]host[:port]` (add
    /// `?tls=required` for STARTTLS) or `smtps://…` (implicit TLS); a path
    /// names this host in EHLO (`smtp://mail:587/shop.example.com`, else
    /// `localhost`). The URL may hold a password, so it never prints.
    Smtp(Secret),
}

/// The service's own settings, beside the kit's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationsConfig {
    /// Where e-mails go.
    pub delivery: Delivery,
    /// The `From` of every e-mail (`Name <address>` or an address); its
    /// domain is also the right-hand side of each `Message-ID`.
    pub from: String,
    /// How often the sender looks for pending notifications when nobody
    /// wakes it (rows from other replicas, retries after a failure).
    pub poll: Duration,
    /// Notifications delivered per pass.
    pub batch: u64,
}

/// The mailbox folder when nothing else is configured.
pub const DEFAULT_MAILBOX_DIR: &str = "data/mailbox";

/// The sender when nothing else is configured.
pub const DEFAULT_FROM: &str = "Sluice Shop <shop@sluice.localhost>";

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            delivery: Delivery::Mailbox(PathBuf::from(DEFAULT_MAILBOX_DIR)),
            from: DEFAULT_FROM.to_owned(),
            poll: Duration::from_secs(1),
            batch: 64,
        }
    }
}

impl NotificationsConfig {
    /// The defaults with the process environment applied (see
    /// [`NotificationsConfig::from_vars`]).
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// The defaults with these variables applied: `SLUICE_SMTP_URL`
    /// (non-empty: deliver by SMTP), else `SLUICE_MAILBOX_DIR` (default
    /// `data/mailbox`); `SLUICE_MAIL_FROM` (default
    /// `Sluice Shop <shop@sluice.localhost>`).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut smtp = None;
        let mut mailbox = None;
        let mut config = Self::default();
        for (k, v) in vars {
            match k.as_str() {
                "SLUICE_SMTP_URL" if !v.trim().is_empty() => smtp = Some(v.trim().to_owned()),
                "SLUICE_MAILBOX_DIR" if !v.is_empty() => mailbox = Some(PathBuf::from(v)),
                "SLUICE_MAIL_FROM" if !v.trim().is_empty() => config.from = v.trim().to_owned(),
                _ => {}
            }
        }
        config.delivery = match (smtp, mailbox) {
            (Some(url), _) => Delivery::Smtp(Secret::new(url)),
            (None, Some(dir)) => Delivery::Mailbox(dir),
            (None, None) => config.delivery,
        };
        config
    }
}

/// Why the delivery settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `From` is not a mailbox.
    #[error("the sender {from:?} is not an e-mail address: {reason}")]
    From {
        /// The configured sender.
        from: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The SMTP URL is not one.
    #[error("the SMTP URL {url} is invalid: {reason}")]
    SmtpUrl {
        /// The URL, password hidden.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn without_settings_mail_goes_to_the_data_mailbox() {
        let c = NotificationsConfig::from_vars(vars(&[("HOME", "/root")]));
        assert_eq!(c.delivery, Delivery::Mailbox("data/mailbox".into()));
        assert_eq!(c.from, DEFAULT_FROM);
    }

    #[test]
    fn an_smtp_url_wins_over_a_mailbox_folder() {
        let c = NotificationsConfig::from_vars(vars(&[
            ("SLUICE_MAILBOX_DIR", "/tmp/box"),
            ("SLUICE_SMTP_URL", "smtp://u:p@mail:2525"),
            ("SLUICE_MAIL_FROM", "shop@example.com"),
        ]));
        assert_eq!(
            c.delivery,
            Delivery::Smtp(Secret::new("smtp://u:p@mail:2525"))
        );
        assert_eq!(c.from, "shop@example.com");
        assert!(
            !format!("{c:?}").contains("u:p"),
            "the password never prints"
        );

        let c = NotificationsConfig::from_vars(vars(&[
            ("SLUICE_MAILBOX_DIR", "/tmp/box"),
            ("SLUICE_SMTP_URL", ""),
        ]));
        assert_eq!(c.delivery, Delivery::Mailbox("/tmp/box".into()));
    }
}
