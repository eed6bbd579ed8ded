//! API keys, roles, authentication and authorization, and the audit event
//! builder that every operation uses.
//!
//! An API key looks like `tg_<16 id chars>_<32 secret chars>` (lower-case
//! base32; 80-bit id, 160-bit secret). Only `HMAC-SHA256(api_key KEK, key)`
//! is stored; verification compares in constant time.

use std::net::IpAddr;
use std::time::Instant;

use subtle::ConstantTimeEq;
use tokengate_audit::{Action, AuditEvent, Ident, Outcome, SafeText};
use tokengate_crypto::KeyPurpose;
use tokengate_store::{ApiKeyRow, Job, Op};
use zeroize::Zeroizing;

use crate::clock::{now_ms, rfc3339};
use crate::error::VaultError;
use crate::open::Vault;

/// What an API key may do. A key holds one or more roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Manage API keys (and, later, keys and certificates). No card data.
    Admin,
    /// Create tokens, read masked metadata, search, delete.
    Tokenize,
    /// Read card numbers back.
    Reveal,
    /// Read the audit trail.
    Auditor,
    /// Send tokens through the outbound relay to configured processors,
    /// which receive the card numbers; never sees a card number itself.
    Relay,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Tokenize,
        Role::Reveal,
        Role::Auditor,
        Role::Relay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Tokenize => "tokenize",
            Role::Reveal => "reveal",
            Role::Auditor => "auditor",
            Role::Relay => "relay",
        }
    }

    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Facts about the request, recorded in audit events.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: Option<Ident>,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<SafeText>,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: Ident,
    pub tenant: String,
    pub roles: Vec<Role>,
    pub meta: RequestMeta,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

pub(crate) struct CachedKey {
    /// Shared, so that a request takes a reference, not a copy.
    row: std::sync::Arc<ApiKeyRow>,
    fetched: Instant,
}

/// A newly created API key. `secret` is shown once and never stored.
#[derive(Debug)]
pub struct NewApiKey {
    pub info: ApiKeyInfo,
    pub secret: Zeroizing<String>,
}

/// An API key as listed (no secret, no hash).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<&ApiKeyRow> for ApiKeyInfo {
    fn from(r: &ApiKeyRow) -> Self {
        ApiKeyInfo {
            id: r.id.clone(),
            name: r.name.clone(),
            roles: r.roles.clone(),
            created_at: rfc3339(r.created_at),
            revoked_at: r.revoked_at.map(rfc3339),
        }
    }
}

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    out
}

/// Split `tg_<id>_<secret>` into the key id (`key_<id>`) without trusting it.
fn parse_key(presented: &str) -> Option<String> {
    let rest = presented.strip_prefix("tg_")?;
    let (id, secret) = rest.split_once('_')?;
    // The alphabet of `B32`: a–z and 2–7.
    let ok = |s: &str, n| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    };
    (ok(id, 16) && ok(secret, 32)).then(|| format!("key_{id}"))
}

/// Build an audit event for `action` by `actor` with the request facts.
pub(crate) fn event(
    action: Action,
    outcome: Outcome,
    actor: &Ident,
    tenant: Option<&str>,
    meta: &RequestMeta,
) -> AuditEvent {
    let mut e = AuditEvent::new(now_ms(), action, outcome, actor.clone());
    e.tenant = tenant.and_then(Ident::new);
    e.request_id = meta.request_id.clone();
    e.client_ip = meta.client_ip;
    e.user_agent = meta.user_agent.clone();
    e
}

