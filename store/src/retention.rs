//! Retention policies: which snapshots to keep, and by which rule. Pure: snapshot times in,
//! decisions out.

use std::collections::HashSet;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Keep rules. A snapshot is kept if any rule keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
    /// Keep everything this recent, relative to the newest snapshot of the group.
    pub within: Option<SignedDuration>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// The calendar rules with their counts.
    fn calendar_rules(&self) -> [(Rule, usize); 5] {
        [
            (Rule::Hourly, self.hourly),
            (Rule::Daily, self.daily),
            (Rule::Weekly, self.weekly),
            (Rule::Monthly, self.monthly),
            (Rule::Yearly, self.yearly),
        ]
    }
}

/// The buckets of the calendar rules, in the local time zone given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Within,
}

impl Rule {
    pub fn as_str(&self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
            Rule::Within => "within",
        }
    }
}

/// The bucket a time falls in for a calendar rule.
pub(crate) fn bucket(rule: Rule, t: Timestamp, tz: &TimeZone) -> i64 {
    let z = t.to_zoned(tz.clone());
    let (y, m, d, h) = (i64::from(z.year()), i64::from(z.month()), i64::from(z.day()), i64::from(z.hour()));
    match rule {
        Rule::Hourly => ((y * 100 + m) * 100 + d) * 100 + h,
        Rule::Daily => (y * 100 + m) * 100 + d,
        Rule::Weekly => {
            let w = z.date().iso_week_date();
            i64::from(w.year()) * 100 + i64::from(w.week())
        }
        Rule::Monthly => y * 100 + m,
        Rule::Yearly => y,
        Rule::Last | Rule::Within => 0,
    }
}

/// For snapshots of one group given as times, newest first: the rules that keep each one (empty:
/// it goes). Each calendar rule keeps the newest snapshot of each of its N most recent buckets.
pub fn apply(policy: &Policy, times_newest_first: &[Timestamp], tz: &TimeZone) -> Vec<Vec<Rule>> {
    let mut reasons = vec![Vec::new(); times_newest_first.len()];
    for r in reasons.iter_mut().take(policy.last) {
        r.push(Rule::Last);
    }
    for (rule, n) in policy.calendar_rules() {
        let mut seen = HashSet::new();
        for (i, t) in times_newest_first.iter().enumerate() {
            if seen.len() >= n {
                break;
            }
            if seen.insert(bucket(rule, *t, tz)) {
                reasons[i].push(rule);
            }
        }
    }
    if let (Some(within), Some(newest)) = (policy.within, times_newest_first.first()) {
        let cutoff = newest.checked_sub(within).unwrap_or(Timestamp::MIN);
        for (i, t) in times_newest_first.iter().enumerate() {
            if *t >= cutoff {
                reasons[i].push(Rule::Within);
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rules read literally: the newest snapshot of each of the N most recent buckets
    /// that hold a snapshot.
    fn brute_force(policy: &Policy, times: &[Timestamp], tz: &TimeZone) -> Vec<bool> {
        let mut keep = vec![false; times.len()];
        for k in keep.iter_mut().take(policy.last) {
            *k = true;
        }
        for (rule, n) in policy.calendar_rules() {
            let mut buckets: Vec<i64> = times.iter().map(|t| bucket(rule, *t, tz)).collect();
            buckets.sort_unstable();
            buckets.dedup();
            buckets.reverse();
            for b in buckets.into_iter().take(n) {
                let newest =
                    (0..times.len()).filter(|&i| bucket(rule, times[i], tz) == b).max_by_key(|&i| times[i]).unwrap();
                keep[newest] = true;
            }
        }
        if let Some(w) = policy.within {
            let newest = times.iter().max().copied();
            for (i, t) in times.iter().enumerate() {
                if newest.is_some_and(|n| n.duration_since(*t) <= w) {
                    keep[i] = true;
                }
            }
        }
        keep
    }

    proptest! {
        #[test]
        fn kept_set_equals_brute_force(
            mut secs in proptest::collection::vec(1_700_000_000i64..1_800_000_000, 0..60),
            last in 0usize..4, hourly in 0usize..4, daily in 0usize..5, weekly in 0usize..4,
            monthly in 0usize..4, yearly in 0usize..3, within_h in proptest::option::of(0i64..2000),
        ) {
            secs.sort_unstable();
            secs.dedup();
            secs.reverse();
            let times: Vec<Timestamp> = secs.iter().map(|s| Timestamp::from_second(*s).unwrap()).collect();
            let policy = Policy { last, hourly, daily, weekly, monthly, yearly, within: within_h.map(SignedDuration::from_hours) };
            for tz in [TimeZone::UTC, TimeZone::get("Europe/Berlin").unwrap_or(TimeZone::UTC)] {
                let got: Vec<bool> = apply(&policy, &times, &tz).iter().map(|r| !r.is_empty()).collect();
                prop_assert_eq!(got, brute_force(&policy, &times, &tz));
            }
        }
    }

    #[test]
    fn daily_keeps_newest_of_each_day() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let times = [
            t("2026-03-03T20:00:00Z"),
            t("2026-03-03T08:00:00Z"),
            t("2026-03-02T10:00:00Z"),
            t("2026-03-01T10:00:00Z"),
        ];
        let p = Policy { daily: 2, ..Policy::default() };
        let r = apply(&p, &times, &TimeZone::UTC);
        assert_eq!(r.iter().map(|r| !r.is_empty()).collect::<Vec<_>>(), vec![true, false, true, false]);
    }
}
