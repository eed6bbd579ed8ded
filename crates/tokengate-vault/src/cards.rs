//! Card-data operations: tokenize (one or a batch), metadata, reveal,
//! delete, search by fingerprint.

use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};
use tokengate_audit::{Action, Ident, Outcome, SafeText};
use tokengate_core::{Cvc, Expiry, Pan, Token, TokenFormat, token::OPAQUE_RANDOM_BYTES};
use tokengate_crypto::envelope::{open_cvc, seal_cvc};
use tokengate_crypto::{Envelope, KeyPurpose, RecordAad};
use tokengate_store::{CvcRow, Job, JobError, Op, OpOutput, TokenRow};
use zeroize::Zeroizing;

use crate::access::{Caller, Role, event};
use crate::clock::{now_ms, rfc3339, this_month};
use crate::error::VaultError;
use crate::open::Vault;

/// Card fields as received. Strings are zeroized when dropped.
#[derive(Clone, Debug, Default)]
pub struct CardInput {
    pub number: Zeroizing<String>,
    pub exp_month: u32,
    pub exp_year: u32,
    pub name: Option<Zeroizing<String>>,
    pub cvc: Option<Zeroizing<String>>,
}

#[derive(Clone, Debug, Default)]
pub struct TokenizeRequest {
    pub card: CardInput,
    pub format: TokenFormat,
    pub deterministic: bool,
    /// A JSON object; refused if anything in it looks like a card number.
    pub metadata: Option<serde_json::Value>,
    /// The card number arrived without its expiry (the edge proxy replaces
    /// a card-number field on its own): `exp_month`/`exp_year` 0/0 are then
    /// accepted and stored as "unknown" (shown as 0/0).
    pub expiry_unknown: bool,
}

/// What anyone with the `tokenize` role may see about a token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenInfo {
    pub token: String,
    pub format: String,
    pub brand: String,
    pub bin: String,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
    pub fingerprint: String,
    pub deterministic: bool,
    pub has_cvc: bool,
    pub metadata: Option<serde_json::Value>,
    pub created_at: String,
}

impl From<&TokenRow> for TokenInfo {
    fn from(r: &TokenRow) -> Self {
        TokenInfo {
            token: r.token.clone(),
            format: r.format.clone(),
            brand: r.brand.clone(),
            bin: r.bin.clone(),
            last4: r.last4.clone(),
            exp_month: r.exp_month,
            exp_year: r.exp_year,
            fingerprint: HEXLOWER.encode(&r.fingerprint),
            deterministic: r.deterministic,
            has_cvc: r.has_cvc,
            metadata: r
                .metadata
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
            created_at: rfc3339(r.created_at),
        }
    }
}

/// Result of a tokenize: the token, and whether it was newly created
/// (deterministic mode may return an existing one).
#[derive(Clone, Debug)]
pub struct TokenizeOutcome {
    pub info: TokenInfo,
    pub created: bool,
}

/// A revealed card. Only ever built for a caller with the `reveal` role.
#[derive(Debug)]
pub struct RevealedCard {
    pub info: TokenInfo,
    pub number: Zeroizing<String>,
    pub name: Option<Zeroizing<String>>,
    /// Present only on the first reveal within the CVC TTL.
    pub cvc: Option<Zeroizing<String>>,
}

/// The encrypted part of a record.
#[derive(Serialize, Deserialize)]
pub(crate) struct Payload {
    #[serde(rename = "n")]
    pub(crate) number: String,
    #[serde(rename = "h", skip_serializing_if = "Option::is_none", default)]
    pub(crate) name: Option<String>,
}

impl Drop for Payload {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.number.zeroize();
        if let Some(n) = self.name.as_mut() {
            n.zeroize();
        }
    }
}

const MAX_METADATA_BYTES: usize = 4096;
const MAX_NAME_CHARS: usize = 100;
/// A PAN searched for can match at most this many tokens in one answer.
const MAX_SEARCH_RESULTS: i64 = 100;
/// Cards in one batch request.
pub const MAX_BATCH: usize = 1000;

