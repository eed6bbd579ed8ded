//! Hits in a body → what replaces them, through the vault.
//!
//! Inbound: card numbers become tokens (a CVC is held with the card number
//! of its group and replaced by that card's token); a selected value that is
//! not a card number is refused or redacted; anything else card-shaped is
//! refused, tokenized or alerted on. Outbound: tokens become card numbers
//! (or the held CVC) for the processor.

use axum::http::StatusCode;
use futures::future::try_join_all;
use tokengate_audit::Action;
use tokengate_core::{Pan, TokenFormat};
use tokengate_proxy::config::{FieldAction, OnInvalid, RevealPart, Route, SafetyNet};
use tokengate_proxy::{Hit, What};
use tokengate_vault::{Caller, CardInput, TokenizeRequest};
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::proxy::ProxyState;

/// What a body's processing did, for metrics.
#[derive(Debug, Default)]
pub struct Counts {
    pub tokenized: u64,
    pub strays: u64,
}

/// The replacement text for each part of each hit.
pub type Replacements = Vec<Vec<String>>;

fn keep_all(hits: &[Hit]) -> Replacements {
    hits.iter()
        .map(|h| {
            (0..h.parts.len())
                .map(|i| h.part_text(i).to_owned())
                .collect()
        })
        .collect()
}

async fn reject(
    state: &ProxyState,
    caller: &Caller,
    code: &'static str,
    detail: String,
    message: String,
) -> ApiError {
    let error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
    crate::proxy::audited_error(state, caller, Action::ProxyReject, &detail, error).await
}

fn tokenize_request(
    number: &str,
    cvc: Option<&str>,
    format: TokenFormat,
    deterministic: bool,
) -> TokenizeRequest {
    TokenizeRequest {
        card: CardInput {
            number: Zeroizing::new(number.to_owned()),
            exp_month: 0,
            exp_year: 0,
            name: None,
            cvc: cvc.map(|c| Zeroizing::new(c.to_owned())),
        },
        format,
        deterministic,
        metadata: None,
        expiry_unknown: true,
    }
}

/// Handle card data found outside the selected fields by `policy`.
async fn strays(
    state: &ProxyState,
    caller: &Caller,
    hits: &[Hit],
    out: &mut Replacements,
    policy: SafetyNet,
    place: &str,
    counts: &mut Counts,
) -> Result<(), ApiError> {
    let stray: Vec<(usize, usize)> = hits
        .iter()
        .enumerate()
        .flat_map(|(h, hit)| {
            hit.parts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.what == What::Stray)
                .map(move |(p, _)| (h, p))
        })
        .collect();
    counts.strays = stray.len() as u64;
    if stray.is_empty() {
        return Ok(());
    }
    match policy {
        SafetyNet::Off => Ok(()),
        SafetyNet::Reject => Err(reject(
            state,
            caller,
            "unexpected_card_data",
            format!("safety_net=reject place={place} count={}", stray.len()),
            format!(
                "the {place} holds {} value(s) that look like a card number outside the fields this route tokenizes; \
                 send card numbers only in the configured fields",
                stray.len()
            ),
        )
        .await),
        SafetyNet::Alert => {
            state
                .vault
                .record_edge_event(
                    Action::Alert,
                    "card_data_passed",
                    caller.key_id.as_str(),
                    &caller.meta,
                    &format!(
                        "kind=card_data_passed actor={} place={place} count={}",
                        caller.key_id.as_str(),
                        stray.len()
                    ),
                )
                .await
                .map_err(ApiError::from)?;
            Ok(())
        }
        SafetyNet::Tokenize => {
            let vault = &state.vault;
            let tokens = try_join_all(stray.iter().map(|&(h, p)| async move {
                let req = tokenize_request(hits[h].part_text(p), None, TokenFormat::Opaque, false);
                vault.tokenize(caller, &req).await
            }))
            .await
            .map_err(ApiError::from)?;
            for (&(h, p), t) in stray.iter().zip(tokens) {
                out[h][p] = t.info.token;
            }
            counts.tokenized += stray.len() as u64;
            Ok(())
        }
    }
}

