//! Deletes CVCs whose TTL ran out, with an audit record for each.

use std::sync::Arc;
use std::time::Duration;

use tokengate_audit::{Action, AuditEvent, Ident, Outcome, SafeText};
use tokengate_store::{Job, Op};

use crate::clock::now_ms;
use crate::error::VaultError;
use crate::open::Vault;

impl Vault {
    /// Delete every CVC expired by now. Returns how many were deleted.
    pub async fn sweep_expired_cvcs(&self) -> Result<usize, VaultError> {
        let mut total = 0;
        loop {
            let now = now_ms();
            let expired = self.store.expired_cvcs(now, 500).await?;
            if expired.is_empty() {
                return Ok(total);
            }
            let mut job = Job::default();
            for (i, (tenant, token)) in expired.iter().enumerate() {
                job.ops.push(Op::ExpireCvc {
                    tenant: tenant.clone(),
                    token: token.clone(),
                    now,
                });
                let mut e = AuditEvent::new(
                    now,
                    Action::CvcExpire,
                    Outcome::Success,
                    Ident::from_static("system"),
                );
                e.tenant = Ident::new(tenant);
                e.token = Ident::new(token);
                e.detail = Some(SafeText::new("reason=ttl"));
                job.events_if_affected.push((i, e));
            }
            let out = self
                .committer
                .submit(job)
                .await?
                .map_err(|e| VaultError::Internal(e.to_string()))?;
            total += out.iter().filter(|o| o.affected() > 0).count();
        }
    }

    /// Run [`sweep_expired_cvcs`](Self::sweep_expired_cvcs) every `every`.
    pub fn spawn_cvc_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let vault = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match vault.sweep_expired_cvcs().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "expired CVCs deleted"),
                    Err(e) => tracing::error!(code = e.code(), "CVC sweep failed; will retry"),
                }
            }
        })
    }
}
