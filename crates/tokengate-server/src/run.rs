//! Start a whole server from a [`Config`]: open the vault, build the router,
//! bind, serve. Used by `tokengate serve` and by tests (port 0).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokengate_tls::ReloadableResolver;
use tokengate_vault::{Vault, VaultConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

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
    #[error("{0}")]
    Drain(String),
    #[error("proxy: {0}")]
    Proxy(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Open the vault for `config`.
pub async fn open_vault(config: &Config) -> Result<Arc<Vault>, tokengate_vault::VaultError> {
    Ok(Arc::new(Vault::open(vault_config(config)).await?))
}

/// The vault settings of `config`.
pub fn vault_config(config: &Config) -> VaultConfig {
    let mut vc = VaultConfig::new(&config.data_dir);
    vc.database_url = config.database_url.clone();
    vc.cvc_ttl = config.cvc_ttl();
    vc.lockout = config.lockout();
    vc.reveal_alert_per_minute = config.reveal_alert_per_minute;
    vc.share_source = Some(stdin_shares());
    vc.audit_hmac_fields = config
        .audit_hmac_fields
        .iter()
        .filter_map(|f| tokengate_vault::AuditHmacField::from_name(f))
        .collect();
    vc
}

/// Custodian shares from standard input, one per line (with a prompt on a
/// terminal). Used only when the data directory's root key is split among
/// custodians.
fn stdin_shares() -> tokengate_vault::ShareSource {
    use std::io::{BufRead, IsTerminal, Write};
    tokengate_vault::ShareSource(Arc::new(|threshold: u8, progress: u8| {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            // A prompt for the person at the console, not a log line.
            let mut err = std::io::stderr();
            let _ = write!(err, "Custodian share {} of {threshold}: ", progress + 1);
            let _ = err.flush();
        }
        let mut line = zeroize::Zeroizing::new(String::new());
        match stdin.lock().read_line(&mut line) {
            Ok(n) if n > 0 && !line.trim().is_empty() => {
                Some(zeroize::Zeroizing::new(line.trim().to_owned()))
            }
            _ => None,
        }
    }))
}

/// Build the shared state for `vault`.
pub fn state(vault: Arc<Vault>, config: &Config) -> AppState {
    AppState {
        vault,
        config: Arc::new(config.clone()),
        metrics: metrics_handle(),
        ready: Arc::new(AtomicBool::new(true)),
        webhooks: Arc::new(crate::webhooks::Receivers::new(&config.webhooks)),
        seal: None,
    }
}

/// A server running in the background.
#[derive(Debug)]
pub struct Running {
    /// The HTTPS address.
    pub addr: SocketAddr,
    /// The plain-HTTP (redirect) address, when `http_listen` is set.
    pub http_addr: Option<SocketAddr>,
    /// The edge proxy's address, when `[proxy]` is configured.
    pub proxy_addr: Option<SocketAddr>,
    /// The outbound forward proxy's address, when `[outbound] listen` is set.
    pub forward_addr: Option<SocketAddr>,
    /// The open vault (`None` when started sealed).
    pub vault: Option<Arc<Vault>>,
    /// The seal state (custodians data directories only).
    pub seal: Option<Arc<crate::sealed::SealState>>,
    /// The certificates new handshakes get (swapped on reload).
    pub resolver: Arc<ReloadableResolver>,
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, finish open requests, and wait for the server to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, bound))
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Pick up key-ring changes made by another process (the CLI's `keys
/// rotate`, another node) within `every`.
async fn key_reload_loop(vault: Arc<Vault>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = vault.refresh_key_ring().await {
            tracing::error!(code = e.code(), error = %e, "key ring reload failed; keeping the current ring");
        }
    }
}

/// Warn (and optionally rotate) when an active key is past its
/// cryptoperiod: at start, then once an hour.
async fn cryptoperiod_loop(
    vault: Arc<Vault>,
    periods: Vec<(tokengate_crypto::KeyPurpose, u64)>,
    auto_rotate: bool,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) = vault.check_cryptoperiods(&periods, auto_rotate).await {
            tracing::error!(code = e.code(), error = %e, "cryptoperiod check failed");
        }
    }
}

