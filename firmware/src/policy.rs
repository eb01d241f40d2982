//! Who may use which key for what, and how often.
//!
//! Default deny: a client may use a key only if a [`Rule`] names both and allows the
//! operation. Each rule carries a token-bucket [`Budget`], so that a compromised or buggy
//! client cannot turn the HSM into a signing or decryption oracle at full speed. The policy is
//! evaluated before the token is touched, in two steps so that the core can check the key's
//! kind in between without leaking key existence to clients that have no rule for it:
//!
//! 1. [`Policy::permit`]: is there a rule for (client, key, operation)? → [`Grant`]
//! 2. (the core checks that the token has the key and that its kind fits the operation)
//! 3. [`Policy::spend`]: take one use from the rule's budget, or refuse with a retry time.
//!
//! Time is the caller's `now` in milliseconds; the core has no clock. The host gives the
//! wall clock (the audit records carry the same time, and a restart replays them): a
//! clock stepped forward refills at most a burst, one stepped back refills nothing and
//! the refill goes on from the new time.

use crate::config::MAX_POLICY_RULES;
use crate::id::{ClientId, KeyId};
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// A key operation, as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyUse {
    Sign,
    Decrypt,
    /// Wrap a secret (AES key wrap) with a wrapping key.
    Wrap,
    /// Unwrap a wrapped secret with a wrapping key.
    Unwrap,
}

/// A rate budget: up to `burst` uses at once, refilled at `per_second` uses per second.
/// `per_second == 0` makes `burst` a total for the life of the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub burst: u32,
    pub per_second: u32,
}

/// One permission: `client` may use `key` for the allowed operations, within `budget`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub client: ClientId,
    pub key: KeyId,
    pub sign: bool,
    pub decrypt: bool,
    /// May wrap secrets with the key. Separate from `unwrap`: a service that only stores
    /// new keys never needs to get one back in clear.
    pub wrap: bool,
    pub unwrap: bool,
    pub budget: Budget,
}

impl Rule {
    fn allows(&self, usage: KeyUse) -> bool {
        match usage {
            KeyUse::Sign => self.sign,
            KeyUse::Decrypt => self.decrypt,
            KeyUse::Wrap => self.wrap,
            KeyUse::Unwrap => self.unwrap,
        }
    }
}

/// Why a rule could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// The table already holds [`MAX_POLICY_RULES`] rules.
    Full,
    /// A rule for this client and key exists (one bucket per pair, so one rule per pair).
    Duplicate,
}

/// Why the policy refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No rule allows it.
    Denied,
    /// The budget is spent; one more use is possible after `retry_after_ms` (`u64::MAX`
    /// if the budget never refills).
    RateLimited { retry_after_ms: u64 },
}

/// Proof that a rule allowed a request; spend it with [`Policy::spend`].
#[derive(Debug)]
pub struct Grant {
    index: usize,
}

/// Token-bucket state, in thousandths of a use so that refills need no division.
#[derive(Clone, Debug)]
struct Bucket {
    milli_uses: u64,
    last_ms: Option<u64>,
}

const MILLI: u64 = 1000;

/// How far before the last time a `now` may be and still be taken as callers out of order
/// rather than as the clock stepped back ([`Policy::spend`]).
const OUT_OF_ORDER_MS: u64 = 1_000;

/// The rule table with its buckets.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<(Rule, Bucket), MAX_POLICY_RULES>,
}

impl Policy {
    /// A policy that refuses everything.
    pub const fn deny_all() -> Self {
        Self { rules: Vec::new() }
    }

    /// Adds a rule; its budget starts full.
    pub fn allow(&mut self, rule: Rule) -> Result<(), PolicyError> {
        if self
            .rules
            .iter()
            .any(|(r, _)| r.client == rule.client && r.key == rule.key)
        {
            return Err(PolicyError::Duplicate);
        }
        let bucket = Bucket {
            milli_uses: u64::from(rule.budget.burst) * MILLI,
            last_ms: None,
        };
        self.rules
            .push((rule, bucket))
            .map_err(|_| PolicyError::Full)
    }

