//! Standard 5-field cron schedules (`minute hour day-of-month month day-of-week`), as
//! DataImportCron's `schedule` uses them, evaluated in UTC.
//!
//! Accepted: `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b-c`, month and
//! weekday names (`jan`…`dec`, `sun`…`sat`, any case), weekday 7 as Sunday, and the macros
//! `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`. As in
//! Vixie cron (and Go's cronexpr, which CDI uses), when both day-of-month and day-of-week are
//! restricted a day matches if either does.

use crate::api::meta::civil_from_days;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// Why a schedule does not parse; names the field and the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron schedule {schedule:?}: {problem}")]
pub struct CronError {
    schedule: String,
    problem: String,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, names: &[] };
const DAY: Field = Field { name: "day of month", min: 1, max: 31, names: &[] };
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
// 7 is Sunday too; folded into bit 0 after parsing.
const WEEKDAY: Field =
    Field { name: "day of week", min: 0, max: 7, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };

impl Schedule {
    /// Parses a 5-field schedule or a macro.
    ///
    /// # Errors
    /// A wrong field count, a value out of range, or text that is not a number or name.
    pub fn parse(text: &str) -> Result<Self, CronError> {
        let fail = |problem: String| CronError { schedule: text.to_owned(), problem };
        let trimmed = text.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_owned(),
            "@monthly" => "0 0 1 * *".to_owned(),
            "@weekly" => "0 0 * * 0".to_owned(),
            "@daily" | "@midnight" => "0 0 * * *".to_owned(),
            "@hourly" => "0 * * * *".to_owned(),
            other if other.starts_with('@') => return Err(fail(format!("unknown macro {other}"))),
            _ => trimmed.to_owned(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(fail(format!("expected 5 fields, found {}", fields.len())));
        };
        let mut weekdays = parse_field(weekday, &WEEKDAY).map_err(fail)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Self {
            minutes: parse_field(minute, &MINUTE).map_err(fail)?,
            hours: parse_field(hour, &HOUR).map_err(fail)?,
            days: parse_field(day, &DAY).map_err(fail)?,
            months: parse_field(month, &MONTH).map_err(fail)?,
            weekdays,
            days_restricted: !day.starts_with('*'),
            weekdays_restricted: !weekday.starts_with('*'),
        })
    }

    /// The first whole minute strictly after `after` (Unix seconds, UTC) that the schedule
    /// matches, or `None` when none exists within eight years (`0 0 30 2 *`: never).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let mut minute = after.div_euclid(60) + 1;
        // Day by day, then hour by hour, then minute by minute: at most 8 × 366 + 24 + 60 steps.
        let limit = minute + 8 * 366 * 24 * 60;
        while minute < limit {
            let days = minute.div_euclid(24 * 60);
            let (_, month, day) = civil_from_days(days);
            let (month, day) = (month as u32, day as u32);
            let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
            if !self.day_matches(month, day, weekday) {
                minute = (days + 1) * 24 * 60;
                continue;
            }
            let hour = (minute.div_euclid(60) % 24) as u32;
            if !bit(self.hours, hour) {
                minute = (minute.div_euclid(60) + 1) * 60;
                continue;
            }
            if bit(self.minutes, (minute % 60) as u32) {
                return Some(minute * 60);
            }
            minute += 1;
        }
        None
    }

    fn day_matches(&self, month: u32, day: u32, weekday: u32) -> bool {
        if !bit(self.months, month) {
            return false;
        }
        let by_day = bit(self.days, day);
        let by_weekday = bit(self.weekdays, weekday);
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }
}

fn bit(set: u64, n: u32) -> bool {
    set & (1u64 << n) != 0
}

fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{}: bad step {step:?}", field.name))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (field.min, if field.name == WEEKDAY.name { 6 } else { field.max })
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, field)?, value(b, field)?)
        } else {
            let v = value(range, field)?;
            // `5/15` means 5, 20, 35, 50 (from 5 to the end), as in Vixie cron.
            (v, if part.contains('/') { field.max } else { v })
        };
        if low > high {
            return Err(format!("{}: range {range:?} runs backwards", field.name));
        }
        let mut v = low;
        while v <= high {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

fn value(text: &str, field: &Field) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    let named = field.names.iter().position(|n| *n == lower).map(|i| i as u32 + offset(field));
    let v = match named {
        Some(v) => v,
        None => text.parse::<u32>().map_err(|_| format!("{}: {text:?} is not a number", field.name))?,
    };
    if v < field.min || v > field.max {
        return Err(format!("{}: {v} is outside {}-{}", field.name, field.min, field.max));
    }
    Ok(v)
}

/// Names count from 1 for months (`jan` = 1) and from 0 for weekdays (`sun` = 0).
fn offset(field: &Field) -> u32 {
    if field.name == MONTH.name { 1 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::Timestamp;

    fn at(text: &str) -> i64 {
        Timestamp::parse_rfc3339(text).expect("timestamp").0
    }

    fn next(schedule: &str, after: &str) -> String {
        Timestamp(Schedule::parse(schedule).expect("parses").next_after(at(after)).expect("fires"))
            .to_rfc3339()
    }

    #[test]
    fn schedules_fire_at_the_next_matching_minute() {
        let table = [
            ("* * * * *", "2026-11-27T21:00:30Z", "2026-11-27T21:01:00Z"),
            ("*/15 * * * *", "2026-11-27T21:00:00Z", "2026-11-27T21:15:00Z"),
            ("5/20 * * * *", "2026-11-27T21:30:00Z", "2026-11-27T21:45:00Z"),
            ("0 */12 * * *", "2026-11-27T13:00:00Z", "2026-11-28T00:00:00Z"),
            ("30 2 * * *", "2026-11-27T02:30:00Z", "2026-11-28T02:30:00Z"),
            ("0 0 1 * *", "2026-12-15T00:00:00Z", "2027-01-01T00:00:00Z"),
            ("0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("0 9 * * mon-fri", "2026-11-27T10:00:00Z", "2026-11-30T09:00:00Z"),
            ("0 0 * * 7", "2026-11-27T00:00:00Z", "2026-11-29T00:00:00Z"),
            ("0 0 13 * fri", "2026-11-27T01:00:00Z", "2026-12-04T00:00:00Z"),
            ("15 3 * jan,jul *", "2026-11-27T00:00:00Z", "2027-01-01T03:15:00Z"),
            ("@daily", "2026-11-27T21:00:00Z", "2026-11-28T00:00:00Z"),
            ("@hourly", "2026-11-27T21:00:00Z", "2026-11-27T22:00:00Z"),
            ("@weekly", "2026-11-27T21:00:00Z", "2026-11-29T00:00:00Z"),
        ];
        for (schedule, after, expected) in table {
            assert_eq!(next(schedule, after), expected, "{schedule} after {after}");
        }
    }

    #[test]
    fn impossible_dates_never_fire() {
        assert_eq!(Schedule::parse("0 0 30 2 *").expect("parses").next_after(0), None);
    }

    #[test]
    fn bad_schedules_name_the_problem() {
        let table = [
            ("* * * *", "expected 5 fields, found 4"),
            ("60 * * * *", "minute: 60 is outside 0-59"),
            ("* 24 * * *", "hour: 24 is outside 0-23"),
            ("* * 0 * *", "day of month: 0 is outside 1-31"),
            ("* * * 13 *", "month: 13 is outside 1-12"),
            ("* * * * 8", "day of week: 8 is outside 0-7"),
            ("*/0 * * * *", "minute: bad step \"0\""),
            ("5-1 * * * *", "minute: range \"5-1\" runs backwards"),
            ("x * * * *", "minute: \"x\" is not a number"),
            ("@often", "unknown macro @often"),
        ];
        for (schedule, problem) in table {
            let err = Schedule::parse(schedule).expect_err(schedule);
            assert_eq!(err.problem, problem, "{schedule}");
            assert!(err.to_string().contains(problem));
        }
    }
}
