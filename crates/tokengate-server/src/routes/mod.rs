//! HTTP handlers, one module per API area.

pub mod acme;
pub mod api_keys;
pub mod audit;
pub mod health;
pub mod keys;
pub mod tokens;