    /// The rules, in the order they were added.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|(r, _)| r)
    }

    /// Step 1: whether a rule lets `client` use `key` for `usage`. Spends nothing.
    pub fn permit(&self, client: &ClientId, key: &KeyId, usage: KeyUse) -> Result<Grant, Denial> {
        self.permit_if(client, key, |r| r.allows(usage))
    }

    /// Whether a rule lets `client` use `key` at all (for any use): what asking about the
    /// key needs. A rule that allows no use does not count. Spends nothing.
    pub fn permit_any(&self, client: &ClientId, key: &KeyId) -> Result<Grant, Denial> {
        let uses = [KeyUse::Sign, KeyUse::Decrypt, KeyUse::Wrap, KeyUse::Unwrap];
        self.permit_if(client, key, |r| uses.iter().any(|u| r.allows(*u)))
    }

    /// The rule for `client` and `key` (there is at most one), if `allows` it.
    fn permit_if(
        &self,
        client: &ClientId,
        key: &KeyId,
        allows: impl Fn(&Rule) -> bool,
    ) -> Result<Grant, Denial> {
        self.rules
            .iter()
            .position(|(r, _)| &r.client == client && &r.key == key && allows(r))
            .map(|index| Grant { index })
            .ok_or(Denial::Denied)
    }

    /// Counts a use made before this policy existed (recorded on the audit chain before a
    /// restart) against the budget of the rule for it, at the time it was made; records must
    /// come in the order they were made. Without this a restart would refill every budget,
    /// and a client able to make the service restart would get a fresh burst each time.
    /// A use no rule allows now is ignored; an empty budget stays empty. `usage` `None` is
    /// a question about the key (`DescribeKey`), which any rule for it allows
    /// ([`Self::permit_any`]).
    pub fn replay(&mut self, client: &ClientId, key: &KeyId, usage: Option<KeyUse>, at_ms: u64) {
        let grant = match usage {
            Some(usage) => self.permit(client, key, usage),
            None => self.permit_any(client, key),
        };
        if let Ok(grant) = grant {
            let _ = self.spend(grant, at_ms);
        }
    }

    /// How far back [`Self::replay`] needs the uses: the longest time a rule's budget takes
    /// to refill from empty, in milliseconds; `None` when a rule never refills
    /// (`per_second == 0`: every recorded use counts).
    pub fn replay_window_ms(&self) -> Option<u64> {
        self.rules.iter().try_fold(0u64, |longest, (rule, _)| {
            let burst = u64::from(rule.budget.burst);
            let rate = u64::from(rule.budget.per_second);
            (rate > 0).then(|| longest.max((burst * MILLI).div_ceil(rate)))
        })
    }

    /// Step 3: takes one use from the granted rule's budget at time `now_ms`.
    pub fn spend(&mut self, grant: Grant, now_ms: u64) -> Result<(), Denial> {
        let (rule, bucket) = self.rules.get_mut(grant.index).ok_or(Denial::Denied)?;
        let capacity = u64::from(rule.budget.burst).saturating_mul(MILLI);
        let rate = u64::from(rule.budget.per_second); // thousandths of a use per ms
        if let Some(last) = bucket.last_ms {
            let elapsed = now_ms.saturating_sub(last);
            bucket.milli_uses = bucket
                .milli_uses
                .saturating_add(elapsed.saturating_mul(rate))
                .min(capacity);
        }
        // A time before the last one refills nothing. Slightly before (callers that read
        // the clock before another but reached the core after it): the later time stays,
        // so that nothing is refilled twice. Far before (the wall clock stepped back): the
        // budget refills from the new time on; keeping the later one would refuse every
        // use past the burst until the clock caught up with it.
        bucket.last_ms = Some(match bucket.last_ms {
            Some(last) if now_ms < last && last - now_ms <= OUT_OF_ORDER_MS => last,
            _ => now_ms,
        });
        if bucket.milli_uses >= MILLI {
            bucket.milli_uses -= MILLI;
            Ok(())
        } else {
            let missing = MILLI - bucket.milli_uses;
            let retry_after_ms = if rate == 0 || capacity < MILLI {
                u64::MAX
            } else {
                missing.div_ceil(rate)
            };
            Err(Denial::RateLimited { retry_after_ms })
        }
    }
}
