//! One audit event: who did what to which token, with what result.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tokengate_core::{contains_pan_like, redact_pans};

/// Free text from outside (a user agent, a reason). Always PAN-redacted and
/// at most [`SafeText::MAX`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SafeText(String);

impl SafeText {
    pub const MAX: usize = 256;

    pub fn new(s: &str) -> SafeText {
        let red = redact_pans(s);
        let mut end = red.len().min(Self::MAX);
        while !red.is_char_boundary(end) {
            end -= 1;
        }
        // Control characters would let a caller forge lines in text exports.
        SafeText(
            red[..end]
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SafeText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(SafeText::new(&s))
    }
}

/// An identifier: API key id, request id, token, error code. ASCII letters,
/// digits and `_ - . :` only, 1–128 bytes, and never something that could be
/// a card number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    pub const MAX: usize = 128;

    pub fn new(s: &str) -> Option<Ident> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
            && !contains_pan_like(s);
        ok.then(|| Ident(s.to_owned()))
    }

    /// For compile-time-known identifiers ("system", codes).
    pub fn from_static(s: &'static str) -> Ident {
        Ident::new(s).unwrap_or_else(|| Ident("invalid".to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ident::new(&s).ok_or_else(|| serde::de::Error::custom("invalid identifier"))
    }
}

/// What happened. Stable snake_case names are part of the audit format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    TokenCreate,
    TokenRead,
    TokenReveal,
    TokenDelete,
    TokenSearch,
    CvcDelete,
    CvcExpire,
    ApiKeyCreate,
    ApiKeyRevoke,
    ApiKeyList,
    AuthFailure,
    AccessDenied,
    ServerStart,
    Init,
    /// A key-ring version was created (e.g. the `tls_key` KEK on upgrade).
    KeyCreate,
    /// A TLS certificate (and its sealed private key) entered the store.
    CertAdd,
    /// A stored certificate was replaced (renewal, new key).
    CertUpdate,
    /// A certificate was removed; its domains lost it.
    CertRemove,
    DomainAdd,
    DomainUpdate,
    DomainRemove,
    /// A certificate crossed an expiry warning threshold (30/14/7 days).
    CertExpiryWarning,
    /// A domain was put under ACME management.
    AcmeEnable,
    /// A domain was taken out of ACME management.
    AcmeDisable,
    /// An ACME order (issuance or renewal) finished, successfully or not.
    AcmeOrder,
    /// Someone read or exported the audit log (PCI DSS 10.2.1.3).
    AuditRead,
    /// Something an operator should look at now (detail says what).
    Alert,
    /// A key id or client address locked out after failed authentications.
    Lockout,
    /// Audit records past retention archived and deleted.
    AuditPrune,
    /// A drain's delivery cursor removed (the drain is gone for good), so
    /// that it no longer holds back pruning.
    AuditDrainForget,
    /// The edge proxy refused a request before it reached the app (card
    /// data outside the configured fields, an invalid card field).
    ProxyReject,
    /// The app or a processor behind the edge proxy failed (down, timeout).
    ProxyUpstreamError,
    /// A call toward a destination that is not an allowed processor.
    EgressDenied,
    /// A webhook was refused (bad signature, stale or future timestamp,
    /// unknown source, replay of a stored event, card data it cannot mask).
    WebhookReject,
    /// A webhook event was dead-lettered for a delivery target.
    WebhookDeadLetter,
    /// Dead-lettered webhook events were queued again (`webhooks dlq replay`).
    WebhookReplay,
    /// A new key version became the active one for its purpose.
    KeyRotate,
    /// A re-keying job (DEK rewrap or re-fingerprint) started or finished.
    KeyRewrap,
    /// The minimum decryption version of a purpose changed.
    KeyMinDecryption,
    /// A key version was destroyed (its wrapped key erased).
    KeyDestroy,
    /// Key-ring versions were listed.
    KeyList,
    /// Custodians unsealed the vault (detail: refused shares while sealed).
    Unseal,
    /// An administrator sealed the vault.
    Seal,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::TokenCreate => "token_create",
            Action::TokenRead => "token_read",
            Action::TokenReveal => "token_reveal",
            Action::TokenDelete => "token_delete",
            Action::TokenSearch => "token_search",
            Action::CvcDelete => "cvc_delete",
            Action::CvcExpire => "cvc_expire",
            Action::ApiKeyCreate => "api_key_create",
            Action::ApiKeyRevoke => "api_key_revoke",
            Action::ApiKeyList => "api_key_list",
            Action::AuthFailure => "auth_failure",
            Action::AccessDenied => "access_denied",
            Action::ServerStart => "server_start",
            Action::Init => "init",
            Action::KeyCreate => "key_create",
            Action::CertAdd => "cert_add",
            Action::CertUpdate => "cert_update",
            Action::CertRemove => "cert_remove",
            Action::DomainAdd => "domain_add",
            Action::DomainUpdate => "domain_update",
            Action::DomainRemove => "domain_remove",
            Action::CertExpiryWarning => "cert_expiry_warning",
            Action::AcmeEnable => "acme_enable",
            Action::AcmeDisable => "acme_disable",
            Action::AcmeOrder => "acme_order",
            Action::AuditRead => "audit_read",
            Action::Alert => "alert",
            Action::Lockout => "lockout",
            Action::AuditPrune => "audit_prune",
            Action::AuditDrainForget => "audit_drain_forget",
            Action::ProxyReject => "proxy_reject",
            Action::ProxyUpstreamError => "proxy_upstream_error",
            Action::EgressDenied => "egress_denied",
            Action::WebhookReject => "webhook_reject",
            Action::WebhookDeadLetter => "webhook_dead_letter",
            Action::WebhookReplay => "webhook_replay",
            Action::KeyRotate => "key_rotate",
            Action::KeyRewrap => "key_rewrap",
            Action::KeyMinDecryption => "key_min_decryption",
            Action::KeyDestroy => "key_destroy",
            Action::KeyList => "key_list",
            Action::Unseal => "unseal",
            Action::Seal => "seal",
        }
    }
}

