//! Test support: unique names, and real broker servers for tests.
//!
//! Tests never skip a backend: when a server cannot be found or started these
//! helpers fail with a one-line reason saying how to provide it
//! (`scripts/test.sh` provisions everything).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngExt;

/// A name unique to this test run: `prefix` plus 10 random lowercase letters
/// and digits (valid as a subject token, group, stream and queue name).
pub fn unique(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// The RabbitMQ URL tests use: `SLUICE_TEST_AMQP_URL`, else the local server.
pub fn amqp_url() -> String {
    std::env::var("SLUICE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The workspace root (the folder holding `Cargo.lock`).
pub fn workspace_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("Cargo.lock").exists() {
        if !dir.pop() {
            return PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        }
    }
    dir
}

/// Where the `nats-server` binary is: `SLUICE_NATS_SERVER`, else the project's
/// tool folder `.tools/bin/nats-server` (installed by `scripts/test.sh`).
pub fn nats_server_binary() -> PathBuf {
    std::env::var_os("SLUICE_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/bin/nats-server"))
}

/// A free TCP port on 127.0.0.1 (bound then released).
///
/// # Panics
/// If the OS has no free port, which makes every broker test impossible.
pub fn free_port() -> u16 {
    #[allow(clippy::expect_used)]
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free TCP port on 127.0.0.1")
}

/// A `nats-server` with JetStream, started for one test on a free port with
/// its own store directory, killed (and its store removed) on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    ///
    /// # Panics
    /// With a one-line reason if the binary is missing or does not start;
    /// broker tests are never skipped.
    pub fn start() -> Self {
        #[allow(clippy::expect_used)]
        let store = tempfile::tempdir().expect("temporary directory for the NATS store");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = nats_server_binary();
        assert!(
            bin.exists(),
            "nats-server not found at {} (run scripts/test.sh, or set SLUICE_NATS_SERVER)",
            bin.display()
        );
        let child = Command::new(&bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(15));
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Kills the server (its store stays), e.g. to test connection loss.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
///
/// # Panics
/// If nothing does within `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "nothing listens on 127.0.0.1:{port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
