//! Text from callers on its way into a log line.

use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let forged = "bad id\n2026-12-06T08:00:00Z  INFO etee: outcome=\"ok\"\r\u{1b}[2J";
        let shown = LogSafe(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("bad id\\n2026") && shown.contains("\\r\\u{1b}[2J"));
        assert_eq!(LogSafe("Ünïcode — fine").to_string(), "Ünïcode — fine");
    }
}