/// A card that passed every check.
struct ValidCard {
    pan: Pan,
    expiry: Expiry,
    name: Option<Zeroizing<String>>,
    cvc: Option<Cvc>,
    metadata: Option<String>,
}

fn validate(req: &TokenizeRequest) -> Result<ValidCard, VaultError> {
    let pan = Pan::parse(&req.card.number)?;
    let expiry = if req.expiry_unknown && req.card.exp_month == 0 && req.card.exp_year == 0 {
        Expiry::from_stored(0, 0)
    } else {
        Expiry::new(req.card.exp_month, req.card.exp_year, this_month())?
    };
    let cvc = req
        .card
        .cvc
        .as_deref()
        .map(|c| Cvc::parse(c, pan.brand()))
        .transpose()?;
    let name = match &req.card.name {
        Some(n) => {
            let t = n.trim();
            if t.chars().count() > MAX_NAME_CHARS || t.chars().any(char::is_control) {
                return Err(VaultError::invalid(
                    "invalid_name",
                    "card.name must be at most 100 printable characters",
                ));
            }
            (!t.is_empty()).then(|| Zeroizing::new(t.to_owned()))
        }
        None => None,
    };
    let metadata = match &req.metadata {
        None | Some(serde_json::Value::Null) => None,
        Some(v @ serde_json::Value::Object(_)) => {
            let text = serde_json::to_string(v).map_err(|_| {
                VaultError::invalid("invalid_metadata", "metadata is not valid JSON")
            })?;
            if text.len() > MAX_METADATA_BYTES {
                return Err(VaultError::invalid(
                    "metadata_too_large",
                    "metadata must be at most 4096 bytes of JSON",
                ));
            }
            if tokengate_core::contains_pan_like(&text) {
                return Err(VaultError::invalid(
                    "metadata_contains_card_data",
                    "metadata holds something that looks like a card number; metadata is stored unencrypted",
                ));
            }
            Some(text)
        }
        Some(_) => {
            return Err(VaultError::invalid(
                "invalid_metadata",
                "metadata must be a JSON object",
            ));
        }
    };
    Ok(ValidCard {
        pan,
        expiry,
        name,
        cvc,
        metadata,
    })
}

fn new_token(format: TokenFormat, pan: &Pan) -> Result<Token, VaultError> {
    Ok(match format {
        TokenFormat::Opaque => Token::opaque(
            now_ms().max(0) as u64,
            &tokengate_crypto::random::bytes::<OPAQUE_RANDOM_BYTES>()?,
        ),
        TokenFormat::Bin6Last4 => Token::bin6_last4(pan, &tokengate_crypto::random::bytes::<16>()?),
    })
}

/// Attempts to find a free random token before giving up.
const TOKEN_ATTEMPTS: usize = 8;

impl Vault {
    fn token_event(
        &self,
        caller: &Caller,
        action: Action,
        outcome: Outcome,
        token: Option<&str>,
    ) -> tokengate_audit::AuditEvent {
        let mut e = event(
            action,
            outcome,
            &caller.key_id,
            Some(&caller.tenant),
            &caller.meta,
        );
        e.token = token.and_then(Ident::new);
        e
    }

    /// Audit a failed card operation (e.g. unknown token) and return `err`.
    async fn refuse(
        &self,
        caller: &Caller,
        action: Action,
        token: Option<&str>,
        err: VaultError,
    ) -> VaultError {
        let ev = self.token_event(caller, action, Outcome::failure(err.code()), token);
        match self.record(vec![ev]).await {
            Ok(()) => err,
            Err(_) => VaultError::AuditUnavailable,
        }
    }

