//! `sluice-media`: the media service as its own process.
//!
//! Configured like every Sluice service (see `sluice_kit::app`); the
//! database defaults to `sqlite://data/media.db`, the operations endpoints
//! to 127.0.0.1:9106. Where images are kept:
//!
//! - `SLUICE_MEDIA_DIR`: a local folder (default `data/media`);
//! - `SLUICE_MEDIA_S3_URL=s3://bucket[/prefix]`: an S3-compatible bucket
//!   instead, with `SLUICE_MEDIA_S3_ENDPOINT` (e.g. `http://127.0.0.1:9000`;
//!   AWS when unset), `SLUICE_MEDIA_S3_REGION` (default `us-east-1`),
//!   `SLUICE_MEDIA_S3_ACCESS_KEY_ID`, `SLUICE_MEDIA_S3_SECRET_ACCESS_KEY`,
//!   `SLUICE_MEDIA_S3_SESSION_TOKEN` (each else its `AWS_…` namesake) and
//!   `SLUICE_MEDIA_S3_ALLOW_HTTP` (default: true for an `http://` endpoint).
//!
//! A failure is one line on stderr and exit code 1.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_kit::app::main(
        sluice_media::NAME,
        sluice_media::LISTEN,
        sluice_media::from_resources,
    )
    .await
}
