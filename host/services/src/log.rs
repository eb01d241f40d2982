//! Text from callers on its way into a log line, and lines that overload would repeat.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Displays `T` with control characters escaped (`\n`, `\r`, `\u{1b}`, ...): error messages
/// carry caller-controlled text (identifiers, query keys, XML values), and a raw line break
/// in one would let a caller write lines of its own into the service's log.
pub struct LogSafe<T>(pub T);

impl<T: fmt::Display> fmt::Display for LogSafe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        for c in text.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// At most one log line a second for an event that overload repeats (a refused request,
/// a timed-out one): thousands a second would bury everything else in the log. The line
/// that is let through says how many were held back since the previous one.
#[derive(Debug, Default)]
pub struct Throttle {
    second: AtomicI64,
    held_back: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Self {
        Self {
            second: AtomicI64::new(i64::MIN),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now (`n` were held back since the last one),
    /// `None` when one was already written this second (`now`, Unix seconds).
    pub fn allow(&self, now: i64) -> Option<u64> {
        let last = self.second.load(Ordering::Relaxed);
        if last != now
            && self
                .second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.allow(100), Some(0));
        assert_eq!(t.allow(100), None);
        assert_eq!(t.allow(100), None);
        assert_eq!(t.allow(101), Some(2));
        assert_eq!(t.allow(101), None);
        assert_eq!(t.allow(105), Some(1));
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let forged = "bad id\n2026-12-06T08:00:00Z  INFO etee: outcome=\"ok\"\r\u{1b}[2J";
        let shown = LogSafe(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("bad id\\n2026") && shown.contains("\\r\\u{1b}[2J"));
        assert_eq!(LogSafe("Ünïcode — fine").to_string(), "Ünïcode — fine");
    }
}
