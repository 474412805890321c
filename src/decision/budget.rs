//! The review budget: a token bucket refilled at `budget_per_second`, holding up to 10 seconds'
//! worth (so a burst after a quiet spell is absorbed, and a sustained flood is capped at the rate).

use std::time::Instant;

/// How many seconds of budget the bucket can save up (burst = 10 × rate, as documented).
const BURST_SECONDS: f64 = 10.0;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// Starts full. A rate so low that 10 × rate < 1 still allows one review at a time.
    pub fn new(rate_per_second: f64) -> TokenBucket {
        let capacity = (rate_per_second * BURST_SECONDS).max(1.0);
        TokenBucket {
            rate: rate_per_second,
            capacity,
            tokens: capacity,
            last: None,
        }
    }

    /// Takes one token at `now` if there is one. Instants older than the last one seen (threads
    /// racing) add nothing rather than going back in time.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        }
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    pub fn capacity(&self) -> f64 {
        self.capacity
    }
}
