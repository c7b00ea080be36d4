//! When, and after how long, the shield re-sends a request: pure decisions,
//! no I/O, so that paused-time unit tests can pin each one.
//!
//! - Only a `429` is retried, for every method: Twilio answers it before
//!   processing anything. A `5xx` is never retried here (a `POST` may have
//!   landed; a client that knows its call is idempotent retries it itself).
//! - The wait is the answer's `Retry-After` (delta-seconds or an HTTP date),
//!   honoured as sent; without one, the crate's one capped exponential
//!   backoff with jitter ([`crate::backoff`]).
//! - A wait that would end past the request's deadline
//!   (`shield.max_wait_ms` from its first attempt) is not taken: the 429
//!   goes back to the client, whose own `Retry-After` handling then applies.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::backoff::Backoff;

/// Whether an answer may be re-sent at all (the budget and the deadline
/// decide whether it is).
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
}

/// `Retry-After` as a wait from `now`: delta-seconds, or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`; a date in the past is no wait).
/// Delta-seconds too large for any clock are the longest wait there is
/// (never within a deadline: the 429 is passed through). Anything else is
/// ignored (the backoff applies).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Beyond u64 seconds: still "not before a very long time", never
        // "whenever" (the backoff would re-send within milliseconds).
        return Some(v.parse::<u64>().map_or(Duration::MAX, Duration::from_secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(v, &format)
        .ok()?
        .assume_utc();
    let at = SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How long to wait before re-sending, or `None` when the wait would end
/// past `deadline` (the 429 is then passed through).
pub fn plan(
    retry_after: Option<Duration>,
    backoff: &mut Backoff,
    now: Instant,
    deadline: Instant,
) -> Option<Duration> {
    let wait = retry_after.unwrap_or_else(|| backoff.next_wait());
    (now.checked_add(wait)? <= deadline).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn only_429_is_retried_never_a_5xx() {
        assert!(is_retryable(StatusCode::TOO_MANY_REQUESTS));
        for s in [500, 502, 503, 504] {
            assert!(!is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        assert!(!is_retryable(StatusCode::NOT_FOUND));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(retry_after(&with("2"), now), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(&with(" 0 "), now), Some(Duration::ZERO));
        // 784111777 = Sun, 06 Nov 1994 08:49:37 GMT.
        assert_eq!(
            retry_after(&with("Sun, 06 Nov 1994 08:49:37 GMT"), now),
            Some(Duration::from_secs(7))
        );
        // In the past: no wait.
        assert_eq!(
            retry_after(&with("Sun, 06 Nov 1994 08:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&with("99999999999999999999999999"), now),
            Some(Duration::MAX)
        );
        assert_eq!(retry_after(&with("soon"), now), None);
        assert_eq!(retry_after(&with("-1"), now), None);
        assert_eq!(retry_after(&with("1.5"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_is_not_taken() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(3);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        // Retry-After wins over the backoff, as sent (not capped).
        assert_eq!(
            plan(Some(Duration::from_secs(2)), &mut b, now, deadline),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            plan(Some(Duration::from_secs(3)), &mut b, now, deadline),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            plan(Some(Duration::from_secs(4)), &mut b, now, deadline),
            None
        );
        assert_eq!(plan(Some(Duration::MAX), &mut b, now, deadline), None);
        // The backoff never reaches past the deadline either.
        let late = deadline - Duration::from_millis(10);
        assert_eq!(plan(None, &mut b, late, deadline), None);
        assert!(plan(None, &mut b, now, deadline).is_some());
    }
}
