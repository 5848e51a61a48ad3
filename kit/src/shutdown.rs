//! Graceful shutdown: one signal shared by every task of a process.
//!
//! [`Shutdown::new`] gives a trigger; [`Shutdown::listener`] hands each task
//! a [`ShutdownListener`] it awaits (or polls) to stop fetching, finish its
//! in-flight work and return. [`Shutdown::on_signal`] triggers on SIGTERM or
//! ctrl-c.

use tokio::sync::watch;

/// The trigger side: fires once, seen by every listener.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

/// The side a task holds.
#[derive(Debug, Clone)]
pub struct ShutdownListener {
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A trigger that has not fired.
    pub fn new() -> Self {
        Self {
            tx: watch::channel(false).0,
        }
    }

    /// A listener for one task.
    pub fn listener(&self) -> ShutdownListener {
        ShutdownListener {
            rx: self.tx.subscribe(),
        }
    }

    /// Fires: every listener sees it, now or later.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Fires on SIGTERM or ctrl-c (whichever comes first), then returns.
    pub async fn on_signal(&self) {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        self.trigger();
    }
}

impl ShutdownListener {
    /// Whether shutdown has been requested.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is requested (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which also means: stop.
        let _ = self.rx.wait_for(|fired| *fired).await;
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_sees_the_trigger_even_one_made_later() {
        let s = Shutdown::new();
        let mut early = s.listener();
        assert!(!early.is_triggered());
        let waiter = tokio::spawn(async move { early.wait().await });
        s.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        let mut late = s.listener();
        assert!(late.is_triggered());
        late.wait().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_releases_listeners() {
        let s = Shutdown::new();
        let mut l = s.listener();
        drop(s);
        tokio::time::timeout(std::time::Duration::from_secs(5), l.wait())
            .await
            .expect("released");
    }
}
