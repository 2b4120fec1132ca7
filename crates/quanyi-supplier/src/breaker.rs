//! A circuit breaker per supplier: a pure state machine driven by `now`, and [`Breakers`], the
//! thread-safe registry the engine shares.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;

use quanyi_core::SupplierId;

/// How a [`CircuitBreaker`] trips and recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (0 is read as 1). Default 5.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls. Default 30 s.
    pub open_for: Duration,
    /// How many probe calls a half-open breaker lets through at once (0 is read as 1). Default 1.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::seconds(30),
            half_open_probes: 1,
        }
    }
}

/// What a breaker does with calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until `until`.
    Open {
        /// When the breaker starts letting probes through.
        until: DateTime<Utc>,
    },
    /// A few probe calls go through; their results close or reopen the breaker.
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: DateTime<Utc>,
    },
    HalfOpen {
        in_flight: u32,
        since: DateTime<Utc>,
    },
}

/// One supplier's circuit breaker.
///
/// Every call the engine makes asks [`CircuitBreaker::try_acquire`] first and reports its end
/// with [`CircuitBreaker::record_success`] or [`CircuitBreaker::record_failure`]. Definite
/// failures and unknown outcomes both count as failures: a timeout is a failure of the channel.
///
/// Transitions (one `match (state, event)` table inside):
///
/// | state | acquire | success | failure |
/// |---|---|---|---|
/// | Closed | admit | reset count | count; at threshold Open |
/// | Open, before until | refuse | ignore (late answer) | ignore (late answer) |
/// | Open, from until on | HalfOpen, admit a probe | Closed | Open again |
/// | HalfOpen | admit while probes < limit | Closed | Open again |
///
/// A probe that never reports back (its worker died) is forgotten after `open_for`, so a
/// half-open breaker cannot stay shut forever.
///
/// ```
/// use chrono::{Duration, TimeZone, Utc};
/// use quanyi_supplier::{BreakerConfig, BreakerState, CircuitBreaker};
///
/// let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().ok_or("time")?;
/// let mut breaker = CircuitBreaker::new(BreakerConfig { failure_threshold: 2, ..Default::default() });
/// breaker.record_failure(t0);
/// breaker.record_failure(t0);
/// assert!(!breaker.try_acquire(t0));
/// let later = t0 + Duration::seconds(30);
/// assert!(breaker.try_acquire(later)); // the probe
/// breaker.record_success(later);
/// assert_eq!(breaker.state(later), BreakerState::Closed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Inner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Acquire,
    Success,
    Failure,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            inner: Inner::Closed { failures: 0 },
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state at `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: DateTime<Utc>) -> BreakerState {
        match self.settled(now) {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } => BreakerState::Open { until },
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The earliest instant from which [`CircuitBreaker::try_acquire`] may admit a call: `now`
    /// when it would admit one now.
    pub fn ready_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self.settled(now) {
            Inner::Closed { .. } => now,
            Inner::Open { until } => until,
            Inner::HalfOpen { in_flight, since } => {
                if in_flight < self.probes() {
                    now
                } else {
                    since + self.config.open_for
                }
            }
        }
    }

    /// Asks to make a call at `now`; `true` means go ahead (and report the result).
    pub fn try_acquire(&mut self, now: DateTime<Utc>) -> bool {
        self.apply(Event::Acquire, now)
    }

    /// Reports a call that succeeded.
    pub fn record_success(&mut self, now: DateTime<Utc>) {
        self.apply(Event::Success, now);
    }

    /// Reports a call that failed, definitely or with an unknown outcome.
    pub fn record_failure(&mut self, now: DateTime<Utc>) {
        self.apply(Event::Failure, now);
    }

    fn threshold(&self) -> u32 {
        self.config.failure_threshold.max(1)
    }

    fn probes(&self) -> u32 {
        self.config.half_open_probes.max(1)
    }

    /// The inner state with time applied: an expired open breaker is half-open, lost probes
    /// are forgotten.
    fn settled(&self, now: DateTime<Utc>) -> Inner {
        match self.inner {
            Inner::Open { until } if now >= until => Inner::HalfOpen {
                in_flight: 0,
                since: now,
            },
            Inner::HalfOpen { since, .. } if now >= since + self.config.open_for => {
                Inner::HalfOpen {
                    in_flight: 0,
                    since: now,
                }
            }
            other => other,
        }
    }

    /// The one transition table. Returns whether an acquire was admitted.
    fn apply(&mut self, event: Event, now: DateTime<Utc>) -> bool {
        let reopen = Inner::Open {
            until: now + self.config.open_for,
        };
        let (next, admitted) = match (self.settled(now), event) {
            (Inner::Closed { failures }, Event::Acquire) => (Inner::Closed { failures }, true),
            (Inner::Closed { .. }, Event::Success) => (Inner::Closed { failures: 0 }, false),
            (Inner::Closed { failures }, Event::Failure) => {
                let failures = failures.saturating_add(1);
                if failures >= self.threshold() {
                    (reopen, false)
                } else {
                    (Inner::Closed { failures }, false)
                }
            }
            (open @ Inner::Open { .. }, Event::Acquire | Event::Success | Event::Failure) => {
                (open, false)
            }
            (Inner::HalfOpen { in_flight, since }, Event::Acquire) => {
                if in_flight < self.probes() {
                    let since = if in_flight == 0 { now } else { since };
                    (
                        Inner::HalfOpen {
                            in_flight: in_flight + 1,
                            since,
                        },
                        true,
                    )
                } else {
                    (Inner::HalfOpen { in_flight, since }, false)
                }
            }
            (Inner::HalfOpen { .. }, Event::Success) => (Inner::Closed { failures: 0 }, false),
            (Inner::HalfOpen { .. }, Event::Failure) => (reopen, false),
        };
        self.inner = next;
        admitted
    }
}

/// The engine's breakers, one per supplier, created closed on first use. Thread-safe: share it
/// by reference or in an `Arc`.
#[derive(Debug, Default)]
pub struct Breakers {
    config: BreakerConfig,
    breakers: Mutex<HashMap<SupplierId, CircuitBreaker>>,
}

impl Breakers {
    /// An empty registry whose breakers use `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            breakers: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, supplier: &SupplierId, f: impl FnOnce(&mut CircuitBreaker) -> T) -> T {
        let mut map = self.breakers.lock();
        let breaker = map
            .entry(supplier.clone())
            .or_insert_with(|| CircuitBreaker::new(self.config));
        f(breaker)
    }

    fn peek<T>(&self, supplier: &SupplierId, f: impl FnOnce(&CircuitBreaker) -> T) -> T {
        let map = self.breakers.lock();
        match map.get(supplier) {
            Some(breaker) => f(breaker),
            None => f(&CircuitBreaker::new(self.config)),
        }
    }

    /// `supplier`'s breaker state at `now`.
    pub fn state(&self, supplier: &SupplierId, now: DateTime<Utc>) -> BreakerState {
        self.peek(supplier, |b| b.state(now))
    }

    /// When `supplier`'s breaker may next admit a call (`now` if it would now).
    pub fn ready_at(&self, supplier: &SupplierId, now: DateTime<Utc>) -> DateTime<Utc> {
        self.peek(supplier, |b| b.ready_at(now))
    }

    /// Asks to call `supplier` at `now`, see [`CircuitBreaker::try_acquire`].
    pub fn try_acquire(&self, supplier: &SupplierId, now: DateTime<Utc>) -> bool {
        self.with(supplier, |b| b.try_acquire(now))
    }

    /// Reports a successful call to `supplier`.
    pub fn record_success(&self, supplier: &SupplierId, now: DateTime<Utc>) {
        self.with(supplier, |b| b.record_success(now));
    }

    /// Reports a failed call to `supplier` (definite or unknown).
    pub fn record_failure(&self, supplier: &SupplierId, now: DateTime<Utc>) {
        self.with(supplier, |b| b.record_failure(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(seconds)
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Acquire(bool),
        Ok,
        Fail,
    }

    /// Applies `(second, op)` steps to a breaker with `config`, checking each acquire's answer
    /// and the state after each step.
    fn check(config: BreakerConfig, steps: &[(i64, Op, BreakerState)]) {
        let mut breaker = CircuitBreaker::new(config);
        for (n, &(second, op, expected)) in steps.iter().enumerate() {
            let now = t(second);
            match op {
                Op::Acquire(admit) => {
                    assert_eq!(
                        breaker.try_acquire(now),
                        admit,
                        "step {n}: {op:?} at {second}"
                    )
                }
                Op::Ok => breaker.record_success(now),
                Op::Fail => breaker.record_failure(now),
            }
            assert_eq!(breaker.state(now), expected, "step {n}: {op:?} at {second}");
        }
    }

    fn cfg(threshold: u32, open_secs: i64, probes: u32) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: threshold,
            open_for: Duration::seconds(open_secs),
            half_open_probes: probes,
        }
    }

    use BreakerState::{Closed, HalfOpen};
    fn open(until: i64) -> BreakerState {
        BreakerState::Open { until: t(until) }
    }

    #[test]
    fn closed_counts_consecutive_failures() {
        check(
            cfg(3, 30, 1),
            &[
                (0, Op::Acquire(true), Closed),
                (0, Op::Fail, Closed),
                (1, Op::Fail, Closed),
                (2, Op::Ok, Closed), // resets the count
                (3, Op::Fail, Closed),
                (4, Op::Fail, Closed),
                (5, Op::Fail, open(35)),
                (6, Op::Acquire(false), open(35)),
            ],
        );
    }

    #[test]
    fn open_ignores_late_answers_and_half_opens_after_until() {
        check(
            cfg(1, 10, 1),
            &[
                (0, Op::Fail, open(10)),
                (5, Op::Ok, open(10)),
                (6, Op::Fail, open(10)),
                (9, Op::Acquire(false), open(10)),
                (10, Op::Acquire(true), HalfOpen),
                (10, Op::Acquire(false), HalfOpen),
                (11, Op::Ok, Closed),
                (11, Op::Acquire(true), Closed),
            ],
        );
    }

    #[test]
    fn failed_probe_reopens() {
        check(
            cfg(1, 10, 1),
            &[
                (0, Op::Fail, open(10)),
                (12, Op::Acquire(true), HalfOpen),
                (13, Op::Fail, open(23)),
                (22, Op::Acquire(false), open(23)),
                (23, Op::Acquire(true), HalfOpen),
                (24, Op::Ok, Closed),
            ],
        );
    }

    #[test]
    fn half_open_admits_the_configured_probes() {
        check(
            cfg(2, 10, 3),
            &[
                (0, Op::Fail, Closed),
                (0, Op::Fail, open(10)),
                (10, Op::Acquire(true), HalfOpen),
                (10, Op::Acquire(true), HalfOpen),
                (11, Op::Acquire(true), HalfOpen),
                (11, Op::Acquire(false), HalfOpen),
                (12, Op::Ok, Closed),
            ],
        );
    }

    #[test]
    fn lost_probes_are_forgotten_after_open_for() {
        check(
            cfg(1, 10, 1),
            &[
                (0, Op::Fail, open(10)),
                (10, Op::Acquire(true), HalfOpen),
                (19, Op::Acquire(false), HalfOpen),
                (20, Op::Acquire(true), HalfOpen),
                (21, Op::Fail, open(31)),
            ],
        );
    }

    #[test]
    fn zero_threshold_and_probes_read_as_one() {
        check(
            cfg(0, 10, 0),
            &[
                (0, Op::Fail, open(10)),
                (10, Op::Acquire(true), HalfOpen),
                (10, Op::Acquire(false), HalfOpen),
            ],
        );
    }

    #[test]
    fn every_state_event_pair() {
        // (setup steps, event, expected admit, expected state), all at second 100 unless set up.
        let config = cfg(2, 10, 1);
        let closed = |b: &mut CircuitBreaker| b.record_failure(t(99));
        let opened = |b: &mut CircuitBreaker| {
            b.record_failure(t(95));
            b.record_failure(t(95));
        };
        let half = |b: &mut CircuitBreaker| {
            b.record_failure(t(80));
            b.record_failure(t(80));
            assert!(b.try_acquire(t(95)));
        };
        type Setup<'a> = (&'a str, &'a dyn Fn(&mut CircuitBreaker));
        let setups: [Setup<'_>; 3] = [("closed", &closed), ("open", &opened), ("half", &half)];
        let table = [
            ("closed", Event::Acquire, true, Closed),
            ("closed", Event::Success, false, Closed),
            ("closed", Event::Failure, false, open(110)),
            ("open", Event::Acquire, false, open(105)),
            ("open", Event::Success, false, open(105)),
            ("open", Event::Failure, false, open(105)),
            ("half", Event::Acquire, false, HalfOpen),
            ("half", Event::Success, false, Closed),
            ("half", Event::Failure, false, open(110)),
        ];
        for (name, event, admit, state) in table {
            let setup = setups.iter().find(|(n, _)| *n == name).unwrap().1;
            let mut b = CircuitBreaker::new(config);
            setup(&mut b);
            assert_eq!(b.apply(event, t(100)), admit, "{name} {event:?}");
            assert_eq!(b.state(t(100)), state, "{name} {event:?}");
        }
    }

    #[test]
    fn ready_at_tells_when_to_come_back() {
        let mut b = CircuitBreaker::new(cfg(1, 10, 1));
        assert_eq!(b.ready_at(t(0)), t(0));
        b.record_failure(t(0));
        assert_eq!(b.ready_at(t(3)), t(10));
        assert_eq!(b.ready_at(t(10)), t(10));
        assert!(b.try_acquire(t(12)));
        assert_eq!(b.ready_at(t(13)), t(22));
    }

    #[test]
    fn registry_keeps_one_breaker_per_supplier() {
        let breakers = Breakers::new(cfg(1, 10, 1));
        let a = SupplierId::new("a").unwrap();
        let b = SupplierId::new("b").unwrap();
        breakers.record_failure(&a, t(0));
        assert_eq!(breakers.state(&a, t(1)), open(10));
        assert_eq!(breakers.state(&b, t(1)), Closed);
        assert!(!breakers.try_acquire(&a, t(1)));
        assert!(breakers.try_acquire(&b, t(1)));
        assert_eq!(breakers.ready_at(&a, t(1)), t(10));

        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Breakers>();
    }

    #[test]
    fn registry_is_shared_across_threads() {
        let breakers = std::sync::Arc::new(Breakers::new(cfg(100, 10, 1)));
        let a = SupplierId::new("a").unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let breakers = breakers.clone();
                let a = a.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        breakers.record_failure(&a, t(0));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(breakers.state(&a, t(0)), open(10));
    }
}
