//! Retention policies: which snapshots to keep, and by which rule. Pure: snapshots in,
//! decisions out (`forget` applies them). Snapshots are grouped by host and paths; each group
//! is judged on its own, newest first.

use std::collections::{BTreeMap, HashSet};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::error::{Error, Result};
use crate::repo::SnapshotEntry;

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

/// Which snapshots a policy is applied to: those of `host` and with `tag`, when given.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub host: Option<String>,
    pub tag: Option<String>,
}

impl Filter {
    fn admits(&self, s: &SnapshotEntry) -> bool {
        self.host.as_ref().is_none_or(|h| &s.snapshot.host == h)
            && self.tag.as_ref().is_none_or(|t| s.snapshot.tags.contains(t))
    }
}

/// A snapshot and the rules that keep it; none: it is to be forgotten.
#[derive(Clone, Debug)]
pub struct Decision {
    pub entry: SnapshotEntry,
    pub reasons: Vec<Rule>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Apply `policy` to the snapshots `filter` admits, grouped by (host, paths): the groups in that
/// order, each newest first (ties by id). Snapshots the filter leaves out get no decision.
pub fn decide(policy: &Policy, snapshots: Vec<SnapshotEntry>, filter: &Filter, tz: &TimeZone) -> Vec<Decision> {
    let mut groups: BTreeMap<(String, Vec<String>), Vec<SnapshotEntry>> = BTreeMap::new();
    for s in snapshots.into_iter().filter(|s| filter.admits(s)) {
        groups.entry((s.snapshot.host.clone(), s.snapshot.paths.clone())).or_default().push(s);
    }
    let mut out = Vec::new();
    for (_, mut snaps) in groups {
        snaps.sort_by(|a, b| b.snapshot.time.cmp(&a.snapshot.time).then(b.id.cmp(&a.id)));
        let times: Vec<Timestamp> = snaps.iter().map(|s| s.snapshot.time).collect();
        let reasons = apply(policy, &times, tz);
        out.extend(snaps.into_iter().zip(reasons).map(|(entry, reasons)| Decision { entry, reasons }));
    }
    out
}

/// `--keep-within`'s duration, `1y2m3w4d5h`: years of 365 days, months of 30, weeks, days, hours.
pub fn parse_duration(s: &str) -> Result<SignedDuration> {
    let bad = |why: &str| Error::InvalidInput(format!("bad duration {s:?}{why}"));
    let mut hours: i64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad(" (like 1y6m, 14d, 36h)"))?;
        num.clear();
        let unit = match c {
            'y' => 365 * 24,
            'm' => 30 * 24,
            'w' => 7 * 24,
            'd' => 24,
            'h' => 1,
            _ => return Err(bad(&format!(": unit {c:?} is not one of y, m, w, d, h"))),
        };
        hours = n.checked_mul(unit).and_then(|h| hours.checked_add(h)).ok_or_else(|| bad(": too long"))?;
    }
    if !num.is_empty() || s.is_empty() {
        return Err(bad(": every number needs a unit (y, m, w, d, h)"));
    }
    Ok(SignedDuration::from_hours(hours))
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

    fn entry(n: u8, host: &str, paths: &[&str], time: &str, tags: &[&str]) -> SnapshotEntry {
        let snapshot = crate::format::Snapshot {
            magic: crate::format::SNAPSHOT_MAGIC.into(),
            version: 2,
            time: time.parse().unwrap(),
            host: host.into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            tree: crate::format::TreeId(crate::format::Hash::of(&[n])),
            parent: None,
            summary: Default::default(),
            original: None,
        };
        SnapshotEntry { id: crate::format::SnapshotId(crate::format::Hash::of(&[n, n])), snapshot }
    }

    /// Each (host, paths) is its own group, judged newest first; the filter leaves out
    /// snapshots of other hosts and without the tag, which get no decision at all.
    #[test]
    fn groups_by_host_and_paths_newest_first() {
        let all = vec![
            entry(1, "a", &["/home"], "2026-03-01T10:00:00Z", &["daily"]),
            entry(2, "a", &["/home"], "2026-03-02T10:00:00Z", &["daily"]),
            entry(3, "a", &["/etc"], "2026-03-01T11:00:00Z", &["daily"]),
            entry(4, "b", &["/home"], "2026-03-03T10:00:00Z", &[]),
            entry(5, "a", &["/home"], "2026-03-02T09:00:00Z", &[]),
        ];
        let last = Policy { last: 1, ..Policy::default() };
        let got: Vec<(u8, bool)> = decide(&last, all.clone(), &Filter::default(), &TimeZone::UTC)
            .iter()
            .map(|d| (all.iter().position(|e| e.id == d.entry.id).unwrap() as u8 + 1, d.keep()))
            .collect();
        // Groups in (host, paths) order: (a, /etc), (a, /home), (b, /home).
        assert_eq!(got, [(3, true), (2, true), (5, false), (1, false), (4, true)]);
        let only = Filter { host: Some("a".into()), tag: Some("daily".into()) };
        let d = decide(&last, all.clone(), &only, &TimeZone::UTC);
        let ids: Vec<_> = d.iter().map(|d| (d.entry.id, d.keep())).collect();
        assert_eq!(ids, [(all[2].id, true), (all[1].id, true), (all[0].id, false)]);
        assert_eq!(d[0].reasons, [Rule::Last]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1d12h").unwrap(), SignedDuration::from_hours(36));
        assert_eq!(parse_duration("2w").unwrap(), SignedDuration::from_hours(336));
        assert_eq!(parse_duration("1y1m").unwrap(), SignedDuration::from_hours(395 * 24));
        for bad in ["", "5", "3x", "d", "99999999999999999999y", "9999999999999999y"] {
            assert!(matches!(parse_duration(bad), Err(Error::InvalidInput(_))), "{bad:?}");
        }
    }
}
