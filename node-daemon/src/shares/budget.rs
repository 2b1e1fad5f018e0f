//! The daily byte budget (PlanetLab's `net_thresh_kbyte` / `net_max_kbyte`).
//!
//! Once a sliver has sent `thresh` kilobytes since midnight UTC, its cap becomes what is left
//! of `max` spread over the seconds left in the day, never below its minimum rate. The day
//! resets at midnight UTC. A kilobyte here is 1000 bytes.

/// Seconds in a day.
pub const DAY_SECS: u64 = 86_400;

/// The UTC day number of Unix time `unix_secs` (days since 1970-01-01).
pub fn day_of(unix_secs: u64) -> u64 {
    unix_secs / DAY_SECS
}

/// A sliver's daily budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `net_thresh_kbyte`.
    pub thresh_kbyte: u64,
    /// `net_max_kbyte`.
    pub max_kbyte: u64,
}

impl Budget {
    /// The cap in bit/s the budget imposes at Unix time `unix_secs` (fractional) after
    /// `sent_today` bytes, for a sliver with guaranteed rate `min_rate`; `u64::MAX` while under
    /// the threshold.
    pub fn cap(&self, unix_secs: f64, sent_today: u64, min_rate: u64) -> u64 {
        let thresh = self.thresh_kbyte.saturating_mul(1000);
        if sent_today < thresh {
            return u64::MAX;
        }
        let left_bytes = self
            .max_kbyte
            .saturating_mul(1000)
            .saturating_sub(sent_today);
        let secs_into_day = unix_secs.rem_euclid(DAY_SECS as f64);
        // At least one second, so the last second of the day does not divide by ~0.
        let secs_left = (DAY_SECS as f64 - secs_into_day).max(1.0);
        let rate = left_bytes as f64 * 8.0 / secs_left;
        (rate as u64).max(min_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: f64 = 20_000.0 * DAY_SECS as f64 + 43_200.0;

    fn budget() -> Budget {
        Budget {
            thresh_kbyte: 4_000_000, // 4 GB
            max_kbyte: 5_000_000,    // 5 GB
        }
    }

    #[test]
    fn under_the_threshold_there_is_no_cap() {
        assert_eq!(budget().cap(NOON, 3_999_999_999, 0), u64::MAX);
    }

    #[test]
    fn at_the_threshold_the_rest_is_spread_over_the_day() {
        // 1 GB left over 12 h: 8e9 bit / 43200 s.
        let cap = budget().cap(NOON, 4_000_000_000, 0);
        assert_eq!(cap, (8e9 / 43_200.0) as u64);
    }

    #[test]
    fn never_below_the_minimum() {
        assert_eq!(budget().cap(NOON, 5_000_000_000, 64_000), 64_000);
        assert_eq!(budget().cap(NOON, 6_000_000_000, 64_000), 64_000);
        assert_eq!(budget().cap(NOON, 5_000_000_000, 0), 0);
    }

    #[test]
    fn just_before_midnight_the_cap_is_what_is_left_per_second() {
        let late = 20_000.0 * DAY_SECS as f64 + DAY_SECS as f64 - 0.5;
        let cap = budget().cap(late, 4_999_999_000, 0);
        assert_eq!(cap, 8_000, "1000 bytes in the last (rounded-up) second");
    }

    #[test]
    fn days_change_at_midnight_utc() {
        let midnight = 20_001 * DAY_SECS;
        assert_eq!(day_of(midnight - 1), 20_000);
        assert_eq!(day_of(midnight), 20_001);
    }
}
