//! The business day: draw limits, upload quotas, code counters, merchant
//! budgets and "today's" statistics all count by the restaurant's local
//! day, not UTC's.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// The restaurant's calendar date at `now`, `offset_minutes` east of UTC.
pub fn business_day(now: DateTime<Utc>, offset_minutes: i32) -> NaiveDate {
    (now + Duration::minutes(offset_minutes as i64)).date_naive()
}

/// When the business day containing `now` began, in UTC (as stored).
pub fn day_start(now: DateTime<Utc>, offset_minutes: i32) -> NaiveDateTime {
    business_day(now, offset_minutes).and_time(NaiveTime::MIN)
        - Duration::minutes(offset_minutes as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_day_turns_at_local_midnight() {
        let offset = 8 * 60;
        let before = Utc.with_ymd_and_hms(2026, 12, 1, 15, 59, 59).unwrap();
        let after = Utc.with_ymd_and_hms(2026, 12, 1, 16, 0, 0).unwrap();
        assert_eq!(business_day(before, offset).to_string(), "2026-12-01");
        assert_eq!(business_day(after, offset).to_string(), "2026-12-02");
        assert_eq!(day_start(after, offset).to_string(), "2026-12-01 16:00:00");
    }
}