    /// Tokenize one card.
    pub async fn tokenize(
        &self,
        caller: &Caller,
        req: &TokenizeRequest,
    ) -> Result<TokenizeOutcome, VaultError> {
        self.require(caller, Role::Tokenize, Action::TokenCreate)
            .await?;
        let card = match validate(req) {
            Ok(c) => c,
            Err(e) => return Err(self.refuse(caller, Action::TokenCreate, None, e).await),
        };
        self.tokenize_valid(caller, req, card).await
    }

    /// Tokenize up to [`MAX_BATCH`] cards; one result per card, in order.
    pub async fn tokenize_batch(
        &self,
        caller: &Caller,
        reqs: &[TokenizeRequest],
    ) -> Result<Vec<Result<TokenizeOutcome, VaultError>>, VaultError> {
        self.require(caller, Role::Tokenize, Action::TokenCreate)
            .await?;
        if reqs.is_empty() || reqs.len() > MAX_BATCH {
            return Err(VaultError::invalid(
                "invalid_batch_size",
                "a batch holds 1 to 1000 cards",
            ));
        }
        let futures = reqs.iter().map(|req| async move {
            match validate(req) {
                Ok(card) => self.tokenize_valid(caller, req, card).await,
                Err(e) => Err(self.refuse(caller, Action::TokenCreate, None, e).await),
            }
        });
        let results = futures::future::join_all(futures).await;
        // An audit failure fails the whole batch closed.
        if results
            .iter()
            .any(|r| matches!(r, Err(VaultError::AuditUnavailable)))
        {
            return Err(VaultError::AuditUnavailable);
        }
        Ok(results)
    }

    async fn tokenize_valid(
        &self,
        caller: &Caller,
        req: &TokenizeRequest,
        card: ValidCard,
    ) -> Result<TokenizeOutcome, VaultError> {
        let tenant = caller.tenant.as_str();
        // One snapshot for the whole write: a rotation meanwhile applies to
        // the next request.
        let ring = self.ring();
        let fp_version = ring.active_version(KeyPurpose::Fingerprint)?;
        let fingerprint = ring
            .fingerprint(fp_version, tenant, card.pan.expose_digits())?
            .to_vec();
        // A deterministic token made before a fingerprint-key rotation may
        // still carry a fingerprint under an older version until the
        // re-fingerprint job reaches it: look under every live version.
        let mut lookups = Vec::new();
        if req.deterministic {
            lookups.push(fingerprint.clone());
            for v in ring.versions(KeyPurpose::Fingerprint) {
                if v != fp_version {
                    lookups.push(
                        ring.fingerprint(v, tenant, card.pan.expose_digits())?
                            .to_vec(),
                    );
                }
            }
        }
        let payload = Payload {
            number: card.pan.expose_digits().to_owned(),
            name: card.name.as_ref().map(|n| n.to_string()),
        };
        let plaintext = Zeroizing::new(
            serde_json::to_vec(&payload).map_err(|e| VaultError::Internal(e.to_string()))?,
        );
        drop(payload);
        let now = now_ms();

        for _ in 0..TOKEN_ATTEMPTS {
            if req.deterministic {
                let mut existing = None;
                for fp in &lookups {
                    existing = self
                        .store
                        .find_deterministic(tenant, req.format.as_str(), fp)
                        .await?;
                    if existing.is_some() {
                        break;
                    }
                }
                if let Some(existing) = existing {
                    return self
                        .reuse_deterministic(caller, existing, card.cvc.as_ref(), now)
                        .await;
                }
            }
            let token = new_token(req.format, &card.pan)?;
            let aad = RecordAad {
                tenant,
                token: token.as_str(),
            };
            let env = Envelope::seal(&ring, aad, &plaintext)?;
            let row = TokenRow {
                tenant: tenant.to_owned(),
                token: token.as_str().to_owned(),
                format: req.format.as_str().to_owned(),
                deterministic: req.deterministic,
                fingerprint: fingerprint.clone(),
                fp_version,
                kek_version: env.kek_version,
                wrapped_dek: env.wrapped_dek,
                ciphertext: env.ciphertext,
                brand: card.pan.brand().as_str().to_owned(),
                bin: card.pan.bin6().to_owned(),
                last4: card.pan.last4().to_owned(),
                exp_month: card.expiry.month(),
                exp_year: card.expiry.year(),
                metadata: card.metadata.clone(),
                created_at: now,
                has_cvc: card.cvc.is_some(),
            };
            // The answer is built before the row moves into the job (no
            // copy of the row).
            let info = TokenInfo::from(&row);
            let mut ops = vec![Op::InsertToken(row)];
            if let Some(cvc) = &card.cvc {
                ops.push(Op::InsertCvc(self.cvc_row(
                    tenant,
                    token.as_str(),
                    cvc,
                    now,
                )?));
            }
            let mut ev = self.token_event(
                caller,
                Action::TokenCreate,
                Outcome::Success,
                Some(token.as_str()),
            );
            if card.cvc.is_some() {
                ev.detail = Some(SafeText::new("cvc_held=true"));
            }
            match self
                .committer
                .submit(Job {
                    ops,
                    events: vec![ev],
                    ..Job::default()
                })
                .await?
            {
                Ok(_) => {
                    return Ok(TokenizeOutcome {
                        info,
                        created: true,
                    });
                }
                // Token collision, or a concurrent deterministic insert: retry
                // (the deterministic branch then finds the winner).
                Err(JobError::Conflict) => continue,
                Err(JobError::Database(e)) => return Err(VaultError::Internal(e)),
            }
        }
        Err(VaultError::TokenCollision)
    }

