//! Period quotas: requests per calendar day and month in the tenant's time
//! zone. The period key and its end are computed on rollover only, so the
//! typical request is a comparison and an increment.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

/// Which period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    /// Policy name in headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// Nominal window in seconds (for `RateLimit-Policy`).
    pub fn window_secs(self) -> u64 {
        match self {
            Period::Day => 86_400,
            Period::Month => 2_592_000,
        }
    }

    /// The first day of the period containing `date`, and of the next one.
    fn bounds(self, date: Date) -> Option<(Date, Date)> {
        match self {
            Period::Day => Some((date, date.tomorrow().ok()?)),
            Period::Month => {
                let first = date.first_of_month();
                Some((first, first.checked_add(1.month()).ok()?))
            }
        }
    }
}

/// One period's count, as persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Start of the period (local date, `YYYYMMDD`); 0 before first use.
    pub period: u32,
    pub count: u64,
    /// Unix seconds at which the period ends (next local midnight).
    #[serde(skip)]
    pub ends_at: i64,
}

fn date_key(d: Date) -> u32 {
    (d.year() as u32) * 10_000 + (d.month() as u32) * 100 + d.day() as u32
}

impl Counter {
    /// Moves to the period containing `now` if it changed.
    pub(super) fn roll(&mut self, period: Period, now: Timestamp, tz: &TimeZone) {
        if self.ends_at != 0 && now.as_second() < self.ends_at {
            return;
        }
        let Some((start, next)) = period.bounds(now.to_zoned(tz.clone()).date()) else {
            return;
        };
        let key = date_key(start);
        if key != self.period {
            self.period = key;
            self.count = 0;
        }
        self.ends_at = next
            .to_zoned(tz.clone())
            .map(|z| z.timestamp().as_second())
            .unwrap_or(i64::MAX);
    }

    /// Counts one request against `limit` at `now`. `Err(secs)` when the
    /// quota is used up: seconds until the period ends (local midnight).
    pub fn take(&mut self, period: Period, limit: u64, now: Timestamp, tz: &TimeZone) -> Result<u64, u64> {
        self.roll(period, now, tz);
        if self.count >= limit {
            return Err(u64::try_from(self.ends_at - now.as_second()).unwrap_or(0).max(1));
        }
        self.count += 1;
        Ok(limit - self.count)
    }

    /// Seconds until the period ends.
    pub fn resets_in(&self, now: Timestamp) -> u64 {
        u64::try_from(self.ends_at - now.as_second()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn day_quota_resets_at_local_midnight() {
        let tz = TimeZone::get("Europe/Berlin").expect("tz");
        let mut c = Counter::default();
        // 22:30 UTC on 21 Nov is 23:30 in Berlin: 30 minutes to local midnight.
        let now = at("2026-11-21T22:30:00Z");
        assert_eq!(c.take(Period::Day, 2, now, &tz), Ok(1));
        assert_eq!(c.take(Period::Day, 2, now, &tz), Ok(0));
        assert_eq!(c.take(Period::Day, 2, now, &tz), Err(1800));
        // 23:00 UTC is midnight in Berlin: a new day.
        assert_eq!(c.take(Period::Day, 2, at("2026-11-21T23:00:00Z"), &tz), Ok(1));
    }

    #[test]
    fn month_quota_follows_the_calendar_month_in_the_zone() {
        let tz = TimeZone::get("America/New_York").expect("tz");
        let mut c = Counter::default();
        // 03:00 UTC on 1 Dec is still 30 Nov (22:00) in New York.
        let now = at("2026-12-01T03:00:00Z");
        assert_eq!(c.take(Period::Month, 1, now, &tz), Ok(0));
        assert_eq!(c.take(Period::Month, 1, now, &tz), Err(7200));
        assert_eq!(c.take(Period::Month, 1, at("2026-12-01T05:00:00Z"), &tz), Ok(0));
    }

    #[test]
    fn a_stored_count_of_the_same_period_is_kept() {
        let tz = TimeZone::UTC;
        let mut c = Counter {
            period: 20261122,
            count: 5,
            ends_at: 0,
        };
        assert_eq!(c.take(Period::Day, 6, at("2026-11-22T10:00:00Z"), &tz), Ok(0));
        let mut old = Counter {
            period: 20261121,
            count: 5,
            ends_at: 0,
        };
        assert_eq!(old.take(Period::Day, 6, at("2026-11-22T10:00:00Z"), &tz), Ok(5));
    }
}
