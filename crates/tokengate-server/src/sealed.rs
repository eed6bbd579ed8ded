//! Sealed start (custodians root-key provider): the server listens at once
//! but holds no root key, so no card data can be touched. Card-data routes
//! answer 503 `sealed`. Custodians send their shares to `POST
//! /v1/sys/unseal` (no API key: the share is the credential; rate-limited);
//! with K valid shares the root key is rebuilt in memory, the vault opens,
//! its certificates replace the temporary one, the background tasks start
//! and the full API is served. `POST /v1/sys/seal` (admin) drops it all
//! again.
//!
//! While sealed, the TLS listener uses a self-signed certificate generated
//! at start (its SHA-256 fingerprint is logged, and `tokengate unseal --pin`
//! checks it), because the stored certificates' keys are themselves sealed.
//! Refused shares are logged (never the share) and counted; the count goes
//! into the `unseal` audit record, written once the audit key is available.
//!
//! Invariant: no share is ever written anywhere; shares live in the
//! [`Unsealer`] (zeroizing) until the key is rebuilt or they are refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokengate_audit::{Action, AuditEvent, Ident, Outcome, SafeText};
use tokengate_crypto::custodians::{CustodianSetup, ShareError, Unsealer};
use tokengate_tls::{KeyFormat, PrivateKey, ReloadableResolver, SniResolver};
use tokengate_vault::{Caller, Role, Vault};
use tokio::task::JoinHandle;
use tower::ServiceExt;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::config::Config;
use crate::error::ApiError;
use crate::extract::Authed;

/// Unseal attempts accepted per minute (all clients together).
const UNSEAL_ATTEMPTS_PER_MINUTE: u32 = 30;

/// `POST /v1/sys/unseal` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealBody {
    /// One custodian share (`tgs1-…`).
    pub share: String,
}

impl std::fmt::Debug for UnsealBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsealBody([REDACTED])")
    }
}

/// Seal status.
#[derive(Debug, Serialize, ToSchema)]
pub struct SealStatus {
    pub sealed: bool,
    /// Valid shares entered so far.
    pub progress: u8,
    /// Shares needed.
    pub threshold: u8,
}

/// The vault and its tasks once unsealed.
struct Active {
    vault: Arc<Vault>,
    tasks: Vec<JoinHandle<()>>,
}

/// Everything the sealed/unsealed switch needs.
pub struct SealState {
    config: Config,
    threshold: u8,
    unsealer: Mutex<Unsealer>,
    refused: AtomicU64,
    window: Mutex<(Instant, u32)>,
    /// The router every connection is served by (swapped on (un)seal).
    current: Arc<RwLock<Router>>,
    resolver: Arc<ReloadableResolver>,
    sealed_resolver: SniResolver,
    active: tokio::sync::Mutex<Option<Active>>,
    /// Invariant: true exactly when `active` is `None`.
    sealed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SealState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealState")
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

/// A self-signed certificate for the sealed listener, and its SHA-256
/// fingerprint (hex).
pub fn sealed_resolver() -> Result<(SniResolver, String), crate::tls::TlsError> {
    let err = |e: String| crate::tls::TlsError(format!("sealed-mode certificate: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| err(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(|e| err(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tokengate (sealed)");
    let cert = params.self_signed(&key).map_err(|e| err(e.to_string()))?;
    let der = cert.der().clone();
    let fingerprint = data_encoding::HEXLOWER
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref()).as_ref());
    let pk = PrivateKey::from_der(
        KeyFormat::Pkcs8,
        zeroize::Zeroizing::new(key.serialize_der()),
    )
    .ok_or_else(|| err("unusable key".into()))?;
    let mut r = SniResolver::new();
    r.add_certificate("sealed", vec![der], &pk)
        .map_err(|e| err(e.to_string()))?;
    r.set_default("sealed");
    Ok((r, fingerprint))
}

/// A router that forwards every request to whatever `current` holds.
pub fn switch_router(current: Arc<RwLock<Router>>) -> Router {
    Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let router = match current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        router.oneshot(req)
    }))
}