    fn cvc_row(
        &self,
        tenant: &str,
        token: &str,
        cvc: &Cvc,
        now: i64,
    ) -> Result<CvcRow, VaultError> {
        let (key_version, ciphertext) = seal_cvc(
            &self.ring(),
            RecordAad { tenant, token },
            cvc.expose_digits(),
        )?;
        Ok(CvcRow {
            tenant: tenant.to_owned(),
            token: token.to_owned(),
            key_version,
            ciphertext,
            expires_at: now + self.config.cvc_ttl.as_millis() as i64,
        })
    }

    async fn reuse_deterministic(
        &self,
        caller: &Caller,
        existing: TokenRow,
        cvc: Option<&Cvc>,
        now: i64,
    ) -> Result<TokenizeOutcome, VaultError> {
        let mut ops = Vec::new();
        if let Some(cvc) = cvc {
            // A fresh CVC replaces any one still held for this card.
            ops.push(Op::ExpireCvc {
                tenant: existing.tenant.clone(),
                token: existing.token.clone(),
                now: i64::MAX,
            });
            ops.push(Op::InsertCvc(self.cvc_row(
                &existing.tenant,
                &existing.token,
                cvc,
                now,
            )?));
        }
        let mut ev = self.token_event(
            caller,
            Action::TokenCreate,
            Outcome::Success,
            Some(&existing.token),
        );
        ev.detail = Some(SafeText::new("deterministic_existing=true"));
        self.committer
            .submit(Job {
                ops,
                events: vec![ev],
                ..Job::default()
            })
            .await?
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        let mut info = TokenInfo::from(&existing);
        info.has_cvc = cvc.is_some() || existing.has_cvc;
        Ok(TokenizeOutcome {
            info,
            created: false,
        })
    }

    /// Masked metadata of a token.
    pub async fn token_info(&self, caller: &Caller, token: &str) -> Result<TokenInfo, VaultError> {
        self.require(caller, Role::Tokenize, Action::TokenRead)
            .await?;
        let row = match self.find(caller, token).await? {
            Some(r) => r,
            None => {
                return Err(self
                    .refuse(
                        caller,
                        Action::TokenRead,
                        Ident::new(token).as_ref().map(Ident::as_str),
                        VaultError::TokenNotFound,
                    )
                    .await);
            }
        };
        let ev = self.token_event(
            caller,
            Action::TokenRead,
            Outcome::Success,
            Some(&row.token),
        );
        self.record(vec![ev]).await?;
        Ok(TokenInfo::from(&row))
    }

