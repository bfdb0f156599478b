//! Logging that never writes one line per bad datagram.

use std::time::{Duration, Instant};

/// At most one log line per cause in this period.
pub(super) const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Counts occurrences of one cause and says when a log line is due.
#[derive(Debug, Default)]
pub(super) struct Limiter {
    next: Option<Instant>,
    unreported: u64,
}

impl Limiter {
    /// Counts one occurrence. When a line is due (the first occurrence, or
    /// the first one [`LOG_PERIOD`] after the last line), returns how many
    /// occurred since the last line, this one included.
    pub(super) fn hit(&mut self, now: Instant) -> Option<u64> {
        self.unreported = self.unreported.saturating_add(1);
        if self.next.is_some_and(|next| now < next) {
            return None;
        }
        self.next = Some(now + LOG_PERIOD);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// One [`Limiter`] per cause the driver logs.
#[derive(Debug, Default)]
pub(super) struct Logs {
    pub(super) malformed: Limiter,
    pub(super) version: Limiter,
    pub(super) unknown_key: Limiter,
    pub(super) authentication: Limiter,
    pub(super) replay: Limiter,
    pub(super) stale: Limiter,
    pub(super) identity: Limiter,
    pub(super) refused: Limiter,
    pub(super) send_error: Limiter,
    pub(super) recv_error: Limiter,
    pub(super) stall: Limiter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        assert_eq!(l.hit(t0), Some(1));
        for i in 1..1000u64 {
            assert_eq!(l.hit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.hit(t0 + LOG_PERIOD), Some(1000));
        assert_eq!(l.hit(t0 + LOG_PERIOD + Duration::from_secs(1)), None);
    }
}
