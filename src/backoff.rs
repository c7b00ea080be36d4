//! The one capped exponential backoff: `initial`, `2 x initial`, ... up to
//! `max`, each step with "equal jitter" (half the step fixed, half random),
//! so that many waiters do not come back in the same instant.
//!
//! Used by the shield's 429 re-sends (`crate::shield::retry`), the repair
//! step's retries of one Twilio call (`crate::repair::step`) and the
//! repair's read-back loops (`crate::repair::user`, `crate::repair::check`)
//! and the selftest's cleanup of its throwaway service (`crate::selftest`).
//! The repair's loops take it with [`Backoff::upward_jitter`]: each wait
//! its whole step plus up to a quarter more, never shorter, so a loop
//! makes no more calls in a span than without jitter and a step keeps
//! retrying at least as long (equal jitter, shorter by up to half, made a
//! read-back loop call more often and a step run out of attempts sooner),
//! while concurrent repairs still spread apart.
//! It is a leaf: it uses no module of this crate, so both can import it.
//! What to do when a wait does not fit (pass a 429 through, fail a step
//! with its deadline) belongs to the caller, not here. The jitter is
//! injectable ([`Backoff::next_with`]) and the waits are on tokio's clock,
//! so paused-time tests pin each one.

use std::time::Duration;

use tokio::time::Instant;

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: u32,
    jitter: Jitter,
}

/// How a wait is spread around its step's base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jitter {
    /// `base/2 + j * base/2`: the shield's.
    Equal,
    /// `base + j * base/4`: never shorter than the base (the repair's).
    Upward,
    /// `base`.
    None,
}

/// The next wait would end at or past the limit it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PastLimit;

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            step: 0,
            jitter: Jitter::Equal,
        }
    }

    /// The same waits without jitter: each step is its whole base. For the
    /// repair's loops, whose tests pin how many calls fit in a span (see
    /// `crate::repair::step`).
    pub fn without_jitter(mut self) -> Backoff {
        self.jitter = Jitter::None;
        self
    }

    /// Each wait its whole base plus up to a quarter more, at random: never
    /// shorter than without jitter (see the module doc).
    pub fn upward_jitter(mut self) -> Backoff {
        self.jitter = Jitter::Upward;
        self
    }

    /// Waits within a span (a read-lag grace): from a quarter of it,
    /// doubling up to all of it.
    pub fn within(span: Duration) -> Backoff {
        Backoff::new((span / 4).max(Duration::from_millis(1)), span)
    }

    /// The next wait, with a random jitter (unless
    /// [`Backoff::without_jitter`]).
    pub fn next_wait(&mut self) -> Duration {
        if self.jitter == Jitter::None {
            return self.next_base();
        }
        self.next_with(rand::random::<f64>())
    }

    /// The next wait with jitter `j` in `[0, 1)`: `base/2 + j * base/2`
    /// (equal jitter, the default) or `base + j * base/4`
    /// ([`Backoff::upward_jitter`]), `base` doubling from `initial` up to
    /// `max`.
    pub fn next_with(&mut self, j: f64) -> Duration {
        let base = self.next_base();
        let j = j.clamp(0.0, 1.0);
        match self.jitter {
            Jitter::Equal => base / 2 + (base / 2).mul_f64(j),
            Jitter::Upward => base + (base / 4).mul_f64(j),
            Jitter::None => base,
        }
    }

    fn next_base(&mut self) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << self.step.min(20))
            .min(self.max);
        self.step = self.step.saturating_add(1);
        base
    }

    /// Sleep the next wait, or return [`PastLimit`] at once when it would
    /// end at or past `limit`.
    pub async fn wait(&mut self, limit: Instant) -> Result<(), PastLimit> {
        let wait = self.next_wait();
        if Instant::now() + wait >= limit {
            return Err(PastLimit);
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Sleep the next wait cut to end at `limit` itself (so a last attempt
    /// is made at the limit too); [`PastLimit`] once `limit` has passed.
    pub async fn wait_to(&mut self, limit: Instant) -> Result<(), PastLimit> {
        let now = Instant::now();
        if now >= limit {
            return Err(PastLimit);
        }
        tokio::time::sleep_until((now + self.next_wait()).min(limit)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn upward_jitter_is_never_shorter_than_the_base_nor_a_quarter_longer() {
        let mut b = Backoff::new(ms(100), ms(400)).upward_jitter();
        assert_eq!(b.next_with(0.0), ms(100));
        assert_eq!(b.next_with(1.0), ms(250));
        assert_eq!(b.next_with(0.5), ms(450));
        for _ in 0..100 {
            let w = b.next_wait();
            assert!(w >= ms(400) && w <= ms(500), "{w:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_equal_jitter() {
        let mut b = Backoff::new(ms(100), ms(500));
        assert_eq!(b.next_with(0.0), ms(50));
        assert_eq!(b.next_with(0.999_999), ms(200) - Duration::from_nanos(100));
        assert_eq!(b.next_with(0.5), ms(300));
        // Capped at 500: between 250 and 500 from here on, forever.
        for _ in 0..100 {
            let w = b.next_wait();
            assert!(w >= ms(250) && w <= ms(500), "{w:?}");
        }
    }

    #[test]
    fn within_a_span_starts_at_a_quarter_of_it() {
        let mut b = Backoff::within(ms(800));
        assert_eq!(b.next_with(1.0), ms(200));
        assert_eq!(b.next_with(1.0), ms(400));
        assert_eq!(b.next_with(1.0), ms(800));
        assert_eq!(b.next_with(1.0), ms(800), "capped at the span");
        assert_eq!(Backoff::within(Duration::ZERO).next_with(1.0), ms(1));
    }

    #[test]
    fn without_jitter_each_wait_is_its_whole_step() {
        let mut b = Backoff::new(ms(100), ms(300)).without_jitter();
        let waits: Vec<_> = (0..4).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(300), ms(300)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_would_pass_the_limit_is_not_slept() {
        let start = Instant::now();
        let mut b = Backoff::new(ms(100), ms(100)).without_jitter();
        // Every wait is 100 ms: one fits before 150 ms, a second not.
        assert_eq!(b.wait(start + ms(150)).await, Ok(()));
        assert_eq!(start.elapsed(), ms(100));
        assert_eq!(b.wait(start + ms(150)).await, Err(PastLimit));
        assert_eq!(start.elapsed(), ms(100), "nothing slept when refused");
        // Jittered, a wait is never longer than its step.
        let mut b = Backoff::new(ms(100), ms(100));
        let before = Instant::now();
        assert_eq!(b.wait(before + ms(101)).await, Ok(()));
        let slept = before.elapsed();
        assert!(slept >= ms(50) && slept <= ms(100), "{slept:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_to_ends_at_the_limit_then_refuses() {
        let start = Instant::now();
        let limit = start + ms(300);
        let mut b = Backoff::new(ms(1_000), ms(1_000));
        // The wait (500..=1000 ms) is cut to end at the limit itself.
        assert_eq!(b.wait_to(limit).await, Ok(()));
        assert_eq!(Instant::now(), limit);
        assert_eq!(b.wait_to(limit).await, Err(PastLimit));
    }
}
