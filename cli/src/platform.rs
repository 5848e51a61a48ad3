//! The reference shop assembled in one process: every service on one
//! broker, each with its own SQLite database under the data directory
//! (`<service>.db`). Used by `sluice up` and the shop benchmark.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use futures::future::BoxFuture;
use sea_orm::DatabaseConnection;
use sluice_broker::Broker;
use sluice_kit::app::Stop;
use sluice_kit::health::Readiness;
use sluice_kit::{KitConfig, Metrics};

/// Every service of the shop, in start order (producers of commands after
/// the services that answer them).
/// (Each service's domain is named after it.)
pub(crate) const SERVICES: [&str; 6] = sluice_edge::SHOP_DOMAINS;

/// A started service, type-erased.
struct Started {
    name: &'static str,
    stop: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

fn started<S: Stop>(name: &'static str, running: S) -> Started {
    Started {
        name,
        stop: Box::new(move || running.stop()),
    }
}

/// The running shop.
pub(crate) struct Platform {
    services: Vec<Started>,
    dbs: Vec<(&'static str, DatabaseConnection)>,
    /// Where each service keeps its files.
    pub(crate) data_dir: PathBuf,
    /// Where e-mails go (a mailbox folder, or SMTP).
    pub(crate) mail: String,
    /// Where product images are kept (a folder, or an S3 bucket).
    pub(crate) images: String,
    /// The store itself, for the edge's uploads.
    pub(crate) image_store: Option<sluice_media::ImageStore>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("services", &self.names())
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl Platform {
    /// Starts every service on `broker` with databases under `data_dir`.
    /// On a failure, the services already started are stopped.
    ///
    /// # Errors
    /// A database or a service failed to start.
    pub(crate) async fn start(
        broker: Arc<dyn Broker>,
        data_dir: &Path,
        config: &KitConfig,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let mut platform = Self {
            services: Vec::new(),
            dbs: Vec::new(),
            data_dir: data_dir.to_owned(),
            mail: String::new(),
            images: String::new(),
            image_store: None,
        };
        for name in SERVICES {
            if let Err(e) = platform.start_one(name, &broker, config, metrics).await {
                platform.stop().await;
                return Err(e.context(format!("starting the {name} service")));
            }
        }
        Ok(platform)
    }

    async fn start_one(
        &mut self,
        name: &'static str,
        broker: &Arc<dyn Broker>,
        config: &KitConfig,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        let db = service_db(&self.data_dir, name).await?;
        let (b, m) = (broker.clone(), metrics.clone());
        let s = match name {
            "accounts" => started(
                name,
                sluice_accounts::start(
                    b,
                    db.clone(),
                    config,
                    m,
                    sluice_accounts::Subjects::default(),
                    sluice_accounts::AccountsConfig::from_env(std::env::vars())?,
                )
                .await?,
            ),
            "inventory" => started(
                name,
                sluice_inventory::start(
                    b,
                    db.clone(),
                    config,
                    m,
                    sluice_inventory::Subjects::default(),
                )
                .await?,
            ),
            "payments" => started(
                name,
                sluice_payments::start(
                    b,
                    db.clone(),
                    config,
                    m,
                    sluice_payments::Subjects::default(),
                )
                .await?,
            ),
            "orders" => started(
                name,
                sluice_orders::start(b, db.clone(), config, m, sluice_orders::Subjects::default())
                    .await?,
            ),
            "notifications" => started(
                name,
                sluice_notifications::start(
                    b,
                    db.clone(),
                    config,
                    m,
                    sluice_notifications::Subjects::default(),
                    {
                        let c = notifications_config(&self.data_dir);
                        self.mail = match &c.delivery {
                            sluice_notifications::Delivery::Mailbox(dir) => {
                                dir.display().to_string()
                            }
                            sluice_notifications::Delivery::Smtp(_) => "SMTP".to_owned(),
                        };
                        c
                    },
                )
                .await?,
            ),
            "media" => started(
                name,
                sluice_media::start(
                    b,
                    db.clone(),
                    config,
                    m,
                    sluice_media::Subjects::default(),
                    {
                        let (store, place) = media_store(&self.data_dir)?;
                        self.images = place;
                        self.image_store = Some(store.clone());
                        store
                    },
                )
                .await?,
            ),
            other => anyhow::bail!("unknown service {other}"),
        };
        self.services.push(s);
        self.dbs.push((name, db));
        Ok(())
    }

    /// The names of the running services.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.services.iter().map(|s| s.name).collect()
    }

    /// `readiness` with every service's database added.
    pub(crate) fn readiness(&self, mut readiness: Readiness) -> Readiness {
        for (name, db) in &self.dbs {
            readiness = readiness.database(name, db.clone());
        }
        readiness
    }

    /// Stops the services gracefully, last started first.
    pub(crate) async fn stop(mut self) {
        while let Some(s) = self.services.pop() {
            (s.stop)().await;
        }
    }
}

/// The notifications' delivery: `SLUICE_SMTP_URL` / `SLUICE_MAILBOX_DIR`
/// when set, else the mailbox folder `mailbox/` under the data directory.
fn notifications_config(data_dir: &Path) -> sluice_notifications::NotificationsConfig {
    let mut config = sluice_notifications::NotificationsConfig::from_env();
    let configured =
        std::env::vars().any(|(k, _)| k == "SLUICE_SMTP_URL" || k == "SLUICE_MAILBOX_DIR");
    if !configured {
        config.delivery = sluice_notifications::Delivery::Mailbox(data_dir.join("mailbox"));
    }
    config
}

/// The media store and where it is: `SLUICE_MEDIA_*` when set (an
/// S3-compatible bucket, or another folder), else `media/` under the data
/// directory.
fn media_store(data_dir: &Path) -> anyhow::Result<(sluice_media::ImageStore, String)> {
    if std::env::vars().any(|(k, _)| k.starts_with("SLUICE_MEDIA_")) {
        let config = sluice_media::MediaConfig::from_process_env()?;
        let place = match &config.store {
            sluice_media::StoreConfig::Local { dir } => dir.display().to_string(),
            sluice_media::StoreConfig::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
        };
        return Ok((sluice_media::ImageStore::from_config(&config.store)?, place));
    }
    let dir = data_dir.join("media");
    Ok((
        sluice_media::ImageStore::local(&dir)?,
        dir.display().to_string(),
    ))
}

/// Opens (creating) the SQLite database of `service` under `data_dir`.
pub(crate) async fn service_db(
    data_dir: &Path,
    service: &str,
) -> anyhow::Result<DatabaseConnection> {
    let url = format!(
        "sqlite://{}?mode=rwc",
        data_dir.join(format!("{service}.db")).display()
    );
    sluice_kit::db::open(&url, 1)
        .await
        .with_context(|| format!("opening the {service} database at {url}"))
}
