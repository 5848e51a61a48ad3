//! Typed, layered configuration: defaults, then an optional TOML file, then
//! environment variables.
//!
//! Environment variables named `SLUICE_<SECTION>__<KEY>` (double underscore
//! between levels, case-insensitive) override the file, e.g.
//! `SLUICE_BROKER__URL=nats://127.0.0.1:4222`. The conventional
//! `DATABASE_URL` and `OTEL_EXPORTER_OTLP_ENDPOINT` are honoured too.
//! Values are read as JSON scalars when they parse as one (`true`, `5`),
//! otherwise as strings. Unknown keys are errors, so a typo never silently
//! falls back to a default. Secrets are wrapped in [`Secret`], which never
//! prints its value.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// A value does not fit its field (the message names the field path).
    #[error("invalid configuration at {path}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `broker.url`.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A secret value (a password, a database URL with credentials): shown as
/// `***` by `Debug` and `Display`; [`Secret::expose`] gives the value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Which broker a service talks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `embedded:<path>`, `nats://…` or `amqp://…` (may hold credentials).
    pub url: Secret,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("embedded:data/broker.db"),
        }
    }
}

impl BrokerConfig {
    /// The parsed broker URL.
    ///
    /// # Errors
    /// The URL names no known backend.
    pub fn parsed(&self) -> Result<sluice_broker::BrokerUrl, ConfigError> {
        self.url
            .expose()
            .parse()
            .map_err(|e: sluice_broker::BrokerError| ConfigError::Invalid {
                path: "broker.url".into(),
                reason: e.to_string(),
            })
    }
}

/// Which database a service owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://…` (default, a file under the data directory) or `postgres://…`.
    pub url: Secret,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("sqlite://data/service.db?mode=rwc"),
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// How spans are sent to the OTLP endpoint (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP, `POST <endpoint>/v1/traces` (port 4318).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// gRPC (port 4317).
    #[serde(rename = "grpc")]
    Grpc,
}

/// Logs, traces and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Log format.
    pub log_format: LogFormat,
    /// OTLP endpoint for traces; none means no export.
    pub otlp_endpoint: Option<String>,
    /// How spans are sent there.
    pub otlp_protocol: OtlpProtocol,
}

/// Overrides of one consumer's options (see
/// [`crate::ConsumerOptions`]); absent fields keep the code's values.
/// Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Workers handling different keys at the same time.
    pub concurrency: Option<usize>,
    /// Most deliveries held at once.
    pub max_in_flight: Option<usize>,
    /// Most events per transaction.
    pub max_wave: Option<usize>,
    /// Handler timeout.
    pub handler_timeout_ms: Option<u64>,
    /// Deliveries before dead-lettering.
    pub max_deliveries: Option<u32>,
    /// First retry delay.
    pub initial_backoff_ms: Option<u64>,
    /// Longest retry delay.
    pub max_backoff_ms: Option<u64>,
    /// Growth of the retry delay.
    pub multiplier: Option<f64>,
    /// Randomised fraction of each delay.
    pub jitter: Option<f64>,
    /// Broker ack wait.
    pub ack_wait_ms: Option<u64>,
    /// Broker prefetch.
    pub prefetch: Option<usize>,
    /// How long shutdown waits for in-flight events.
    pub drain_timeout_ms: Option<u64>,
}

/// What every service reads: broker, database, telemetry, and per-consumer
/// overrides by consumer name (`[consumers.stock]`, or
/// `SLUICE_CONSUMERS__STOCK__CONCURRENCY=16`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KitConfig {
    /// The broker.
    pub broker: BrokerConfig,
    /// The service's own database.
    pub database: DatabaseConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// Option overrides per consumer name.
    pub consumers: std::collections::BTreeMap<String, ConsumerConfig>,
}

/// Loads `T`: its defaults, then `file` (if given), then `env`.
///
/// Pass `std::env::vars()` as `env` in a binary; tests pass their own.
///
/// # Errors
/// The file cannot be read or parsed, or a value does not fit its field.
pub fn load<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError>
where
    T: Serialize + for<'de> Deserialize<'de> + Default,
{
    let mut value = serde_json::to_value(T::default()).map_err(|e| ConfigError::Invalid {
        path: String::new(),
        reason: e.to_string(),
    })?;
    if let Some(path) = file {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let layer: Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown,
            reason: e.to_string().lines().next().unwrap_or_default().to_owned(),
        })?;
        merge(&mut value, layer);
    }
    merge(&mut value, env_layer(env));
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    T::deserialize(de).map_err(|e| ConfigError::Invalid {
        path: track.path().to_string(),
        reason: e.to_string(),
    })
}

