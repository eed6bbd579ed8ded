//! Verification of a stored audit trail, one record at a time.

use data_encoding::HEXLOWER;

use crate::chain::{ChainHash, GENESIS, StoredEvent, chain_hash};
use crate::event::AuditEvent;
use crate::head::SignedHead;

/// The first problem found. `seq` names the record to look at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("record {seq}: expected sequence number {expected}; records were deleted or reordered")]
    Sequence { seq: u64, expected: u64 },
    #[error(
        "record {seq}: its link to the previous record is broken; a record before it was changed, deleted or reordered"
    )]
    BrokenLink { seq: u64 },
    #[error("record {seq}: content does not match its hash; the record was edited")]
    Edited { seq: u64 },
    #[error("record {seq}: not a valid audit event")]
    Unparseable { seq: u64 },
    #[error(
        "the signed head names record {head_seq} but the trail ends at {last_seq}; records were cut off the end"
    )]
    Truncated { head_seq: u64, last_seq: u64 },
    #[error("the signed head does not match record {seq}; the trail was rewritten")]
    HeadMismatch { seq: u64 },
    #[error("the signed head's signature is invalid")]
    BadHeadSignature,
    #[error("the trail has records but no signed head")]
    MissingHead,
    #[error("the stored checkpoint at {size} records is not signed by this vault's audit key")]
    CheckpointSignature { size: u64 },
    #[error(
        "the stored checkpoint at {size} records does not match the records; records up to {size} were changed since it was signed"
    )]
    CheckpointMismatch { size: u64 },
    #[error(
        "a stored checkpoint covers {size} records but the trail ends at {last_seq}; records were cut off the end"
    )]
    CheckpointBeyondLog { size: u64, last_seq: u64 },
    #[error(
        "the log does not match the checkpoint you gave at {size} records: records up to {size} were edited, deleted or rewritten since then"
    )]
    PinnedCheckpointMismatch { size: u64 },
    #[error(
        "the checkpoint you gave covers {size} records but the trail ends at {last_seq}; records were cut off the end"
    )]
    PinnedCheckpointBeyondLog { size: u64, last_seq: u64 },
    #[error(
        "the stored Merkle tree does not give the latest checkpoint's root ({size} records); proofs from it would not verify"
    )]
    StoredTreeMismatch { size: u64 },
}

impl VerifyError {
    /// The record the error points at, if it names one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            VerifyError::Sequence { seq, .. }
            | VerifyError::BrokenLink { seq }
            | VerifyError::Edited { seq }
            | VerifyError::Unparseable { seq }
            | VerifyError::HeadMismatch { seq } => Some(*seq),
            VerifyError::Truncated { last_seq, .. }
            | VerifyError::CheckpointBeyondLog { last_seq, .. }
            | VerifyError::PinnedCheckpointBeyondLog { last_seq, .. } => Some(*last_seq + 1),
            _ => None,
        }
    }
}

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub last_seq: u64,
    pub head_hash: String,
}

/// Feed records in `seq` order with [`push`](Self::push), then [`finish`](Self::finish).
#[derive(Debug)]
pub struct Verifier {
    expected: u64,
    prev: ChainHash,
    count: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            expected: 1,
            prev: GENESIS,
            count: 0,
        }
    }
}

impl Verifier {
    /// Start after records that were pruned: the next record must be
    /// `next_seq` and link to `prev_hash`.
    pub fn resume(next_seq: u64, prev_hash: ChainHash) -> Verifier {
        Verifier {
            expected: next_seq,
            prev: prev_hash,
            count: 0,
        }
    }

    pub fn push(&mut self, rec: &StoredEvent) -> Result<(), VerifyError> {
        if rec.seq != self.expected {
            return Err(VerifyError::Sequence {
                seq: rec.seq,
                expected: self.expected,
            });
        }
        if rec.prev_hash != self.prev {
            return Err(VerifyError::BrokenLink { seq: rec.seq });
        }
        if chain_hash(rec.seq, &rec.prev_hash, rec.event_json.as_bytes()) != rec.hash {
            return Err(VerifyError::Edited { seq: rec.seq });
        }
        if serde_json::from_str::<AuditEvent>(&rec.event_json).is_err() {
            return Err(VerifyError::Unparseable { seq: rec.seq });
        }
        self.prev = rec.hash;
        self.expected += 1;
        self.count += 1;
        Ok(())
    }

