//! Lock state: the token PIN reaches the core only through an `Unlock` request, and wrong
//! PINs are counted.
//!
//! ```text
//! Locked ── Unlock, PIN accepted ──────────────▶ Unlocked ── Lock ──▶ Locked
//! Locked ── MAX_PIN_ATTEMPTS failed logins ────▶ LockedOut ── admin reset ──▶ Locked
//! ```
//!
//! After [`MAX_PIN_ATTEMPTS`] consecutive failed logins the core stops passing PINs to the
//! token at all, until the operator calls [`crate::custody::Custody::reset_pin_counter`]
//! (a local call of the process that owns the core, not a wire request). Every failed
//! `C_Login` counts, not only `CKR_PIN_INCORRECT`: a flaky device may then need a reset, which
//! we prefer to a failure mode that lets guesses through uncounted.
//!
//! The counter survives restarts through the audit chain: every login attempt is on it, so
//! the host recounts the failures since the last success or reset when it reopens the
//! chain ([`crate::audit::PinHistory`]) and starts the core with
//! [`crate::custody::Custody::with_pin_failures`]. A restart does not buy fresh guesses.
//!
//! Limits, on purpose for now:
//! - No time-based back-off; only the administrator reset.
//! - M-of-N shares for administrative operations (key import, key destruction, policy
//!   change) are out of scope; there are no administrative wire operations yet.

use crate::config::MAX_PIN_ATTEMPTS;
use serde::{Deserialize, Serialize};

/// Whether key operations are possible.
///
/// The postcard encoding is the variant index: append new states at the end only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockState {
    /// No PIN given since start or since `Lock`: key operations are refused.
    Locked,
    /// Logged in to the token: key operations go on to policy checks.
    Unlocked,
    /// Too many wrong PINs: `Unlock` is refused without reaching the token.
    LockedOut,
}

/// The lock state machine and the wrong-PIN counter (no I/O: the core calls the token).
#[derive(Clone, Debug)]
pub struct Lock {
    state: LockState,
    failures: u8,
}

impl Lock {
    /// Locked, no wrong PINs counted.
    pub const fn new() -> Self {
        Self {
            state: LockState::Locked,
            failures: 0,
        }
    }

    /// A locked core that has seen `failures` consecutive failed logins (from the audit
    /// chain of an earlier run): locked out if they reach [`MAX_PIN_ATTEMPTS`].
    pub const fn after_failures(failures: u8) -> Self {
        let failures = if failures > MAX_PIN_ATTEMPTS {
            MAX_PIN_ATTEMPTS
        } else {
            failures
        };
        Self {
            state: if failures >= MAX_PIN_ATTEMPTS {
                LockState::LockedOut
            } else {
                LockState::Locked
            },
            failures,
        }
    }

    pub const fn state(&self) -> LockState {
        self.state
    }

    pub const fn is_unlocked(&self) -> bool {
        matches!(self.state, LockState::Unlocked)
    }

    /// Wrong PINs still allowed.
    pub const fn tries_left(&self) -> u8 {
        MAX_PIN_ATTEMPTS.saturating_sub(self.failures)
    }

    /// Whether a PIN may be passed to the token now.
    pub const fn may_try_pin(&self) -> bool {
        matches!(self.state, LockState::Locked) && self.tries_left() > 0
    }

    /// The token accepted the PIN.
    pub fn login_succeeded(&mut self) {
        self.failures = 0;
        self.state = LockState::Unlocked;
    }

    /// The token refused the PIN (or the login failed otherwise).
    pub fn login_failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        self.state = if self.tries_left() == 0 {
            LockState::LockedOut
        } else {
            LockState::Locked
        };
    }

    /// Back to `Locked` (after `Lock`, or an unlock that could not be audited).
    pub fn lock(&mut self) {
        if self.state == LockState::Unlocked {
            self.state = LockState::Locked;
        }
    }

    /// Administrator reset of the wrong-PIN counter.
    pub fn reset(&mut self) {
        self.failures = 0;
        if self.state == LockState::LockedOut {
            self.state = LockState::Locked;
        }
    }
}

impl Default for Lock {
    fn default() -> Self {
        Self::new()
    }
}
