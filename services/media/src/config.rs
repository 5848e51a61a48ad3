//! Where the media service keeps images, from the environment.
//!
//! | variable | meaning |
//! |---|---|
//! | `SLUICE_MEDIA_DIR` | local folder (default `data/media`), used unless an S3 URL is set |
//! | `SLUICE_MEDIA_S3_URL` | `s3://bucket` or `s3://bucket/prefix`: keep images in that bucket |
//! | `SLUICE_MEDIA_S3_ENDPOINT` | endpoint of an S3-compatible server (`http://127.0.0.1:9000`); AWS when unset |
//! | `SLUICE_MEDIA_S3_REGION` | region (default `us-east-1`) |
//! | `SLUICE_MEDIA_S3_ACCESS_KEY_ID` | access key (else `AWS_ACCESS_KEY_ID`) |
//! | `SLUICE_MEDIA_S3_SECRET_ACCESS_KEY` | secret key (else `AWS_SECRET_ACCESS_KEY`) |
//! | `SLUICE_MEDIA_S3_SESSION_TOKEN` | session token (else `AWS_SESSION_TOKEN`) |
//! | `SLUICE_MEDIA_S3_ALLOW_HTTP` | `true` to allow a plain-HTTP endpoint (default: when the endpoint is `http://…`) |
//!
//! Without keys, `object_store` looks for credentials the way AWS SDKs do
//! (web identity, container or instance metadata). Any other
//! `SLUICE_MEDIA_…` variable is an error, so a typo never falls back to a
//! default silently.

use std::path::PathBuf;

use sluice_kit::Secret;

use crate::store::MediaError;

/// The default local folder.
pub const DEFAULT_DIR: &str = "data/media";
/// The default S3 region.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The media service's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// Where images are kept.
    pub store: StoreConfig,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            store: StoreConfig::Local {
                dir: PathBuf::from(DEFAULT_DIR),
            },
        }
    }
}

/// Where images are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// A folder on the local file system.
    Local {
        /// The folder (created if missing).
        dir: PathBuf,
    },
    /// An S3-compatible bucket.
    S3(S3Config),
}

/// An S3-compatible bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// The server (`http://127.0.0.1:9000`); AWS when `None`.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<Secret>,
    /// Session token (temporary credentials).
    pub session_token: Option<Secret>,
    /// Whether a plain-HTTP endpoint is allowed.
    pub allow_http: bool,
}

impl S3Config {
    /// A bucket from `s3://bucket[/prefix]`, in the default region, with no
    /// endpoint or keys.
    ///
    /// # Errors
    /// The URL is not of that form.
    pub fn from_url(url: &str) -> Result<Self, MediaError> {
        let bad = |why: &str| MediaError::Config(format!("SLUICE_MEDIA_S3_URL={url:?}: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://bucket or s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
            return Err(bad(
                "the prefix may not contain '.', '..' or empty segments",
            ));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: None,
            region: DEFAULT_REGION.to_owned(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: false,
        })
    }
}

const KNOWN: &[&str] = &[
    "SLUICE_MEDIA_DIR",
    "SLUICE_MEDIA_S3_URL",
    "SLUICE_MEDIA_S3_ENDPOINT",
    "SLUICE_MEDIA_S3_REGION",
    "SLUICE_MEDIA_S3_ACCESS_KEY_ID",
    "SLUICE_MEDIA_S3_SECRET_ACCESS_KEY",
    "SLUICE_MEDIA_S3_SESSION_TOKEN",
    "SLUICE_MEDIA_S3_ALLOW_HTTP",
];

impl MediaConfig {
    /// The settings in the process's environment.
    ///
    /// # Errors
    /// A variable is unknown or invalid.
    pub fn from_process_env() -> Result<Self, MediaError> {
        Self::from_env(std::env::vars())
    }

