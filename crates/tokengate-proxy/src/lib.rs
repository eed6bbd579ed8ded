//! The edge proxy's rules, without I/O: which parts of a body hold card data
//! ([`body`], with [`json`] and [`jsonpath`]), the route and processor
//! configuration ([`config`]), and the egress address policy ([`egress`]).
//! The HTTP side (listener, upstream calls, vault calls) lives in
//! `tokengate-server`'s `proxy` module.

#![forbid(unsafe_code)]

pub mod body;
pub mod config;
pub mod egress;
pub mod json;
pub mod jsonpath;

pub use body::{BodyKind, Enc, Hit, Part, Selector, What};
pub use config::{OutboundConfig, ProxyConfig};
pub use tokengate_scan::Detector;

/// The safety-net detector: any card number by Luhn and IIN ranges,
/// test cards and low-entropy numbers included (a test card sent to a
/// production route is still card-shaped data that must not pass).
pub fn safety_net() -> tokengate_scan::Detector {
    tokengate_scan::Detector::new(tokengate_scan::DetectorConfig {
        include_test_cards: true,
        include_low_entropy: true,
        ..tokengate_scan::DetectorConfig::default()
    })
}