fn share_error(e: &ShareError) -> ApiError {
    let code = match e {
        ShareError::Format => "invalid_share",
        ShareError::Checksum => "share_checksum_mismatch",
        ShareError::Unknown(_) => "share_unknown",
        ShareError::Duplicate(_) => "share_duplicate",
        ShareError::WrongKey => "share_wrong_key",
        ShareError::Setup(_) => "invalid_share",
    };
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
}

fn sealed_error() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "sealed",
        "the vault is sealed: custodians must enter their shares (`tokengate unseal`)",
    )
}

impl SealState {
    pub fn new(
        config: Config,
        setup: CustodianSetup,
        current: Arc<RwLock<Router>>,
        resolver: Arc<ReloadableResolver>,
        sealed_resolver: SniResolver,
    ) -> Arc<SealState> {
        let state = Arc::new(SealState {
            config,
            threshold: setup.threshold,
            unsealer: Mutex::new(Unsealer::new(setup)),
            refused: AtomicU64::new(0),
            window: Mutex::new((Instant::now(), 0)),
            current,
            resolver,
            sealed_resolver,
            active: tokio::sync::Mutex::new(None),
            sealed: std::sync::atomic::AtomicBool::new(true),
        });
        state.show(sealed_router(state.clone()));
        state
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::SeqCst)
    }

    fn show(&self, router: Router) {
        match self.current.write() {
            Ok(mut g) => *g = router,
            Err(p) => *p.into_inner() = router,
        }
    }

    fn status(&self) -> SealStatus {
        let progress = self.unsealer.lock().map(|u| u.progress()).unwrap_or(0);
        SealStatus {
            sealed: self.is_sealed(),
            progress: if self.is_sealed() {
                progress
            } else {
                self.threshold
            },
            threshold: self.threshold,
        }
    }

    /// The open vault, when unsealed.
    pub async fn vault(&self) -> Option<Arc<Vault>> {
        self.active.lock().await.as_ref().map(|a| a.vault.clone())
    }

    fn allow_attempt(&self) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        if w.0.elapsed().as_secs() >= 60 {
            *w = (Instant::now(), 0);
        }
        w.1 += 1;
        w.1 <= UNSEAL_ATTEMPTS_PER_MINUTE
    }

    async fn unseal(self: &Arc<Self>, share: &str) -> Result<SealStatus, ApiError> {
        if !self.is_sealed() {
            return Ok(self.status());
        }
        if !self.allow_attempt() {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_unseal_attempts",
                format!(
                    "at most {UNSEAL_ATTEMPTS_PER_MINUTE} unseal attempts a minute; wait and retry"
                ),
            ));
        }
        let added = match self.unsealer.lock() {
            Ok(mut u) => u.add(share),
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal error",
                ));
            }
        };
        let root = match added {
            Ok(None) => return Ok(self.status()),
            Ok(Some(root)) => root,
            Err(e) => {
                self.refused.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(reason = %e, "unseal: share refused");
                return Err(share_error(&e));
            }
        };
        let mut active = self.active.lock().await;
        if active.is_some() {
            return Ok(self.status());
        }
        let vault = match Vault::open_with_root(
            crate::run::vault_config(&self.config),
            Arc::new(root),
        )
        .await
        {
            Ok(v) => Arc::new(v),
            Err(e) => {
                tracing::error!(error = %e, "unseal: the vault did not open; still sealed");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unseal_failed",
                    "the shares were right but the vault did not open (see the server log); enter the shares again",
                ));
            }
        };
        let services =
            crate::run::services(&vault, &self.config, &self.resolver, Some(self.clone()))
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "unseal: services did not start; still sealed");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unseal_failed",
                        "the vault opened but its services did not start (see the server log)",
                    )
                })?;
        let mut ev = AuditEvent::new(
            tokengate_vault::clock::now_ms(),
            Action::Unseal,
            Outcome::Success,
            Ident::from_static("custodians"),
        );
        ev.detail = Some(SafeText::new(&format!(
            "threshold={} refused_shares_while_sealed={}",
            self.threshold,
            self.refused.swap(0, Ordering::SeqCst)
        )));
        if let Err(e) = vault.record_system(vec![ev]).await {
            tracing::error!(
                code = e.code(),
                "unseal: audit record not written; staying sealed"
            );
            services.tasks.iter().for_each(JoinHandle::abort);
            return Err(e.into());
        }
        self.show(services.app);
        self.sealed.store(false, Ordering::SeqCst);
        *active = Some(Active {
            vault,
            tasks: services.tasks,
        });
        tracing::info!("unsealed: serving");
        Ok(self.status())
    }

    /// Seal again: drop the vault (and with it the root key), stop the
    /// background tasks, go back to the temporary certificate.
    pub async fn seal(self: &Arc<Self>) {
        let mut active = self.active.lock().await;
        if let Some(a) = active.take() {
            self.sealed.store(true, Ordering::SeqCst);
            self.show(sealed_router(self.clone()));
            self.resolver.replace(self.sealed_resolver.clone());
            if let Ok(mut u) = self.unsealer.lock() {
                u.reset();
            }
            a.tasks.iter().for_each(JoinHandle::abort);
            a.vault.store().close().await;
            tracing::warn!("sealed");
        }
    }

    /// Stop the background tasks (server shutdown).
    pub async fn stop_tasks(&self) {
        if let Some(a) = self.active.lock().await.as_ref() {
            a.tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

/// The routes served while sealed.
fn sealed_router(state: Arc<SealState>) -> Router {
    let api = Router::new()
        .route("/v1/sys/unseal", post(unseal_sealed))
        .route("/v1/sys/seal-status", get(status_sealed))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { sealed_error() }))
        .fallback(|| async { sealed_error() })
        .with_state(state.clone());
    let edge = crate::edge::EdgeConfig {
        behind_proxy: state.config.behind_proxy,
        trusted_proxies: state.config.trusted_proxy_cidrs().unwrap_or_default(),
        https_port: state
            .config
            .public_https_port
            .unwrap_or_else(|| state.config.listen_addr().port()),
    };
    crate::app::harden(api, edge)
}

