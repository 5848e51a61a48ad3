//! Logging for a service process, set up once from [`TelemetryConfig`]:
//! human-readable lines for terminals, or one JSON object per line for log
//! collectors; the level filter comes from `RUST_LOG` (default `info`).
//!
//! OpenTelemetry export is not built yet: when an OTLP endpoint is
//! configured, [`init`] says so in a warning rather than pretending.

use std::io::Write;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, TelemetryConfig};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A global subscriber is already installed in this process.
    #[error("telemetry is already initialised: {0}")]
    AlreadyInitialised(String),
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// A subscriber writing to `writer` in the configured format.
pub fn subscriber<W>(
    config: &TelemetryConfig,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(writer);
    match config.log_format {
        LogFormat::Pretty => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// Installs the process-wide subscriber, logging to stderr.
///
/// # Errors
/// A subscriber was already installed.
pub fn init(config: &TelemetryConfig) -> Result<(), TelemetryError> {
    tracing::subscriber::set_global_default(subscriber(config, std::io::stderr))
        .map_err(|e| TelemetryError::AlreadyInitialised(e.to_string()))?;
    if let Some(endpoint) = &config.otlp_endpoint {
        tracing::warn!(
            endpoint,
            "OTLP trace export is not built yet; traces stay in the logs"
        );
    }
    Ok(())
}

/// A writer that appends to a shared buffer (tests read what was logged).
#[derive(Debug, Clone, Default)]
pub struct MemoryWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl MemoryWriter {
    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for MemoryWriter {
    type Writer = MemoryWriter;

    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn log_with(format: LogFormat) -> String {
        let out = MemoryWriter::default();
        let config = TelemetryConfig {
            log_format: format,
            otlp_endpoint: None,
        };
        tracing::subscriber::with_default(subscriber(&config, out.clone()), || {
            tracing::info!(order_id = "o-1", "order placed");
        });
        out.contents()
    }

    #[test]
    fn json_logs_are_one_object_per_line_with_the_fields() {
        let text = log_with(LogFormat::Json);
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["message"], "order placed");
        assert_eq!(line["order_id"], "o-1");
        assert_eq!(line["level"], "INFO");
    }

    #[test]
    fn pretty_logs_are_text_lines() {
        let text = log_with(LogFormat::Pretty);
        assert!(
            text.contains("order placed") && text.contains("order_id"),
            "{text}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
    }
}