    async fn find(&self, caller: &Caller, token: &str) -> Result<Option<TokenRow>, VaultError> {
        // A string that is not a token (for example a real PAN pasted by
        // mistake) is never looked up, logged or audited as such.
        let Ok(token) = Token::parse(token) else {
            return Ok(None);
        };
        Ok(self
            .store
            .get_token(&caller.tenant, token.as_str(), now_ms())
            .await?)
    }

    /// The card behind a token. The CVC, if still held, is returned once and deleted.
    pub async fn reveal(&self, caller: &Caller, token: &str) -> Result<RevealedCard, VaultError> {
        self.reveal_as(caller, token, Role::Reveal, None, true)
            .await
    }

    /// The card behind a token, for the outbound relay to send to the
    /// configured processor `destination` (never back to the caller, who
    /// needs only the `relay` role). The audit record names the destination.
    /// The CVC is taken (once) only when `with_cvc`.
    pub async fn reveal_for_processor(
        &self,
        caller: &Caller,
        token: &str,
        destination: &str,
        with_cvc: bool,
    ) -> Result<RevealedCard, VaultError> {
        let detail = SafeText::new(&format!("destination={destination}"));
        self.reveal_as(caller, token, Role::Relay, Some(detail), with_cvc)
            .await
    }

    async fn reveal_as(
        &self,
        caller: &Caller,
        token: &str,
        role: Role,
        detail: Option<SafeText>,
        take_cvc: bool,
    ) -> Result<RevealedCard, VaultError> {
        self.require(caller, role, Action::TokenReveal).await?;
        let audit_token = Ident::new(token);
        let row = match self.find(caller, token).await? {
            Some(r) => r,
            None => {
                return Err(self
                    .refuse(
                        caller,
                        Action::TokenReveal,
                        audit_token.as_ref().map(Ident::as_str),
                        VaultError::TokenNotFound,
                    )
                    .await);
            }
        };
        let aad = RecordAad {
            tenant: &row.tenant,
            token: &row.token,
        };
        let env = Envelope {
            kek_version: row.kek_version,
            wrapped_dek: row.wrapped_dek.clone(),
            ciphertext: row.ciphertext.clone(),
        };
        let plain = match env.open(&self.ring(), aad) {
            Ok(p) => p,
            Err(e) => {
                let err = VaultError::from(e);
                tracing::error!(token = %row.token, code = err.code(), "record failed to decrypt");
                return Err(self
                    .refuse(caller, Action::TokenReveal, Some(&row.token), err)
                    .await);
            }
        };
        let payload: Payload = serde_json::from_slice(plain.expose())
            .map_err(|_| VaultError::Internal("corrupt payload".into()))?;
        let now = now_ms();
        let mut revealed = self.token_event(
            caller,
            Action::TokenReveal,
            Outcome::Success,
            Some(&row.token),
        );
        revealed.detail = detail;
        let mut job = Job {
            events: vec![revealed],
            ..Job::default()
        };
        if row.has_cvc && take_cvc {
            job.ops.push(Op::TakeCvc {
                tenant: row.tenant.clone(),
                token: row.token.clone(),
                now,
            });
            let mut del = self.token_event(
                caller,
                Action::CvcDelete,
                Outcome::Success,
                Some(&row.token),
            );
            del.detail = Some(SafeText::new("reason=first_use"));
            job.events_if_affected.push((0, del));
        }
        // The reveal is acknowledged only once its audit record committed.
        let out = self
            .committer
            .submit(job)
            .await?
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        let cvc = match out.into_iter().next() {
            Some(OpOutput::Cvc(Some(c))) => {
                match open_cvc(&self.ring(), aad, c.key_version, &c.ciphertext) {
                    Ok(b) => Some(Zeroizing::new(
                        String::from_utf8_lossy(b.expose()).into_owned(),
                    )),
                    Err(e) => {
                        tracing::error!(token = %row.token, error = %e, "held CVC failed to decrypt; it has been deleted");
                        None
                    }
                }
            }
            _ => None,
        };
        self.note_reveal(caller).await;
        let mut info = TokenInfo::from(&row);
        info.has_cvc = row.has_cvc && !take_cvc;
        Ok(RevealedCard {
            info,
            number: Zeroizing::new(payload.number.clone()),
            name: payload.name.clone().map(Zeroizing::new),
            cvc,
        })
    }

