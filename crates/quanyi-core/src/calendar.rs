//! A shop's calendar: its IANA time zone, and the local days and months calendar rules count in.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::IdError;

/// The time zone every calendar rule of a shop follows: daily caps, monthly grants, billing
/// periods, windows. Days start at local midnight (or, on a day whose midnight a daylight-saving
/// change skips, at the first local time that exists); months on the first such instant of
/// their first day. A day is 23 or 25 hours long across a daylight-saving change.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Calendar {
    tz: Tz,
}

impl Default for Calendar {
    /// UTC.
    fn default() -> Self {
        Calendar { tz: Tz::UTC }
    }
}

impl Calendar {
    /// The calendar of an IANA time zone (`Asia/Shanghai`, `Europe/Berlin`, `UTC`).
    ///
    /// # Errors
    /// [`IdError`] for a name the time-zone database does not hold.
    pub fn new(name: &str) -> Result<Calendar, IdError> {
        name.parse::<Tz>()
            .map(|tz| Calendar { tz })
            .map_err(|_| IdError::new("time zone", name))
    }

    /// The UTC calendar.
    pub fn utc() -> Calendar {
        Calendar::default()
    }

    /// The time zone.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The zone's IANA name.
    pub fn name(&self) -> &'static str {
        self.tz.name()
    }

    /// The local date of an instant.
    pub fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.tz).date_naive()
    }

    /// The first instant of a local date: its midnight, or the first local time after it when
    /// a daylight-saving change skips midnight; `None` only past the range of `DateTime`.
    pub fn start_of(&self, date: NaiveDate) -> Option<DateTime<Utc>> {
        let midnight = date.and_hms_opt(0, 0, 0)?;
        // A gap is at most a few hours; step through it a quarter of an hour at a time.
        (0..=4 * 24).find_map(|quarter| {
            let local = midnight + chrono::Duration::minutes(15 * quarter);
            self.tz
                .from_local_datetime(&local)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        })
    }

    /// The start of the local day that holds `at`.
    pub fn day_start(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.start_of(self.local_date(at))
    }

    /// The start of the local month that holds `at`.
    pub fn month_start(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let date = self.local_date(at);
        self.start_of(NaiveDate::from_ymd_opt(date.year(), date.month(), 1)?)
    }
}

impl fmt::Debug for Calendar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Calendar({})", self.tz.name())
    }
}

impl fmt::Display for Calendar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tz.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn days_and_months_start_at_local_midnight() {
        let shanghai = Calendar::new("Asia/Shanghai").unwrap();
        assert_eq!(shanghai.name(), "Asia/Shanghai");
        // 23:59 on Nov 25 in Shanghai is 15:59 UTC.
        let late = utc("2026-11-25T15:59:00Z");
        assert_eq!(
            shanghai.local_date(late),
            NaiveDate::from_ymd_opt(2026, 11, 25).unwrap()
        );
        assert_eq!(shanghai.day_start(late), Some(utc("2026-11-24T16:00:00Z")));
        assert_eq!(
            shanghai.day_start(utc("2026-11-25T16:00:00Z")),
            Some(utc("2026-11-25T16:00:00Z"))
        );
        assert_eq!(
            shanghai.month_start(late),
            Some(utc("2026-10-31T16:00:00Z"))
        );
        assert_eq!(
            Calendar::utc().day_start(late),
            Some(utc("2026-11-25T00:00:00Z"))
        );
    }

    #[test]
    fn days_across_daylight_saving_changes_are_23_or_25_hours() {
        let new_york = Calendar::new("America/New_York").unwrap();
        let start = |d: u32, m: u32| {
            new_york
                .start_of(NaiveDate::from_ymd_opt(2026, m, d).unwrap())
                .unwrap()
        };
        // Clocks go forward on 2026-03-08 and back on 2026-11-01.
        assert_eq!((start(9, 3) - start(8, 3)).num_hours(), 23);
        assert_eq!((start(2, 11) - start(1, 11)).num_hours(), 25);
        assert_eq!(start(8, 3), utc("2026-03-08T05:00:00Z"));
        assert_eq!(start(9, 3), utc("2026-03-09T04:00:00Z"));
        // A zone whose clocks skip midnight: the day starts at the first local time there is.
        let santiago = Calendar::new("America/Santiago").unwrap();
        let skipped = NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
        let first = santiago.start_of(skipped).unwrap();
        assert_eq!(santiago.local_date(first), skipped);
        assert_eq!(
            santiago.local_date(first - chrono::Duration::seconds(1)),
            skipped.pred_opt().unwrap()
        );
    }

    #[test]
    fn unknown_zones_are_refused() {
        for name in ["", "Mars/Olympus", "Asia/Shanghai ", "utc+8"] {
            assert_eq!(
                Calendar::new(name).unwrap_err().kind(),
                crate::ErrorKind::Invalid,
                "{name:?}"
            );
        }
    }
}
