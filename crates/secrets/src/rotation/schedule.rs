//! Rotation schedules: `every 90m` (or `rate(4 hours)`, as Secrets Manager writes it), or a cron
//! expression in UTC (`0 */4 * * *`, or Secrets Manager's six-field `cron(0 */4 * * ? *)`).
//! The shortest interval is a minute.

use std::fmt;
use std::str::FromStr;

use berth_core::calendar::civil;

/// When a secret is rotated by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every this many seconds (at least 60) after the last rotation.
    Every(u64),
    Cron(Cron),
}

/// A five-field cron expression: minute, hour, day of month, month, day of week (0 or 7 is
/// Sunday). Each field is a set of allowed values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether day of month and day of week were both restricted: then either may match, as in
    /// Vixie cron.
    either_day: bool,
}

const MIN_INTERVAL_SECS: u64 = 60;

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        let every = s.strip_prefix("every ").or_else(|| s.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')));
        if let Some(every) = every {
            let secs = interval(every.trim())
                .ok_or_else(|| format!("schedule `{s}`: write an interval as `every 30m`, `every 4h`, `every 1d` (or `rate(4 hours)`)"))?;
            if secs < MIN_INTERVAL_SECS {
                return Err(format!("schedule `{s}`: the shortest interval is 1 minute; use `berth secret rotate` to rotate now"));
            }
            return Ok(Schedule::Every(secs));
        }
        let fields = match s.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) {
            // Secrets Manager's form has a sixth field, the year: only `*` is taken.
            Some(inner) => {
                let f: Vec<&str> = inner.split_whitespace().collect();
                match f.as_slice() {
                    [head @ .., "*"] if head.len() == 5 => head.to_vec(),
                    _ => return Err(format!("schedule `{s}`: a `cron(…)` expression has six fields and berth takes `*` as the year")),
                }
            }
            None => s.split_whitespace().collect(),
        };
        Cron::parse(s, &fields).map(Schedule::Cron)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(secs) if secs % 86_400 == 0 => write!(f, "every {}d", secs / 86_400),
            Schedule::Every(secs) if secs % 3_600 == 0 => write!(f, "every {}h", secs / 3_600),
            Schedule::Every(secs) if secs % 60 == 0 => write!(f, "every {}m", secs / 60),
            Schedule::Every(secs) => write!(f, "every {secs}s"),
            Schedule::Cron(c) => f.write_str(&c.text),
        }
    }
}

impl Schedule {
    /// The first time after `after` (Unix seconds) that the schedule names.
    pub fn next_after(&self, after: i64) -> i64 {
        match self {
            Schedule::Every(secs) => after + *secs as i64,
            Schedule::Cron(c) => c.next_after(after),
        }
    }
}