    /// Count a reveal; the reveal that crosses `reveal_alert_per_minute` for
    /// its key in the current minute raises one `reveal_rate` alert.
    async fn note_reveal(&self, caller: &Caller) {
        let limit = self.config.reveal_alert_per_minute;
        if limit == 0 {
            return;
        }
        let minute = crate::clock::now_ms() / 60_000;
        let crossed = {
            let mut g = self
                .reveal_rate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if g.0 != minute {
                *g = (minute, std::collections::HashMap::new());
            }
            let n = g.1.entry(caller.key_id.as_str().to_owned()).or_insert(0);
            *n += 1;
            *n == limit
        };
        if crossed {
            tracing::warn!(key = %caller.key_id.as_str(), limit, "reveal rate alert");
            // Best effort: the reveal itself is already on record.
            let _ = self
                .record_alert(&format!(
                    "kind=reveal_rate key={} reveals_this_minute>={limit}",
                    caller.key_id.as_str()
                ))
                .await;
        }
    }

    /// Delete a token: the record and its wrapped DEK are removed.
    pub async fn delete(&self, caller: &Caller, token: &str) -> Result<(), VaultError> {
        self.require(caller, Role::Tokenize, Action::TokenDelete)
            .await?;
        let audit_token = Ident::new(token);
        let Ok(parsed) = Token::parse(token) else {
            return Err(self
                .refuse(caller, Action::TokenDelete, None, VaultError::TokenNotFound)
                .await);
        };
        let ev = self.token_event(
            caller,
            Action::TokenDelete,
            Outcome::Success,
            Some(parsed.as_str()),
        );
        let job = Job {
            ops: vec![Op::DeleteToken {
                tenant: caller.tenant.clone(),
                token: parsed.as_str().to_owned(),
            }],
            events: vec![],
            events_if_affected: vec![(0, ev)],
        };
        let out = self
            .committer
            .submit(job)
            .await?
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        if out.first().map(OpOutput::affected) == Some(1) {
            Ok(())
        } else {
            Err(self
                .refuse(
                    caller,
                    Action::TokenDelete,
                    audit_token.as_ref().map(Ident::as_str),
                    VaultError::TokenNotFound,
                )
                .await)
        }
    }

    /// Tokens whose keyed fingerprint matches `number`.
    pub async fn search(
        &self,
        caller: &Caller,
        number: &str,
    ) -> Result<Vec<TokenInfo>, VaultError> {
        self.require(caller, Role::Tokenize, Action::TokenSearch)
            .await?;
        let pan = match Pan::parse(number) {
            Ok(p) => p,
            Err(e) => {
                return Err(self
                    .refuse(caller, Action::TokenSearch, None, e.into())
                    .await);
            }
        };
        let mut found = Vec::new();
        // Every live fingerprint version: during a re-fingerprint job some
        // records are on the old key, some on the new.
        let ring = self.ring();
        for v in ring.versions(KeyPurpose::Fingerprint) {
            let fp = ring.fingerprint(v, &caller.tenant, pan.expose_digits())?;
            found.extend(
                self.store
                    .find_by_fingerprint(&caller.tenant, &fp, MAX_SEARCH_RESULTS)
                    .await?,
            );
        }
        let mut ev = self.token_event(caller, Action::TokenSearch, Outcome::Success, None);
        ev.detail = Some(SafeText::new(&format!("results={}", found.len())));
        self.record(vec![ev]).await?;
        Ok(found.iter().map(TokenInfo::from).collect())
    }
}