/// The background tasks and the router of an open vault.
pub(crate) struct Services {
    pub(crate) app: axum::Router,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Load `vault`'s certificates into `resolver`, start its background tasks
/// and build its router. `config.listen` must name the bound address.
pub(crate) async fn services(
    vault: &Arc<Vault>,
    config: &Config,
    resolver: &Arc<ReloadableResolver>,
    seal: Option<Arc<crate::sealed::SealState>>,
) -> Result<Services, StartError> {
    vault.import_legacy_tls_files().await?;
    let default_cert = config.default_cert().map(str::to_owned);
    let generation = vault.tls_generation().await?;
    resolver.replace(tls::load_resolver(vault, default_cert.as_deref()).await?);
    let mut tasks = Vec::new();
    tasks.push(vault.spawn_cvc_sweeper(Duration::from_secs(config.cvc_sweep_secs)));
    tasks.push(vault.spawn_checkpointer(
        Duration::from_secs(config.audit_checkpoint_secs),
        config.audit_checkpoint_records,
    ));
    let drains = config
        .audit
        .drains
        .iter()
        .cloned()
        .chain(config.alert_drain())
        .map(crate::drain::Drain::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Drain(format!("audit drain: {e}")))?;
    // A cursor left by a drain this node does not have holds back pruning:
    // say so once at start (another node may still have it configured).
    let configured: Vec<String> = drains.iter().map(|d| d.config.name.clone()).collect();
    for (name, seq) in vault.drain_cursors().await.unwrap_or_default() {
        if !configured.contains(&name) {
            tracing::warn!(
                drain = %name,
                delivered_seq = seq,
                "an audit drain not configured on this node has a delivery cursor, which holds back \
                 audit pruning; if it is gone for good: tokengate audit drains --forget <drain>"
            );
        }
    }
    tasks.extend(crate::drain::spawn_all(vault.clone(), drains));
    tasks.push({
        let vault = vault.clone();
        let days = config.audit_retention_days;
        let archive = config.data_dir.join("archive");
        tokio::spawn(async move {
            // Once an hour (the first a minute after start).
            tokio::time::sleep(Duration::from_secs(60)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let cutoff = tokengate_vault::clock::now_ms().saturating_sub(
                    i64::try_from(days)
                        .unwrap_or(i64::MAX)
                        .saturating_mul(86_400_000),
                );
                match vault.prune_audit(cutoff, &archive).await {
                    Ok(r) if r.pruned > 0 => {
                        tracing::info!(
                            pruned = r.pruned,
                            upto = r.upto_seq,
                            "audit records archived and pruned"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(code = e.code(), error = %e, "audit retention failed; will retry")
                    }
                }
            }
        })
    });
    tasks.push(tokio::spawn(tls::reload_loop(
        vault.clone(),
        resolver.clone(),
        default_cert,
        Duration::from_millis(config.tls_reload_ms),
        generation,
    )));
    tasks.push(tokio::spawn(key_reload_loop(
        vault.clone(),
        Duration::from_millis(config.key_reload_ms),
    )));
    tasks.push(tokio::spawn(cryptoperiod_loop(
        vault.clone(),
        config.cryptoperiods(),
        config.key_auto_rotate,
    )));
    tasks.push(tokio::spawn(tls::expiry_loop(
        vault.clone(),
        Duration::from_secs(config.tls_expiry_check_secs),
    )));
    if let Some(settings) = config.acme() {
        tasks.push(tokio::spawn(crate::acme::alpn_sync_loop(
            vault.clone(),
            resolver.clone(),
        )));
        tasks.push(tokio::spawn(crate::acme::acme_loop(
            vault.clone(),
            resolver.clone(),
            settings,
        )));
    }
    let mut st = state(vault.clone(), config);
    st.seal = seal;
    tasks.extend(
        crate::webhooks::deliver::spawn_all(vault.clone(), &config.webhooks, &st.webhooks)
            .map_err(|e| StartError::Drain(format!("webhook delivery: {e}")))?,
    );
    Ok(Services {
        app: router(st),
        tasks,
    })
}

/// Open, bind and serve in the background. A data directory whose root key
/// is split among custodians starts sealed (see [`crate::sealed`]).
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let dir = tokengate_vault::DataDir(config.data_dir.clone());
    if dir.custodians().exists() {
        return start_sealed(config, &dir).await;
    }
    let vault = open_vault(config).await?;
    let resolver = Arc::new(ReloadableResolver::new(tokengate_tls::SniResolver::new()));
    let tls = tls::server_config(resolver.clone(), config.acme_tls_alpn())?;
    let (listener, addr) = bind(config.listen_addr()).await?;
    let http = match config.http_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    // Redirects name the port actually bound (port 0 in tests).
    let mut config = config.clone();
    config.listen = Some(addr);
    let services = services(&vault, &config, &resolver, None).await?;
    let app = services.app;
    let mut background = services.tasks;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let http_addr = http.as_ref().map(|(_, a)| *a);
    let (proxy_addr, forward_addr) =
        start_proxy(&vault, &config, &tls, &stop_rx, &mut tasks, &mut background).await?;
    if let Some((listener, _)) = http {
        let app = app.clone();
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            crate::serve::serve(listener, None, app, stopped(rx)).await;
        }));
    }
    tasks.push(tokio::spawn(async move {
        crate::serve::serve(listener, Some(tls), app, stopped(stop_rx)).await;
        background.iter().for_each(tokio::task::JoinHandle::abort);
    }));
    Ok(Running {
        addr,
        http_addr,
        proxy_addr,
        forward_addr,
        vault: Some(vault),
        seal: None,
        resolver,
        stop: Some(stop),
        tasks,
    })
}