impl Vault {
    /// Commit audit events that change no data (a read, a refusal). Fails
    /// closed: when they cannot be written the caller must refuse the
    /// operation with `audit_unavailable`.
    pub(crate) async fn record(&self, events: Vec<AuditEvent>) -> Result<(), VaultError> {
        match self
            .committer
            .submit(Job {
                events,
                ..Job::default()
            })
            .await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(VaultError::AuditUnavailable),
        }
    }

    fn key_hash(&self, version: u32, presented: &str) -> Result<[u8; 32], VaultError> {
        Ok(self.ring().hmac(
            KeyPurpose::ApiKey,
            version,
            &[b"api-key", presented.as_bytes()],
        )?)
    }

    async fn lookup_key(&self, id: &str) -> Result<Option<std::sync::Arc<ApiKeyRow>>, VaultError> {
        if let Ok(cache) = self.key_cache.read()
            && let Some(c) = cache.get(id)
            && c.fetched.elapsed() < self.config.api_key_cache_ttl
        {
            return Ok(Some(std::sync::Arc::clone(&c.row)));
        }
        let row = self.store.get_api_key(id).await?.map(std::sync::Arc::new);
        if let (Some(r), Ok(mut cache)) = (&row, self.key_cache.write()) {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(
                id.to_owned(),
                CachedKey {
                    row: std::sync::Arc::clone(r),
                    fetched: Instant::now(),
                },
            );
        }
        Ok(row)
    }

    /// Authenticate a bearer key. A failure is audited (and refused if the
    /// audit cannot be written: `audit_unavailable`).
    pub async fn authenticate(
        &self,
        presented: Option<&str>,
        meta: RequestMeta,
    ) -> Result<Caller, VaultError> {
        use crate::lockout::Subject;
        let key_subject = presented.and_then(parse_key).map(Subject::Key);
        let subjects: Vec<Subject> = key_subject
            .iter()
            .cloned()
            .chain(meta.client_ip.map(Subject::Ip))
            .collect();
        let now = std::time::Instant::now();
        if let Some(retry_after_secs) = self.lockout.locked(&subjects, now) {
            let ev = event(
                Action::AuthFailure,
                Outcome::failure("locked_out"),
                &Ident::from_static("anonymous"),
                None,
                &meta,
            );
            self.record(vec![ev]).await?;
            return Err(VaultError::LockedOut { retry_after_secs });
        }
        let attempt = async {
            let presented = presented?;
            let id = parse_key(presented)?;
            let row = self.lookup_key(&id).await.ok()??;
            if row.revoked_at.is_some() {
                return None;
            }
            let hash = self.key_hash(row.key_version, presented).ok()?;
            if !bool::from(hash.ct_eq(row.hash.as_slice())) {
                return None;
            }
            let roles = row
                .roles
                .iter()
                .filter_map(|r| Role::from_name(r))
                .collect();
            Some((Ident::new(&row.id)?, row.tenant.clone(), roles))
        };
        if let Some((key_id, tenant, roles)) = attempt.await {
            if let Some(k) = &key_subject {
                self.lockout.succeed(k);
            }
            return Ok(Caller {
                key_id,
                tenant,
                roles,
                meta,
            });
        }
        let reason = if presented.is_none() {
            "missing_api_key"
        } else {
            "invalid_api_key"
        };
        let mut events = vec![event(
            Action::AuthFailure,
            Outcome::failure(reason),
            &Ident::from_static("anonymous"),
            None,
            &meta,
        )];
        // Lockouts and their alerts go in the same commit as the failure
        // that caused them.
        for locked in self.lockout.fail(&subjects, now) {
            let mut lock = event(
                Action::Lockout,
                Outcome::Success,
                &Ident::from_static("system"),
                None,
                &meta,
            );
            lock.detail = Some(SafeText::new(&format!(
                "{locked} locked for {} s after repeated failed authentications",
                self.config.lockout.duration.as_secs()
            )));
            let mut alert = event(
                Action::Alert,
                Outcome::Success,
                &Ident::from_static("system"),
                None,
                &meta,
            );
            alert.detail = Some(SafeText::new(&format!(
                "kind=failed_auth_threshold {locked}"
            )));
            events.push(lock);
            events.push(alert);
            tracing::warn!(subject = %locked, "locked out after repeated failed authentications");
        }
        self.record(events).await?;
        Err(VaultError::Unauthenticated)
    }

    /// Require `role`; audit and refuse otherwise.
    pub async fn require(
        &self,
        caller: &Caller,
        role: Role,
        action: Action,
    ) -> Result<(), VaultError> {
        if caller.has(role) {
            return Ok(());
        }
        let mut ev = event(
            Action::AccessDenied,
            Outcome::failure("forbidden"),
            &caller.key_id,
            Some(&caller.tenant),
            &caller.meta,
        );
        ev.detail = Some(SafeText::new(&format!(
            "attempted={} required={}",
            action.as_str(),
            role.as_str()
        )));
        self.record(vec![ev]).await?;
        Err(VaultError::Forbidden {
            required: role.as_str(),
        })
    }

    /// Create an API key; the secret is returned once.
    pub async fn create_api_key(
        &self,
        caller: &Caller,
        name: &str,
        roles: &[String],
    ) -> Result<NewApiKey, VaultError> {
        self.require(caller, Role::Admin, Action::ApiKeyCreate)
            .await?;
        let name = name.trim();
        if name.is_empty()
            || name.len() > 100
            || name.chars().any(char::is_control)
            || tokengate_core::contains_pan_like(name)
        {
            return Err(VaultError::invalid(
                "invalid_name",
                "name must be 1-100 printable characters",
            ));
        }
        if roles.is_empty() {
            return Err(VaultError::invalid(
                "invalid_roles",
                "roles must name at least one of: admin, tokenize, reveal, auditor",
            ));
        }
        let mut parsed: Vec<Role> = Vec::new();
        for r in roles {
            let role = Role::from_name(r).ok_or_else(|| {
                VaultError::invalid(
                    "invalid_roles",
                    "unknown role; use admin, tokenize, reveal or auditor",
                )
            })?;
            if !parsed.contains(&role) {
                parsed.push(role);
            }
        }
        self.insert_api_key(
            Some(caller),
            &caller.tenant.clone(),
            name,
            &parsed,
            &caller.meta,
        )
        .await
    }

    /// Insert a key (also used by `init` for the first admin key, `caller` None).
    pub(crate) async fn insert_api_key(
        &self,
        caller: Option<&Caller>,
        tenant: &str,
        name: &str,
        roles: &[Role],
        meta: &RequestMeta,
    ) -> Result<NewApiKey, VaultError> {
        let id_bytes: [u8; 10] = tokengate_crypto::random::bytes()?;
        let secret_bytes: [u8; 20] = tokengate_crypto::random::bytes()?;
        let id_part = base32(&id_bytes);
        let secret = Zeroizing::new(format!("tg_{id_part}_{}", base32(&secret_bytes)));
        let version = self.ring().active_version(KeyPurpose::ApiKey)?;
        let now = now_ms();
        let row = ApiKeyRow {
            id: format!("key_{id_part}"),
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            key_version: version,
            hash: self.key_hash(version, &secret)?.to_vec(),
            created_at: now,
            revoked_at: None,
        };
        let actor = caller
            .map(|c| c.key_id.clone())
            .unwrap_or_else(|| Ident::from_static("system"));
        let mut ev = event(
            Action::ApiKeyCreate,
            Outcome::Success,
            &actor,
            Some(tenant),
            meta,
        );
        ev.subject = Ident::new(&row.id);
        ev.detail = Some(SafeText::new(&format!("roles={}", row.roles.join(","))));
        let info = ApiKeyInfo::from(&row);
        self.committer
            .submit(Job {
                ops: vec![Op::InsertApiKey(row)],
                events: vec![ev],
                ..Job::default()
            })
            .await?
            .map_err(|_| VaultError::Internal("api key id collision".into()))?;
        Ok(NewApiKey { info, secret })
    }

    pub async fn list_api_keys(&self, caller: &Caller) -> Result<Vec<ApiKeyInfo>, VaultError> {
        self.require(caller, Role::Admin, Action::ApiKeyList)
            .await?;
        let rows = self.store.list_api_keys(&caller.tenant).await?;
        Ok(rows.iter().map(ApiKeyInfo::from).collect())
    }

    /// Revoke a key at once (on this node; other nodes within the cache TTL).
    pub async fn revoke_api_key(&self, caller: &Caller, id: &str) -> Result<(), VaultError> {
        self.require(caller, Role::Admin, Action::ApiKeyRevoke)
            .await?;
        let subject = Ident::new(id).ok_or(VaultError::ApiKeyNotFound)?;
        let mut ev = event(
            Action::ApiKeyRevoke,
            Outcome::Success,
            &caller.key_id,
            Some(&caller.tenant),
            &caller.meta,
        );
        ev.subject = Some(subject.clone());
        let job = Job {
            ops: vec![Op::RevokeApiKey {
                tenant: caller.tenant.clone(),
                id: id.to_owned(),
                now: now_ms(),
            }],
            events: vec![],
            events_if_affected: vec![(0, ev)],
        };
        let out = self
            .committer
            .submit(job)
            .await?
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        if let Ok(mut cache) = self.key_cache.write() {
            cache.remove(id);
        }
        if out.first().map(|o| o.affected()) == Some(1) {
            Ok(())
        } else {
            Err(VaultError::ApiKeyNotFound)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_format() {
        assert_eq!(base32(&[0xff; 10]).len(), 16);
        assert_eq!(base32(&[0xff; 20]).len(), 32);
        let k = format!("tg_{}_{}", base32(&[1; 10]), base32(&[2; 20]));
        assert_eq!(
            parse_key(&k).as_deref(),
            Some(format!("key_{}", base32(&[1; 10])).as_str())
        );
        assert!(parse_key("tg_short_x").is_none());
        assert!(parse_key("Bearer x").is_none());
    }
}
