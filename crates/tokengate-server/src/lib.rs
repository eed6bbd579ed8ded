//! tokengate's HTTPS server.
//!
//! - [`app`] builds the axum router: routes, and the layers every response
//!   passes through (request id, security headers, metrics, panic guard).
//! - [`routes`]: one module per API area; handlers only translate between
//!   HTTP and [`tokengate_vault::Vault`], which holds the rules.
//! - [`extract`]: the JSON body and API-key extractors. JSON errors are
//!   rebuilt from the error's position and kind so that no value the caller
//!   sent (a card number, a CVC) is ever echoed.
//! - [`error`]: [`ApiError`], the single error body and status mapping.
//! - [`tls`] and [`serve`]: rustls configuration (SNI resolver from the
//!   certificate store, hot reload, expiry watch) and the accept loops (HTTPS,
//!   and the optional plain-HTTP redirect listener).
//! - [`acme`]: ordering and renewing certificates (HTTP-01).
//! - [`proxy`]: the edge proxy listener (inbound tokenizing routes, the
//!   outbound relay toward processors).
//! - [`drain`]: audit drains (syslog over TLS, HTTPS) delivering from a
//!   durable cursor.
//! - [`edge`]: client address and scheme behind a proxy, redirect to HTTPS.
//! - [`logging`]: the tracing subscriber whose writer masks card numbers.
//! - [`webhooks`]: `POST /webhooks/{source}` (verify, de-duplicate, store
//!   durably) and at-least-once delivery to the app and NATS JetStream.
//! - [`config`]: file + environment configuration, validated before binding.
//! - [`sealed`]: starting sealed (custodian shares), unseal and seal.

#![forbid(unsafe_code)]

pub mod acme;
pub mod app;
pub mod config;
pub mod drain;
pub mod edge;
pub mod error;
pub mod extract;
pub mod logging;
pub mod openapi;
pub mod proxy;
pub mod routes;
pub mod run;
pub mod sealed;
pub mod serve;
pub mod tls;
pub mod webhooks;

pub use app::{AppState, router};
pub use config::Config;
pub use error::ApiError;