fn parse_unseal(body: &Bytes) -> Result<UnsealBody, ApiError> {
    serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected {\"share\": \"tgs1-…\"}",
        )
    })
}

async fn unseal_sealed(State(s): State<Arc<SealState>>, body: Bytes) -> Response {
    let result = match parse_unseal(&body) {
        Ok(b) => s.unseal(&b.share).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(status) => axum::Json(status).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn status_sealed(State(s): State<Arc<SealState>>) -> axum::Json<SealStatus> {
    axum::Json(s.status())
}

/// Enter one custodian share (no API key: the share is the credential).
#[utoipa::path(post, path = "/v1/sys/unseal", tag = "operations", request_body = UnsealBody,
    responses((status = 200, body = SealStatus),
        (status = 422, description = "invalid_share, share_checksum_mismatch, share_unknown, share_duplicate, share_wrong_key, seal_unsupported", body = crate::error::ErrorBody),
        (status = 429, description = "too_many_unseal_attempts", body = crate::error::ErrorBody)))]
pub async fn unseal(
    State(s): State<AppState>,
    body: Bytes,
) -> Result<axum::Json<SealStatus>, ApiError> {
    let seal = s.seal.as_ref().ok_or_else(not_sealable)?;
    let b = parse_unseal(&body)?;
    seal.unseal(&b.share).await.map(axum::Json)
}

/// Whether the vault is sealed, and how many shares were entered.
#[utoipa::path(get, path = "/v1/sys/seal-status", tag = "operations",
    responses((status = 200, body = SealStatus)))]
pub async fn seal_status(State(s): State<AppState>) -> axum::Json<SealStatus> {
    match &s.seal {
        Some(seal) => axum::Json(seal.status()),
        None => axum::Json(SealStatus {
            sealed: false,
            progress: 0,
            threshold: 0,
        }),
    }
}

fn not_sealable() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "seal_unsupported",
        "this data directory uses the file root-key provider, which cannot be sealed; use `init --custodians`",
    )
}