    /// The settings in `vars` (name, value pairs; see the module's table).
    ///
    /// # Errors
    /// A variable is unknown or invalid.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, MediaError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        if let Some((name, _)) = vars
            .iter()
            .find(|(k, _)| k.starts_with("SLUICE_MEDIA_") && !KNOWN.contains(&k.as_str()))
        {
            return Err(MediaError::Config(format!(
                "unknown variable {name} (known: {})",
                KNOWN.join(", ")
            )));
        }
        let get = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let either = |ours: &str, aws: &str| get(ours).or_else(|| get(aws));
        let Some(url) = get("SLUICE_MEDIA_S3_URL") else {
            if let Some(name) = KNOWN[2..].iter().find(|n| get(n).is_some()) {
                return Err(MediaError::Config(format!(
                    "{name} is set but SLUICE_MEDIA_S3_URL is not"
                )));
            }
            let dir = get("SLUICE_MEDIA_DIR").unwrap_or_else(|| DEFAULT_DIR.to_owned());
            return Ok(Self {
                store: StoreConfig::Local {
                    dir: PathBuf::from(dir),
                },
            });
        };
        if get("SLUICE_MEDIA_DIR").is_some() {
            return Err(MediaError::Config(
                "set SLUICE_MEDIA_DIR or SLUICE_MEDIA_S3_URL, not both".into(),
            ));
        }
        let mut s3 = S3Config::from_url(&url)?;
        s3.endpoint = get("SLUICE_MEDIA_S3_ENDPOINT");
        if let Some(region) = either("SLUICE_MEDIA_S3_REGION", "AWS_REGION") {
            s3.region = region;
        }
        s3.access_key_id = either("SLUICE_MEDIA_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID");
        s3.secret_access_key =
            either("SLUICE_MEDIA_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY").map(Secret::new);
        s3.session_token =
            either("SLUICE_MEDIA_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN").map(Secret::new);
        s3.allow_http = match get("SLUICE_MEDIA_S3_ALLOW_HTTP").as_deref() {
            None => s3
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(other) => {
                return Err(MediaError::Config(format!(
                    "SLUICE_MEDIA_S3_ALLOW_HTTP={other:?}: expected true or false"
                )));
            }
        };
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            return Err(MediaError::Config(
                "an S3 access key id needs its secret access key, and the other way round".into(),
            ));
        }
        Ok(Self {
            store: StoreConfig::S3(s3),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_local_folder_is_the_default() {
        assert_eq!(
            MediaConfig::from_env(env(&[])).ok(),
            Some(MediaConfig::default())
        );
        let c = MediaConfig::from_env(env(&[("SLUICE_MEDIA_DIR", "/srv/media")])).ok();
        assert_eq!(
            c.map(|c| c.store),
            Some(StoreConfig::Local {
                dir: PathBuf::from("/srv/media")
            })
        );
    }

    #[test]
    fn an_s3_url_names_bucket_and_prefix() {
        let c = MediaConfig::from_env(env(&[
            ("SLUICE_MEDIA_S3_URL", "s3://shop-media/prod/images/"),
            ("SLUICE_MEDIA_S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("SLUICE_MEDIA_S3_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("AWS_REGION", "eu-west-1"),
        ]));
        let Ok(MediaConfig {
            store: StoreConfig::S3(s3),
        }) = c
        else {
            panic!("an S3 store: {c:?}");
        };
        assert_eq!(s3.bucket, "shop-media");
        assert_eq!(s3.prefix, "prod/images");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region, "eu-west-1");
        assert_eq!(s3.access_key_id.as_deref(), Some("AKID"));
        assert_eq!(
            s3.secret_access_key.as_ref().map(Secret::expose),
            Some("s3cr3t")
        );
        assert!(s3.allow_http, "an http:// endpoint allows HTTP");
        assert!(!format!("{s3:?}").contains("s3cr3t"), "secrets never print");

        let plain = S3Config::from_url("s3://bucket").ok();
        assert_eq!(
            plain.map(|c| (c.bucket, c.prefix)),
            Some(("bucket".into(), String::new()))
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let err = |pairs: &[(&str, &str)]| match MediaConfig::from_env(env(pairs)) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("accepted {c:?}"),
        };
        assert!(err(&[("SLUICE_MEDIA_S3_URL", "https://x/y")]).contains("SLUICE_MEDIA_S3_URL"));
        assert!(err(&[("SLUICE_MEDIA_S3_URL", "s3:///x")]).contains("no bucket"));
        assert!(err(&[("SLUICE_MEDIA_S3_URL", "s3://b/../x")]).contains("'..'"));
        assert!(err(&[("SLUICE_MEDIA_DIRR", "x")]).contains("unknown variable SLUICE_MEDIA_DIRR"));
        assert!(
            err(&[("SLUICE_MEDIA_S3_ENDPOINT", "http://x")]).contains("SLUICE_MEDIA_S3_URL is not")
        );
        assert!(
            err(&[("SLUICE_MEDIA_S3_URL", "s3://b"), ("SLUICE_MEDIA_DIR", "x")])
                .contains("not both")
        );
        assert!(
            err(&[
                ("SLUICE_MEDIA_S3_URL", "s3://b"),
                ("SLUICE_MEDIA_S3_ALLOW_HTTP", "yes")
            ])
            .contains("ALLOW_HTTP")
        );
        assert!(
            err(&[
                ("SLUICE_MEDIA_S3_URL", "s3://b"),
                ("SLUICE_MEDIA_S3_ACCESS_KEY_ID", "k")
            ])
            .contains("secret access key")
        );
    }

    #[test]
    fn an_s3_store_is_built_without_contacting_anyone() {
        let mut s3 = S3Config::from_url("s3://bucket/prefix").unwrap_or_else(|e| panic!("{e}"));
        s3.endpoint = Some("http://127.0.0.1:1".into());
        s3.allow_http = true;
        s3.access_key_id = Some("k".into());
        s3.secret_access_key = Some(Secret::new("s"));
        assert!(crate::ImageStore::from_config(&StoreConfig::S3(s3)).is_ok());
    }
}