/// Replacements for an inbound request body under `route`'s rules.
pub async fn tokenize_inbound(
    state: &ProxyState,
    route: &Route,
    caller: &Caller,
    hits: &[Hit],
) -> Result<(Replacements, Counts), ApiError> {
    let mut out = keep_all(hits);
    let mut counts = Counts::default();
    // Refuse first, so that a refused request creates no tokens.
    if route.cfg.safety_net == SafetyNet::Reject {
        strays(
            state,
            caller,
            hits,
            &mut out,
            SafetyNet::Reject,
            "request body",
            &mut counts,
        )
        .await?;
    }
    // Card numbers, by hit index; CVCs attached to them.
    struct Card {
        hit: usize,
        format: TokenFormat,
        deterministic: bool,
        cvc: Option<usize>,
    }
    let mut cards: Vec<Card> = Vec::new();
    let mut cvcs: Vec<usize> = Vec::new();
    for (h, hit) in hits.iter().enumerate() {
        let Some(What::Field { rule }) = hit.parts.first().map(|p| p.what) else {
            continue;
        };
        let Some(field) = route.cfg.fields.get(rule) else {
            continue;
        };
        let selector = field
            .json
            .as_deref()
            .or(field.form.as_deref())
            .unwrap_or("?");
        match field.action {
            FieldAction::Tokenize => {
                if Pan::parse(hit.part_text(0)).is_err() {
                    match route.cfg.on_invalid {
                        OnInvalid::Reject => {
                            return Err(reject(
                                state,
                                caller,
                                "invalid_card_field",
                                format!("field={selector}"),
                                format!(
                                    "the value at `{selector}` is not a valid card number (check length, digits and the Luhn check digit)"
                                ),
                            )
                            .await);
                        }
                        OnInvalid::Redact => {
                            out[h][0] = "[redacted]".to_owned();
                            continue;
                        }
                    }
                }
                cards.push(Card {
                    hit: h,
                    format: field
                        .format
                        .as_deref()
                        .and_then(TokenFormat::from_name)
                        .unwrap_or(TokenFormat::Opaque),
                    deterministic: field.deterministic,
                    cvc: None,
                });
            }
            FieldAction::TokenizeCvc => cvcs.push(h),
        }
    }
    for &c in &cvcs {
        let group = &hits[c].group;
        let same: Vec<usize> = (0..cards.len())
            .filter(|&i| &hits[cards[i].hit].group == group && cards[i].cvc.is_none())
            .collect();
        let pick = match (same.first(), cards.len()) {
            (Some(&i), _) => Some(i),
            (None, 1) if cards[0].cvc.is_none() => Some(0),
            _ => None,
        };
        match pick {
            Some(i) => cards[i].cvc = Some(c),
            None => {
                return Err(reject(
                    state,
                    caller,
                    "cvc_without_card",
                    "field=cvc".to_owned(),
                    "a CVC field has no card number beside it (same JSON object or form group) to be held with"
                        .to_owned(),
                )
                .await);
            }
        }
    }
    let vault = &state.vault;
    let tokens = try_join_all(cards.iter().map(|card| async move {
        let req = tokenize_request(
            hits[card.hit].part_text(0),
            card.cvc.map(|c| hits[c].part_text(0)),
            card.format,
            card.deterministic,
        );
        vault.tokenize(caller, &req).await
    }))
    .await
    .map_err(ApiError::from)?;
    for (card, t) in cards.iter().zip(tokens) {
        if let Some(c) = card.cvc {
            out[c][0] = t.info.token.clone();
        }
        out[card.hit][0] = t.info.token;
        counts.tokenized += 1;
    }
    if route.cfg.safety_net != SafetyNet::Reject {
        strays(
            state,
            caller,
            hits,
            &mut out,
            route.cfg.safety_net,
            "request body",
            &mut counts,
        )
        .await?;
    }
    Ok((out, counts))
}

/// Replacements for a response body: only card-shaped data, by `policy`
/// (`reject` becomes a 502: the app or processor answered with card data).
pub async fn scrub_response(
    state: &ProxyState,
    caller: &Caller,
    hits: &[Hit],
    policy: SafetyNet,
    place: &str,
) -> Result<(Replacements, Counts), ApiError> {
    let mut out = keep_all(hits);
    let mut counts = Counts::default();
    match strays(state, caller, hits, &mut out, policy, place, &mut counts).await {
        Ok(()) => Ok((out, counts)),
        Err(e) if e.code == "unexpected_card_data" => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_card_data",
            format!("the {place} held card data and was withheld (safety net: reject)"),
        )),
        Err(e) => Err(e),
    }
}

/// Replacements that put card numbers (or held CVCs) where the app put
/// tokens, for processor `destination`. `parts[rule]` says which.
pub async fn reveal_outbound(
    state: &ProxyState,
    caller: &Caller,
    destination: &str,
    hits: &[Hit],
    parts: &[RevealPart],
) -> Result<(Replacements, u64), ApiError> {
    let mut out = keep_all(hits);
    let mut wanted = Vec::new();
    for (h, hit) in hits.iter().enumerate() {
        if let Some(What::Field { rule }) = hit.parts.first().map(|p| p.what) {
            wanted.push((h, parts.get(rule).copied().unwrap_or_default()));
        }
    }
    let vault = &state.vault;
    let revealed = try_join_all(wanted.iter().map(|&(h, part)| async move {
        let token = hits[h].part_text(0).trim();
        reveal_one(vault, caller, destination, token, part).await
    }))
    .await?;
    for (&(h, _), value) in wanted.iter().zip(revealed) {
        out[h][0] = value.to_string();
    }
    Ok((out, wanted.len() as u64))
}

/// One token's card number or CVC for `destination`.
pub async fn reveal_one(
    vault: &tokengate_vault::Vault,
    caller: &Caller,
    destination: &str,
    token: &str,
    part: RevealPart,
) -> Result<Zeroizing<String>, ApiError> {
    let card = vault
        .reveal_for_processor(caller, token, destination, part == RevealPart::Cvc)
        .await
        .map_err(ApiError::from)?;
    match part {
        RevealPart::Number => Ok(card.number),
        RevealPart::Cvc => card.cvc.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "cvc_unavailable",
                "the CVC for this token is no longer held (it is kept until first use or its TTL); collect it again",
            )
        }),
    }
}
