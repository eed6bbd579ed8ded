//! Start a whole server from a [`Config`]: open the vault, build the router,
//! bind, serve. Used by `tokengate serve` and by tests (port 0).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokengate_vault::{DataDir, Vault, VaultConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::app::{AppState, router};
use crate::config::Config;
use crate::tls;

static METRICS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    METRICS
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .clone()
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Vault(#[from] tokengate_vault::VaultError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Open the vault for `config`.
pub async fn open_vault(config: &Config) -> Result<Arc<Vault>, tokengate_vault::VaultError> {
    let mut vc = VaultConfig::new(&config.data_dir);
    vc.database_url = config.database_url.clone();
    vc.cvc_ttl = config.cvc_ttl();
    Ok(Arc::new(Vault::open(vc).await?))
}

/// Build the shared state for `vault`.
pub fn state(vault: Arc<Vault>, config: &Config) -> AppState {
    AppState {
        vault,
        config: Arc::new(config.clone()),
        metrics: metrics_handle(),
        ready: Arc::new(AtomicBool::new(true)),
    }
}

/// A server running in the background.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub vault: Arc<Vault>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop accepting, finish open requests, and wait for the server to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// Open, bind and serve in the background.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let vault = open_vault(config).await?;
    let dir = DataDir(config.data_dir.clone());
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (dir.tls_cert(), dir.tls_key()),
    };
    let tls = tls::server_config(&cert, &key)?;
    let addr = config.listen_addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let sweeper = vault.spawn_cvc_sweeper(Duration::from_secs(config.cvc_sweep_secs));
    let checkpointer = vault.spawn_checkpointer(Duration::from_secs(config.audit_checkpoint_secs));
    let app = router(state(vault.clone(), config));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        crate::serve::serve_tls(listener, tls, app, async {
            let _ = stopped.await;
        })
        .await;
        sweeper.abort();
        checkpointer.abort();
    });
    Ok(Running {
        addr,
        vault,
        stop: Some(stop),
        task,
    })
}