/// Success, or failure with a stable reason code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure(Ident),
}

impl Outcome {
    pub fn failure(code: &'static str) -> Outcome {
        Outcome::Failure(Ident::from_static(code))
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

/// One audit event. Field order is part of the hashed encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix milliseconds.
    pub ts_ms: i64,
    pub action: Action,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// API key id, `system`, or `anonymous`.
    pub actor: Ident,
    pub tenant: Option<Ident>,
    /// The token acted on (tokens are never PANs: they fail Luhn or are opaque).
    pub token: Option<Ident>,
    /// Another object acted on (an API key id).
    pub subject: Option<Ident>,
    pub request_id: Option<Ident>,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<SafeText>,
    /// Extra redacted detail (e.g. "count=3").
    pub detail: Option<SafeText>,
    /// `client_ip` stored keyed-hashed instead (config `audit_hmac_fields`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip_hmac: Option<HmacValue>,
    /// `user_agent` stored keyed-hashed instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent_hmac: Option<HmacValue>,
}

/// A field value replaced by its keyed hash: `hmac-sha256-v<N>:<base32>`
/// (HMAC-SHA256 under version N of the vault's `audit` key). The same value
/// always gives the same text, so records can be correlated
/// (`tokengate audit hash VALUE`) without storing the value. Lowercase
/// base32 keeps it from ever looking like a card number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HmacValue(String);

impl HmacValue {
    pub fn new(key_version: u32, mac: &[u8; 32]) -> HmacValue {
        HmacValue(format!(
            "hmac-sha256-v{key_version}:{}",
            data_encoding::BASE32_NOPAD.encode(mac).to_ascii_lowercase()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parse(s: &str) -> Option<HmacValue> {
        let rest = s.strip_prefix("hmac-sha256-v")?;
        let (v, b32) = rest.split_once(':')?;
        let ok = v.parse::<u32>().is_ok()
            && b32.len() == 52
            && b32
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
        ok.then(|| HmacValue(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for HmacValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HmacValue::parse(&s).ok_or_else(|| serde::de::Error::custom("not an hmac-sha256 value"))
    }
}

impl AuditEvent {
    /// A new event with only the required fields set.
    pub fn new(ts_ms: i64, action: Action, outcome: Outcome, actor: Ident) -> AuditEvent {
        AuditEvent {
            ts_ms,
            action,
            outcome,
            actor,
            tenant: None,
            token: None,
            subject: None,
            request_id: None,
            client_ip: None,
            user_agent: None,
            detail: None,
            client_ip_hmac: None,
            user_agent_hmac: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_values_have_one_shape() {
        let v = HmacValue::new(2, &[7u8; 32]);
        assert!(v.as_str().starts_with("hmac-sha256-v2:"));
        assert!(!contains_pan_like(v.as_str()));
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<HmacValue>(&json).unwrap(), v);
        for bad in [
            "\"203.0.113.7\"",
            "\"hmac-sha256-v1:short\"",
            "\"hmac-sha256-vx:aaaa\"",
        ] {
            assert!(serde_json::from_str::<HmacValue>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn safe_text_redacts_and_truncates() {
        let t = SafeText::new("curl/8 4111111111111111\n");
        assert_eq!(t.as_str(), "curl/8 ************1111?");
        assert_eq!(SafeText::new(&"é".repeat(300)).as_str().len(), 256);
    }

    #[test]
    fn ident_refuses_pans_and_odd_chars() {
        assert!(Ident::new("4111111111111111").is_none());
        assert!(Ident::new("req-4111111111111111").is_none());
        assert!(Ident::new("a b").is_none());
        assert!(Ident::new("").is_none());
        assert!(Ident::new("tok_abc").is_some());
        assert!(
            Ident::new("4111111111111112").is_some(),
            "a bin6_last4 token is not a PAN"
        );
    }

    #[test]
    fn json_round_trip() {
        let mut e = AuditEvent::new(
            1,
            Action::TokenReveal,
            Outcome::failure("token_not_found"),
            Ident::from_static("key_1"),
        );
        e.client_ip = Some("127.0.0.1".parse().unwrap());
        let j = serde_json::to_string(&e).unwrap();
        assert!(
            j.contains(r#""outcome":"failure","reason":"token_not_found""#),
            "{j}"
        );
        let back: AuditEvent = serde_json::from_str(&j).unwrap();
        assert_eq!(back, e);
    }
}
