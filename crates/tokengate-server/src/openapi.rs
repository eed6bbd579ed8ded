//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{api_keys, audit, health, keys, tokens};
use crate::sealed;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tg_…")
                    .build(),
            ),
        );
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "tokengate", description = "Self-hosted card vault and payments security edge. Errors are `{\"error\": {\"code\", \"message\"}}`."),
    paths(
        tokens::create, tokens::batch, tokens::info, tokens::reveal, tokens::delete, tokens::search,
        api_keys::create, api_keys::list, api_keys::revoke,
        keys::list, keys::rotate, keys::min_version, keys::destroy, keys::rewrap, keys::rewrap_status,
        audit::events, audit::checkpoint, audit::inclusion, audit::consistency,
        health::healthz, health::readyz, health::metrics, health::openapi,
        crate::webhooks::receive::receive,
        sealed::unseal, sealed::seal, sealed::seal_status,
    ),
    modifiers(&BearerAuth),
    tags((name = "tokens", description = "Card tokenization"), (name = "api-keys", description = "Access control"), (name = "keys", description = "Key ring: versions, rotation, rewrap, destroy (role admin)"), (name = "audit", description = "Audit log: search, checkpoints, proofs (role auditor)"), (name = "operations"), (name = "webhooks", description = "Inbound webhooks: verified, de-duplicated, stored, then delivered"))
)]
pub struct ApiDoc;

/// The document as pretty JSON (stable: the same build gives the same bytes).
pub fn json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
}