/// Seal the vault (role admin): the root key is dropped from memory.
#[utoipa::path(post, path = "/v1/sys/seal", tag = "operations", security(("api_key" = [])),
    responses((status = 200, body = SealStatus), (status = 403, body = crate::error::ErrorBody),
        (status = 422, description = "seal_unsupported", body = crate::error::ErrorBody)))]
pub async fn seal(
    State(s): State<AppState>,
    Authed(caller): Authed,
) -> Result<axum::Json<SealStatus>, ApiError> {
    s.vault.require(&caller, Role::Admin, Action::Seal).await?;
    let seal = s.seal.as_ref().ok_or_else(not_sealable)?;
    record_seal(&s.vault, &caller).await?;
    seal.seal().await;
    Ok(axum::Json(seal.status()))
}

async fn record_seal(vault: &Vault, caller: &Caller) -> Result<(), ApiError> {
    let mut ev = AuditEvent::new(
        tokengate_vault::clock::now_ms(),
        Action::Seal,
        Outcome::Success,
        caller.key_id.clone(),
    );
    ev.request_id = caller.meta.request_id.clone();
    ev.client_ip = caller.meta.client_ip;
    vault.record_system(vec![ev]).await.map_err(ApiError::from)
}

/// Accepts exactly one server certificate: the one whose SHA-256 is the pin.
/// Handshake signatures are still verified with the certificate's key.
#[derive(Debug)]
struct PinnedCert {
    sha256: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity.as_ref());
        if subtle_eq(got.as_ref(), &self.sha256) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate does not match --pin".into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An HTTPS client for the `unseal` / `seal` commands. With `pin` (the
/// SHA-256 the sealed server logs) only that certificate is accepted;
/// without it only a loopback address is allowed, and any certificate.
pub fn sys_client(url: &str, pin: Option<&str>) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    let builder = match pin {
        Some(p) => {
            let sha256 = data_encoding::HEXLOWER_PERMISSIVE
                .decode(p.replace(':', "").as_bytes())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or("--pin must be the 64 hex digits of a SHA-256")?;
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCert { sha256, provider }))
                .with_no_client_auth();
            builder.use_preconfigured_tls(tls)
        }
        None => {
            let host = url
                .strip_prefix("https://")
                .and_then(|r| r.split('/').next())
                .unwrap_or("");
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
                return Err(format!(
                    "{url} is not a loopback address: give --pin with the certificate fingerprint the sealed server logged"
                ));
            }
            builder.danger_accept_invalid_certs(true)
        }
    };
    builder.build().map_err(|e| e.to_string())
}

/// What `POST /v1/sys/unseal` and `/v1/sys/seal` answered.
#[derive(Debug, Deserialize, Serialize)]
pub struct SealReply {
    pub sealed: bool,
    pub progress: u8,
    pub threshold: u8,
}

/// Send one share (`tokengate unseal`). Errors carry the server's code and
/// message, never the share.
pub async fn send_unseal(
    client: &reqwest::Client,
    url: &str,
    share: &str,
) -> Result<SealReply, (String, String)> {
    let resp = client
        .post(format!("{}/v1/sys/unseal", url.trim_end_matches('/')))
        .json(&serde_json::json!({ "share": share }))
        .send()
        .await
        .map_err(|e| ("unreachable".to_owned(), e.without_url().to_string()))?;
    reply(resp).await
}

/// Seal a running server (`tokengate seal`, role admin).
pub async fn send_seal(
    client: &reqwest::Client,
    url: &str,
    api_key: &str,
) -> Result<SealReply, (String, String)> {
    let resp = client
        .post(format!("{}/v1/sys/seal", url.trim_end_matches('/')))
        .bearer_auth(api_key)
        .send()
        .await
        .map_err(|e| ("unreachable".to_owned(), e.without_url().to_string()))?;
    reply(resp).await
}

async fn reply(resp: reqwest::Response) -> Result<SealReply, (String, String)> {
    if resp.status().is_success() {
        return resp
            .json()
            .await
            .map_err(|e| ("bad_reply".to_owned(), e.to_string()));
    }
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    Err((
        v["error"]["code"].as_str().unwrap_or("error").to_owned(),
        v["error"]["message"].as_str().unwrap_or("").to_owned(),
    ))
}