/// Bind and serve the edge proxy (`[proxy]`) and the outbound forward proxy
/// (`[outbound] listen`) of an open vault; returns their addresses.
async fn start_proxy(
    vault: &Arc<Vault>,
    config: &Config,
    tls: &Arc<rustls::ServerConfig>,
    stop_rx: &watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    background: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), StartError> {
    let Some(p) = &config.proxy else {
        return Ok((None, None));
    };
    let rules = crate::proxy::Rules::build(config).map_err(StartError::Proxy)?;
    let (listener, addr) = bind(p.listen).await?;
    let pstate = crate::proxy::ProxyState::new(vault.clone(), rules);
    if let Some(file) = config.source_file.clone() {
        background.push(tokio::spawn(crate::proxy::reload_loop(
            pstate.clone(),
            file,
        )));
    }
    let mut forward_addr = None;
    if let Some(a) = config.outbound.listen {
        let ca = vault
            .outbound_ca(true)
            .await?
            .ok_or_else(|| StartError::Proxy("no outbound CA".into()))?;
        let (flistener, faddr) = bind(a).await?;
        forward_addr = Some(faddr);
        let fwd = crate::proxy::forward::Forward::new(pstate.clone(), ca);
        tasks.push(tokio::spawn(crate::proxy::forward::serve(
            flistener,
            fwd,
            stop_rx.clone(),
        )));
    }
    let edge = crate::edge::EdgeConfig {
        behind_proxy: config.behind_proxy,
        trusted_proxies: config.trusted_proxy_cidrs().unwrap_or_default(),
        // Redirects from a plain listener behind a router name the public
        // HTTPS port, not ours.
        https_port: if p.tls {
            addr.port()
        } else {
            config.public_https_port.unwrap_or(443)
        },
    };
    let papp = crate::app::proxy_layers(crate::proxy::router(pstate), edge);
    let ptls = p.tls.then(|| tls.clone());
    let rx = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        crate::serve::serve(listener, ptls, papp, stopped(rx)).await;
    }));
    Ok((Some(addr), forward_addr))
}

/// [`start`] for a custodians data directory: listen at once, sealed.
async fn start_sealed(
    config: &Config,
    dir: &tokengate_vault::DataDir,
) -> Result<Running, StartError> {
    if config.proxy.is_some() {
        return Err(StartError::Proxy(
            "the edge proxy needs an open vault when the server starts; a custodians data directory starts sealed, \
             so run the proxy on a node whose root key is held by the file or an HSM provider (or leave [proxy] out)"
                .into(),
        ));
    }
    let path = dir.custodians();
    let setup: tokengate_crypto::custodians::CustodianSetup = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            StartError::Vault(tokengate_vault::VaultError::Setup(format!(
                "{} is missing or corrupt",
                path.display()
            )))
        })?;
    let (sealed_resolver, fingerprint) = crate::sealed::sealed_resolver()?;
    let resolver = Arc::new(ReloadableResolver::new(sealed_resolver.clone()));
    let tls = tls::server_config(resolver.clone(), config.acme_tls_alpn())?;
    let (listener, addr) = bind(config.listen_addr()).await?;
    let http = match config.http_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let mut config = config.clone();
    config.listen = Some(addr);
    let current = Arc::new(std::sync::RwLock::new(axum::Router::new()));
    let threshold = setup.threshold;
    let seal = crate::sealed::SealState::new(
        config.clone(),
        setup,
        current.clone(),
        resolver.clone(),
        sealed_resolver,
    );
    let app = crate::sealed::switch_router(current);
    tracing::warn!(
        threshold,
        tls_sha256 = %fingerprint,
        "sealed: card data is refused until {threshold} custodians enter their shares (`tokengate unseal --url https://{addr} --pin {fingerprint}`)"
    );
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let http_addr = http.as_ref().map(|(_, a)| *a);
    if let Some((listener, _)) = http {
        let app = app.clone();
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            crate::serve::serve(listener, None, app, stopped(rx)).await;
        }));
    }
    let on_stop = seal.clone();
    tasks.push(tokio::spawn(async move {
        crate::serve::serve(listener, Some(tls), app, stopped(stop_rx)).await;
        on_stop.stop_tasks().await;
    }));
    Ok(Running {
        addr,
        http_addr,
        proxy_addr: None,
        forward_addr: None,
        vault: None,
        seal: Some(seal),
        resolver,
        stop: Some(stop),
        tasks,
    })
}
