//! Progress lines on standard error for work that can take long (a chain of millions of
//! records, a message of gigabytes), shown only on a terminal: a pipe or a log gets
//! nothing. The first line comes after a second of work, so short runs print none; each
//! line replaces the one before (`\r` and erase to the end of the line), and the last is
//! erased when the work ends, so that what the command says afterwards starts clean.

use std::io::Read;
use std::time::{Duration, Instant};

/// When a progress line is due: one second after the start, then once a second.
pub(crate) struct Meter {
    started: Instant,
    shown_at: Option<Instant>,
    enabled: bool,
}

impl Meter {
    const EVERY: Duration = Duration::from_secs(1);

    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            started: Instant::now(),
            shown_at: None,
            enabled,
        }
    }

    /// On a terminal, `enabled` is `stderr().is_terminal()`.
    pub(crate) fn on_terminal() -> Self {
        Self::new(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    }

    #[cfg(test)]
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Shows the line `line()` makes if one is due (the line is only made then).
    pub(crate) fn show(&mut self, line: impl FnOnce(Duration) -> String) {
        if !self.enabled {
            return;
        }
        let since = self.shown_at.unwrap_or(self.started);
        if since.elapsed() < Self::EVERY {
            return;
        }
        self.shown_at = Some(Instant::now());
        eprint!("\r\x1b[K{}", line(self.started.elapsed()));
    }

    /// Whether a line was shown (and so must be erased at the end).
    #[cfg(test)]
    pub(crate) fn shown(&self) -> bool {
        self.shown_at.is_some()
    }

    /// Erases the last line, if any.
    pub(crate) fn finish(&mut self) {
        if self.shown_at.take().is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

/// An input read with a progress line: `sealing: 1.2 GiB of 4.0 GiB (30 %), 210 MiB/s`.
/// The line is erased when the reader is dropped (the work using it is over).
pub(crate) struct Reading<R> {
    inner: R,
    verb: &'static str,
    read: u64,
    /// The input's size, when it is a regular file.
    total: Option<u64>,
    /// `read` when the clock was last looked at.
    checked_at: u64,
    meter: Meter,
}

impl<R: Read> Reading<R> {
    /// Looking at the clock once a mebibyte keeps its cost out of the read loop.
    const CHECK_EVERY: u64 = 1 << 20;

    pub(crate) fn new(inner: R, verb: &'static str, total: Option<u64>, meter: Meter) -> Self {
        Self {
            inner,
            verb,
            read: 0,
            total,
            checked_at: 0,
            meter,
        }
    }
}

impl<R: Read> Read for Reading<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read - self.checked_at >= Self::CHECK_EVERY {
            self.checked_at = self.read;
            let (verb, read, total) = (self.verb, self.read, self.total);
            self.meter
                .show(|elapsed| bytes_line(verb, read, total, elapsed));
        }
        Ok(n)
    }
}

impl<R> Drop for Reading<R> {
    fn drop(&mut self) {
        self.meter.finish();
    }
}

/// The line for `read` bytes of `total` after `elapsed`.
pub(crate) fn bytes_line(verb: &str, read: u64, total: Option<u64>, elapsed: Duration) -> String {
    let rate = read as f64 / elapsed.as_secs_f64().max(1e-3);
    match total {
        Some(total) if total > 0 => {
            // A file that grew while it was read would pass 100 %: say what was read.
            let percent = (read.min(total) as f64 * 100.0 / total as f64).floor();
            format!(
                "{verb}: {} of {} ({percent:.0} %), {}/s",
                size(read),
                size(total),
                size(rate as u64)
            )
        }
        _ => format!("{verb}: {} read, {}/s", size(read), size(rate as u64)),
    }
}

/// A byte count in binary units, one decimal from KiB on.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(256 << 20), "256.0 MiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn the_line_says_how_far_and_how_fast() {
        let second = Duration::from_secs(1);
        assert_eq!(
            bytes_line("sealing", 3 << 30, Some(4 << 30), 2 * second),
            "sealing: 3.0 GiB of 4.0 GiB (75 %), 1.5 GiB/s"
        );
        // Rounded down: 100 % only once everything is read.
        assert_eq!(
            bytes_line("unsealing", 999, Some(1000), second),
            "unsealing: 999 B of 1000 B (99 %), 999 B/s"
        );
        // A file that grew while being read stays at 100 %.
        assert!(bytes_line("sealing", 2000, Some(1000), second).contains("(100 %)"));
        // Standard input from a pipe: no size to compare with.
        assert_eq!(
            bytes_line("sealing", 5 << 20, None, second),
            "sealing: 5.0 MiB read, 5.0 MiB/s"
        );
        assert_eq!(
            bytes_line("sealing", 0, Some(0), Duration::ZERO),
            "sealing: 0 B read, 0 B/s"
        );
    }

    #[test]
    fn nothing_is_shown_off_a_terminal_or_in_the_first_second() {
        let mut off = Meter::new(false);
        off.started -= Duration::from_secs(5);
        off.show(|_| unreachable!("disabled"));
        assert!(!off.shown());

        let mut fresh = Meter::new(true);
        fresh.show(|_| unreachable!("the first second"));
        assert!(!fresh.shown());

        let mut late = Meter::new(true);
        late.started -= Duration::from_secs(2);
        late.show(|elapsed| {
            assert!(elapsed >= Duration::from_secs(2));
            String::new()
        });
        assert!(late.shown());
        // Not again within the second.
        late.show(|_| unreachable!("within the second"));
        late.finish();
        assert!(!late.shown());
    }

    #[test]
    fn a_reader_counts_what_passes_through_it() {
        let data = vec![7u8; 3 << 20];
        let mut reading = Reading::new(
            &data[..],
            "sealing",
            Some(data.len() as u64),
            Meter::new(false),
        );
        let mut out = Vec::new();
        reading.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(reading.read, data.len() as u64);
        assert_eq!(reading.checked_at, 3 << 20);
    }
}