/// The layer the environment contributes.
fn env_layer(env: impl IntoIterator<Item = (String, String)>) -> Value {
    let mut layer = Value::Object(Map::new());
    for (name, raw) in env {
        let path: Vec<String> = match name.as_str() {
            "DATABASE_URL" => vec!["database".into(), "url".into()],
            "OTEL_EXPORTER_OTLP_ENDPOINT" => vec!["telemetry".into(), "otlp_endpoint".into()],
            "OTEL_EXPORTER_OTLP_PROTOCOL" => vec!["telemetry".into(), "otlp_protocol".into()],
            _ => match name.strip_prefix("SLUICE_") {
                Some(rest) if rest.contains("__") => {
                    rest.split("__").map(str::to_ascii_lowercase).collect()
                }
                _ => continue,
            },
        };
        let value = serde_json::from_str::<Value>(&raw)
            .ok()
            .filter(|v| !v.is_object() && !v.is_array())
            .unwrap_or(Value::String(raw));
        let mut nested = value;
        for key in path.iter().rev() {
            let mut map = Map::new();
            map.insert(key.clone(), nested);
            nested = Value::Object(map);
        }
        merge(&mut layer, nested);
    }
    layer
}

/// Merges `layer` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut Value, layer: Value) {
    match (base, layer) {
        (Value::Object(base), Value::Object(layer)) => {
            for (k, v) in layer {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, layer) => *base = layer,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_run_everything_on_one_machine() {
        let c: KitConfig = load(None, env(&[])).unwrap();
        assert_eq!(c.broker.url.expose(), "embedded:data/broker.db");
        assert_eq!(c.telemetry.log_format, LogFormat::Pretty);
        assert!(matches!(
            c.broker.parsed().unwrap(),
            sluice_broker::BrokerUrl::Embedded(_)
        ));
    }

    #[test]
    fn the_environment_overrides_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(
            &file,
            "[broker]\nurl = \"nats://file:4222\"\n[telemetry]\nlog_format = \"json\"\n",
        )
        .unwrap();
        let c: KitConfig = load(Some(&file), env(&[])).unwrap();
        assert_eq!(c.broker.url.expose(), "nats://file:4222");
        assert_eq!(c.telemetry.log_format, LogFormat::Json);
        let c: KitConfig = load(
            Some(&file),
            env(&[
                ("SLUICE_BROKER__URL", "amqp://guest:guest@env:5672/%2f"),
                ("DATABASE_URL", "postgres://app:pw@db/app"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.broker.url.expose(), "amqp://guest:guest@env:5672/%2f");
        assert_eq!(c.database.url.expose(), "postgres://app:pw@db/app");
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(c.telemetry.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(c.telemetry.log_format, LogFormat::Json, "file value kept");
    }

    #[test]
    fn secrets_never_print() {
        let c: KitConfig = load(
            None,
            env(&[("DATABASE_URL", "postgres://app:hunter2@db/app")]),
        )
        .unwrap();
        let shown = format!("{c:?} {}", c.database.url);
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_bad_value_names_its_field() {
        let err =
            load::<KitConfig>(None, env(&[("SLUICE_TELEMETRY__LOG_FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("telemetry.log_format"), "{err}");
        let err = load::<KitConfig>(None, env(&[("SLUICE_BROKER__URLL", "nats://x")])).unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
        let bad = KitConfig {
            broker: BrokerConfig {
                url: Secret::new("kafka://x"),
            },
            ..KitConfig::default()
        };
        assert!(
            bad.broker
                .parsed()
                .unwrap_err()
                .to_string()
                .contains("broker.url")
        );
    }

    #[test]
    fn consumer_options_are_overridden_by_name() {
        let c: KitConfig = load(
            None,
            env(&[
                ("SLUICE_CONSUMERS__STOCK__CONCURRENCY", "3"),
                ("SLUICE_CONSUMERS__STOCK__HANDLER_TIMEOUT_MS", "1500"),
                ("SLUICE_CONSUMERS__STOCK__JITTER", "0"),
            ]),
        )
        .unwrap();
        let o = crate::ConsumerOptions::default().with_config(&c.consumers["stock"]);
        assert_eq!(o.concurrency, 3);
        assert_eq!(o.handler_timeout, std::time::Duration::from_millis(1500));
        assert_eq!(o.retry.jitter, 0.0);
        assert_eq!(
            o.max_wave,
            crate::ConsumerOptions::default().max_wave,
            "others kept"
        );
        let err = load::<KitConfig>(None, env(&[("SLUICE_CONSUMERS__STOCK__CONCURENCY", "3")]))
            .unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    fn a_broken_file_is_a_one_line_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[broker\nurl = 1").unwrap();
        let err = load::<KitConfig>(Some(&file), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert_eq!(err.to_string().lines().count(), 1, "{err}");
        let err = load::<KitConfig>(Some(&dir.path().join("missing.toml")), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }
}