    /// Check the end of the trail against the signed head.
    pub fn finish(
        self,
        head: Option<&SignedHead>,
        public_key: &[u8],
    ) -> Result<VerifyReport, VerifyError> {
        let last_seq = self.expected - 1;
        match head {
            None if self.count > 0 => return Err(VerifyError::MissingHead),
            None => {}
            Some(h) => {
                if !h.verify(public_key) {
                    return Err(VerifyError::BadHeadSignature);
                }
                if h.seq > last_seq {
                    return Err(VerifyError::Truncated {
                        head_seq: h.seq,
                        last_seq,
                    });
                }
                // Records after the head are allowed (written after it was
                // signed in the same crash window is impossible: the head is
                // signed in the same transaction), so the head must match the
                // last record exactly.
                if h.seq < last_seq || h.hash != self.prev {
                    return Err(VerifyError::HeadMismatch { seq: h.seq });
                }
            }
        }
        Ok(VerifyReport {
            records: self.count,
            last_seq,
            head_hash: HEXLOWER.encode(&self.prev),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::link;
    use crate::event::{Action, Ident, Outcome};
    use aws_lc_rs::signature::Ed25519KeyPair;

    fn trail(n: u64) -> (Vec<StoredEvent>, SignedHead, Vec<u8>) {
        let key = Ed25519KeyPair::from_seed_unchecked(&[9u8; 32]).unwrap();
        let mut recs = Vec::new();
        let (mut seq, mut prev) = (0, GENESIS);
        for i in 0..n {
            let e = AuditEvent::new(
                i as i64,
                Action::TokenCreate,
                Outcome::Success,
                Ident::from_static("key_a"),
            );
            let r = link(seq, prev, &e);
            seq = r.seq;
            prev = r.hash;
            recs.push(r);
        }
        let head = SignedHead::sign(&key, seq, prev);
        (recs, head, crate::head::public_key(&key))
    }

    fn run(
        recs: &[StoredEvent],
        head: &SignedHead,
        pk: &[u8],
    ) -> Result<VerifyReport, VerifyError> {
        let mut v = Verifier::default();
        for r in recs {
            v.push(r)?;
        }
        v.finish(Some(head), pk)
    }

    #[test]
    fn intact() {
        let (recs, head, pk) = trail(5);
        assert_eq!(run(&recs, &head, &pk).unwrap().records, 5);
    }

    #[test]
    fn edit_delete_reorder_truncate() {
        let (recs, head, pk) = trail(5);
        let mut edited = recs.clone();
        edited[2].event_json = edited[2].event_json.replace("key_a", "key_b");
        assert_eq!(
            run(&edited, &head, &pk),
            Err(VerifyError::Edited { seq: 3 })
        );

        let mut deleted = recs.clone();
        deleted.remove(1);
        assert_eq!(
            run(&deleted, &head, &pk),
            Err(VerifyError::Sequence {
                seq: 3,
                expected: 2
            })
        );

        let mut reordered = recs.clone();
        reordered.swap(1, 2);
        assert!(matches!(
            run(&reordered, &head, &pk),
            Err(VerifyError::Sequence { .. })
        ));
        // Reordered and renumbered: the links break.
        let (a, b) = (reordered[1].seq, reordered[2].seq);
        reordered[1].seq = b;
        reordered[2].seq = a;
        assert_eq!(
            run(&reordered, &head, &pk),
            Err(VerifyError::BrokenLink { seq: 2 })
        );

        let truncated = &recs[..4];
        assert_eq!(
            run(truncated, &head, &pk),
            Err(VerifyError::Truncated {
                head_seq: 5,
                last_seq: 4
            })
        );

        let mut forged = head.clone();
        forged.seq = 4;
        assert_eq!(
            run(truncated, &forged, &pk),
            Err(VerifyError::BadHeadSignature)
        );
    }
}