/// `90s`, `30m`, `4h`, `1d`, `4 hours`, `1 day`…: seconds.
fn interval(s: &str) -> Option<u64> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let unit = match s[digits..].trim() {
        "s" | "sec" | "second" | "seconds" => 1,
        "m" | "min" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

impl Cron {
    fn parse(text: &str, fields: &[&str]) -> Result<Cron, String> {
        let [minute, hour, day, month, weekday] = fields else {
            return Err(format!(
                "schedule `{text}`: a cron expression has five fields (minute hour day-of-month month day-of-week), or use `every 4h`"
            ));
        };
        let field = |f: &str, name: &str, lo: u32, hi: u32| {
            set(f, lo, hi)
                .ok_or_else(|| format!("schedule `{text}`: the {name} field `{f}` is not a list of values, ranges and steps in {lo}–{hi}"))
        };
        let mut weekdays = field(weekday, "day-of-week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        let restricted = |f: &str| f != "*" && f != "?";
        Ok(Cron {
            text: text.to_owned(),
            minutes: field(minute, "minute", 0, 59)?,
            hours: field(hour, "hour", 0, 23)?,
            days: field(day, "day-of-month", 1, 31)?,
            months: field(month, "month", 1, 12)?,
            weekdays,
            either_day: restricted(day) && restricted(weekday),
        })
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let (d, w) = (self.days & (1 << day) != 0, self.weekdays & (1 << weekday) != 0);
        if self.either_day {
            d || w
        } else {
            d && w
        }
    }

    fn next_after(&self, after: i64) -> i64 {
        // Minute by minute, skipping whole days that cannot match; a valid expression matches
        // within a few years (29 February at the latest).
        let mut t = after.div_euclid(60) * 60 + 60;
        let limit = t + 8 * 366 * 86_400;
        while t < limit {
            let days = t.div_euclid(86_400);
            let (_, month, day) = civil(days);
            let weekday = (days + 4).rem_euclid(7) as u32;
            if self.months & (1 << month) == 0 || !self.day_matches(day, weekday) {
                t = (days + 1) * 86_400;
                continue;
            }
            let minute_of_day = t.rem_euclid(86_400) / 60;
            let (hour, minute) = ((minute_of_day / 60) as u32, (minute_of_day % 60) as u32);
            if self.hours & (1 << hour) == 0 {
                t = days * 86_400 + (i64::from(hour) + 1) * 3_600;
                continue;
            }
            if self.minutes & (1 << minute) != 0 {
                return t;
            }
            t += 60;
        }
        // An expression that never matches (31 February): never.
        i64::MAX
    }
}

/// The values a cron field allows, as bits: `*`, `5`, `1-5`, `*/15`, `0-30/10`, lists of those.
fn set(field: &str, lo: u32, hi: u32) -> Option<u64> {
    let mut bits = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" | "?" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                None => {
                    let v: u32 = r.parse().ok()?;
                    (v, if part.contains('/') { hi } else { v })
                }
            },
        };
        if from < lo || to > hi || from > to {
            return None;
        }
        for v in (from..=to).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Some(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-30T12:34:56Z, a Monday.
    const T: i64 = 1_796_042_096;

    fn next(s: &str) -> i64 {
        s.parse::<Schedule>().map_or(0, |s| s.next_after(T))
    }

    fn error(s: &str) -> String {
        s.parse::<Schedule>().err().unwrap_or_default()
    }

    #[test]
    fn intervals_and_their_minimum() {
        assert_eq!("every 5m".parse::<Schedule>(), Ok(Schedule::Every(300)));
        assert_eq!("rate(4 hours)".parse::<Schedule>(), Ok(Schedule::Every(14_400)));
        assert_eq!("every 1d".parse::<Schedule>().map(|s| s.to_string()), Ok("every 1d".to_owned()));
        assert_eq!(next("every 60s"), T + 60);
        let short = error("every 5s");
        assert!(short.contains("shortest interval is 1 minute"), "{short}");
        assert!("every often".parse::<Schedule>().is_err());
    }

    #[test]
    fn cron_expressions_name_the_next_minute_they_match() {
        assert_eq!(civil(T.div_euclid(86_400)), (2026, 11, 30));
        assert_eq!(next("* * * * *"), T - 56 + 60);
        assert_eq!(next("*/15 * * * *"), T - 56 - 4 * 60 + 15 * 60); // 12:45
        assert_eq!(next("0 */4 * * *"), T - 56 - 34 * 60 + 4 * 3600); // 16:00
        assert_eq!(next("cron(0 3 * * ? *)"), T - 56 - 34 * 60 - 12 * 3600 + 27 * 3600); // 03:00 tomorrow
        assert_eq!(next("30 12 1 * *"), 1_796_128_200); // 1 December 12:30
                                                        // Sunday: 6 December 00:00.
        assert_eq!(next("0 0 * * 0"), next("0 0 * * 7"));
        assert_eq!(civil(next("0 0 * * 7").div_euclid(86_400)), (2026, 12, 6));
        // 29 February: 2028.
        assert_eq!(civil(next("0 0 29 2 *").div_euclid(86_400)), (2028, 2, 29));
        assert_eq!(next("0 0 31 2 *"), i64::MAX);
    }

    #[test]
    fn malformed_cron_names_the_field() {
        for (bad, says) in [
            ("61 * * * *", "minute field `61`"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month field"),
            ("* * * * * *", "five fields"),
            ("cron(0 3 * * ? 2027)", "six fields"),
            ("*/0 * * * *", "minute field"),
        ] {
            let e = error(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
