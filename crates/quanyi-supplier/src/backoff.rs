//! Retry delays: exponential, capped, optionally jittered; integer milliseconds, no floats.

use chrono::Duration;
use rand::{Rng, RngCore};

/// How a delay is randomised so that many retries do not arrive together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// The exact exponential delay.
    None,
    /// Uniform in `[0, d]`.
    Full,
    /// `d / 2` plus uniform in `[0, d - d / 2]`.
    Equal,
}

/// Exponential backoff: attempt `n` waits `min(max, base * multiplier^n)`, then jitter.
///
/// ```
/// use chrono::Duration;
/// use quanyi_supplier::{Backoff, Jitter};
///
/// let backoff = Backoff {
///     base: Duration::milliseconds(200),
///     max: Duration::seconds(10),
///     multiplier: 2,
///     jitter: Jitter::None,
/// };
/// let mut rng = rand::rngs::mock::StepRng::new(0, 1);
/// assert_eq!(backoff.delay(0, &mut rng), Duration::milliseconds(200));
/// assert_eq!(backoff.delay(3, &mut rng), Duration::milliseconds(1600));
/// assert_eq!(backoff.delay(1000, &mut rng), Duration::seconds(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay of attempt 0 (negative is read as zero).
    pub base: Duration,
    /// The longest delay (negative is read as zero).
    pub max: Duration,
    /// Growth per attempt (0 is read as 1).
    pub multiplier: u32,
    /// Randomisation applied after capping.
    pub jitter: Jitter,
}

impl Default for Backoff {
    /// 500 ms doubling up to 60 s, with full jitter.
    fn default() -> Self {
        Backoff {
            base: Duration::milliseconds(500),
            max: Duration::seconds(60),
            multiplier: 2,
            jitter: Jitter::Full,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.num_milliseconds()).unwrap_or(0)
}

impl Backoff {
    /// The capped exponential delay of `attempt` (0-based) before jitter. Never overflows.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        Duration::milliseconds(i64::try_from(self.ceiling_ms(attempt)).unwrap_or(i64::MAX))
    }

    fn ceiling_ms(&self, attempt: u32) -> u64 {
        let base = millis(self.base);
        let max = millis(self.max);
        let factor = u64::from(self.multiplier.max(1))
            .checked_pow(attempt)
            .unwrap_or(u64::MAX);
        base.saturating_mul(factor).min(max)
    }

    /// The delay before retry `attempt` (0-based), jittered with `rng`. Never panics, whatever
    /// the attempt number; never exceeds `max`.
    pub fn delay(&self, attempt: u32, rng: &mut dyn RngCore) -> Duration {
        let ceiling = self.ceiling_ms(attempt);
        let ms = match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => rng.gen_range(0..=ceiling),
            Jitter::Equal => {
                let half = ceiling / 2;
                half + rng.gen_range(0..=ceiling - half)
            }
        };
        // `ms <= max`, which came from a valid Duration, so it fits.
        Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn backoff(base_ms: i64, max_ms: i64, multiplier: u32, jitter: Jitter) -> Backoff {
        Backoff {
            base: Duration::milliseconds(base_ms),
            max: Duration::milliseconds(max_ms),
            multiplier,
            jitter,
        }
    }

    fn check(b: Backoff, attempt: u32, expected_ms: i64) {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(
            b.delay(attempt, &mut rng),
            Duration::milliseconds(expected_ms),
            "{b:?} attempt {attempt}"
        );
    }

    #[test]
    fn exact_delays_without_jitter() {
        for (b, attempt, expected) in [
            (backoff(100, 10_000, 2, Jitter::None), 0, 100),
            (backoff(100, 10_000, 2, Jitter::None), 1, 200),
            (backoff(100, 10_000, 2, Jitter::None), 6, 6_400),
            (backoff(100, 10_000, 2, Jitter::None), 7, 10_000),
            (backoff(100, 10_000, 2, Jitter::None), u32::MAX, 10_000),
            (backoff(100, 10_000, 3, Jitter::None), 2, 900),
            (backoff(100, 10_000, 1, Jitter::None), 50, 100),
            (backoff(100, 10_000, 0, Jitter::None), 50, 100),
            (backoff(100, 50, 2, Jitter::None), 0, 50),
            (backoff(-5, 1_000, 2, Jitter::None), 3, 0),
            (backoff(100, -1, 2, Jitter::None), 3, 0),
            (backoff(0, 1_000, 2, Jitter::Full), 9, 0),
            (
                backoff(
                    i64::MAX / 1_000_000,
                    i64::MAX / 1_000_000,
                    u32::MAX,
                    Jitter::None,
                ),
                u32::MAX,
                i64::MAX / 1_000_000,
            ),
        ] {
            check(b, attempt, expected);
        }
    }

    #[test]
    fn bounds_for_every_attempt() {
        let mut rng = StdRng::seed_from_u64(1);
        for jitter in [Jitter::None, Jitter::Full, Jitter::Equal] {
            let b = backoff(250, 30_000, 2, jitter);
            let mut previous = Duration::zero();
            for attempt in 0..100 {
                let ceiling = b.ceiling(attempt);
                let d = b.delay(attempt, &mut rng);
                assert!(
                    d >= Duration::zero() && d <= ceiling,
                    "{jitter:?} {attempt}"
                );
                assert!(ceiling <= b.max);
                match jitter {
                    Jitter::None => {
                        assert_eq!(d, ceiling);
                        assert!(d >= previous, "monotone at {attempt}");
                        previous = d;
                    }
                    Jitter::Equal => assert!(d >= ceiling / 2),
                    Jitter::Full => {}
                }
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics_or_exceeds_max(
            base in any::<i32>(),
            max in any::<i32>(),
            multiplier in any::<u32>(),
            attempt in any::<u32>(),
            jitter in prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)],
            seed in any::<u64>(),
        ) {
            let b = backoff(i64::from(base) * 1000, i64::from(max) * 1000, multiplier, jitter);
            let mut rng = StdRng::seed_from_u64(seed);
            let d = b.delay(attempt, &mut rng);
            prop_assert!(d >= Duration::zero());
            prop_assert!(d <= b.max.max(Duration::zero()));
        }
    }
}
