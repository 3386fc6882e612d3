//! Quota periods: a user's usage counts from the start of its current period and falls back
//! to zero when the next one begins. Periods follow each other back to back from the first
//! one's start (a 30-day quota that began on the 3rd at 14:00 resets every 30 days at 14:00,
//! whatever the restarts in between). Pure: `now` is passed in.

/// When `now` lies in a later period than the one starting at `start` (`period` seconds long;
/// `None`: one period for life), the start of the period holding `now`; the usage then begins
/// again at zero. `None` while the period of `start` lasts, for a clock that went back
/// (`now < start`) and for a zero period.
pub fn roll(period: Option<u64>, start: u64, now: u64) -> Option<u64> {
    let p = period.filter(|&p| p > 0)?;
    let elapsed = now.checked_sub(start)?;
    (elapsed >= p).then(|| start + elapsed / p * p)
}

/// When the period that starts at `start` ends (`None`: never).
pub fn period_end(period: Option<u64>, start: u64) -> Option<u64> {
    period.filter(|&p| p > 0).map(|p| start.saturating_add(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolls_to_the_start_of_the_period_holding_now() {
        const DAY: u64 = 86_400;
        let start = 1_000_000;
        let p = Some(30 * DAY);
        assert_eq!(roll(p, start, start), None);
        assert_eq!(roll(p, start, start + 30 * DAY - 1), None);
        assert_eq!(roll(p, start, start + 30 * DAY), Some(start + 30 * DAY));
        assert_eq!(roll(p, start, start + 95 * DAY), Some(start + 90 * DAY));
        // Rolling again from the new start is a no-op within that period.
        let s2 = roll(p, start, start + 95 * DAY).unwrap();
        assert_eq!(roll(p, s2, start + 95 * DAY), None);
        // A clock that went back, a lifetime quota, a zero period: no reset.
        assert_eq!(roll(p, start, start - 1), None);
        assert_eq!(roll(None, start, u64::MAX), None);
        assert_eq!(roll(Some(0), start, u64::MAX), None);
        assert_eq!(roll(Some(1), 0, u64::MAX), Some(u64::MAX));
        assert_eq!(roll(Some(7), 0, u64::MAX), Some(u64::MAX - u64::MAX % 7));
        assert_eq!(period_end(p, start), Some(start + 30 * DAY));
        assert_eq!(period_end(None, start), None);
        assert_eq!(period_end(Some(5), u64::MAX), Some(u64::MAX));
    }
}
