//! The edge proxy: its own listener in front of the merchant's app.
//!
//! - [`inbound`]: `[[proxy.inbound]]` routes. The request body's card fields
//!   become tokens (and anything else card-shaped is refused, tokenized or
//!   alerted on) before the request is forwarded to the app.
//! - [`relay`]: `POST /relay/{processor}/…`. The app sends tokens; the
//!   processor, and only a configured processor, receives card numbers.
//! - [`forward`]: the same toward processors for apps that use an HTTPS
//!   proxy (`CONNECT`, TLS interception with the outbound CA).
//! - [`cards`]: turning body hits into tokens or card numbers through the
//!   vault, with the policies of a route.
//! - [`upstream`]: HTTP clients for apps and processors (TLS roots, mTLS,
//!   the egress-filtering resolver, no redirects, no ambient proxies).
//!
//! Routes and processors are re-read from the configuration file every
//! second; a file that no longer validates keeps the rules in force and logs
//! why.

pub mod cards;
pub mod forward;
pub mod inbound;
pub mod relay;
pub mod upstream;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::any;
use tokengate_proxy::Detector;
use tokengate_proxy::config::{CompiledProcessor, Route};
use tokengate_vault::Vault;

use crate::config::Config;

/// Default upstream timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest request body.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// One inbound route with its HTTP client.
#[derive(Debug)]
pub struct LiveRoute {
    pub route: Route,
    pub client: upstream::AppClient,
}

/// One processor with its HTTP client.
#[derive(Debug)]
pub struct LiveProcessor {
    pub processor: CompiledProcessor,
    pub client: reqwest::Client,
}

/// Everything the proxy's handlers read; swapped whole on reload.
#[derive(Debug)]
pub struct Rules {
    pub routes: Vec<LiveRoute>,
    pub processors: Vec<LiveProcessor>,
    pub max_body: usize,
    pub timeout: Duration,
    pub relay_timeout: Duration,
    /// `host:port` the forward proxy may tunnel untouched.
    pub tunnels: Vec<String>,
}

impl Rules {
    /// Compile `config`'s `[proxy]` and `[outbound]` sections.
    pub fn build(config: &Config) -> Result<Rules, String> {
        let Some(proxy) = &config.proxy else {
            return Err("no [proxy] section".into());
        };
        let timeout = proxy
            .timeout_ms
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let relay_timeout = config
            .outbound
            .timeout_ms
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let routes = proxy
            .compile()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|route| {
                let client = upstream::app_client(&route)?;
                Ok(LiveRoute { route, client })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let processors = config
            .outbound
            .compile()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|processor| {
                let client = upstream::processor_client(&processor)?;
                Ok(LiveProcessor { processor, client })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Rules {
            routes,
            processors,
            max_body: proxy.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
            timeout,
            relay_timeout,
            tunnels: config.outbound.tunnel.clone(),
        })
    }
}

/// Shared state of the proxy listener.
#[derive(Debug)]
pub struct ProxyState {
    pub vault: Arc<Vault>,
    rules: RwLock<Arc<Rules>>,
    pub net: Detector,
}

impl ProxyState {
    pub fn new(vault: Arc<Vault>, rules: Rules) -> Arc<ProxyState> {
        Arc::new(ProxyState {
            vault,
            rules: RwLock::new(Arc::new(rules)),
            net: tokengate_proxy::safety_net(),
        })
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, rules: Rules) {
        *self
            .rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(rules);
    }
}

/// A refusal (or upstream failure) as an API error, once its audit record is
/// written; `audit_unavailable` when it cannot be (fail closed).
pub(crate) async fn audited_error(
    state: &ProxyState,
    caller: &tokengate_vault::Caller,
    action: tokengate_audit::Action,
    detail: &str,
    error: crate::error::ApiError,
) -> crate::error::ApiError {
    match state
        .vault
        .record_edge_event(
            action,
            error.code,
            caller.key_id.as_str(),
            &caller.meta,
            detail,
        )
        .await
    {
        Ok(()) => error,
        Err(_) => tokengate_vault::VaultError::AuditUnavailable.into(),
    }
}

/// The proxy's router: the relay, then every inbound route.
pub fn router(state: Arc<ProxyState>) -> Router {
    Router::new()
        .route("/relay/{processor}", any(relay::relay))
        .route("/relay/{processor}/{*rest}", any(relay::relay))
        .fallback(inbound::inbound)
        .with_state(state)
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Re-read the configuration file every second; swap the rules when it
/// changed and still validates.
pub async fn reload_loop(state: Arc<ProxyState>, file: PathBuf) {
    let mut seen = modified(&file);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = modified(&file);
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = Config::load(Some(&file), &crate::config::ProcessEnv)
            .map_err(|e| e.to_string())
            .and_then(|c| Rules::build(&c));
        match loaded {
            Ok(rules) => {
                tracing::info!(
                    routes = rules.routes.len(),
                    processors = rules.processors.len(),
                    "proxy routes reloaded"
                );
                state.replace(rules);
            }
            Err(e) => {
                let e = tokengate_core::redact_pans(&e).into_owned();
                tracing::error!(error = %e, "proxy configuration not reloaded; the previous routes stay in force");
            }
        }
    }
}
