//! A per-client rate limit for the control API: a token bucket per peer IP address.
//!
//! In: the peer address of each request. Out: allowed, or the time until the next token (the
//! API answers 429 with `Retry-After`). A client may burst up to one second's worth of requests
//! (`control.rate_limit`) and then gets `rate_limit` per second. The table of clients is bounded:
//! past [`MAX_CLIENTS`], buckets that are full again are forgotten, then the longest idle. 0 turns the limit off. Holds
//! no task.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Clients remembered at most; beyond that, idle ones are dropped first.
pub const MAX_CLIENTS: usize = 4096;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-client request limits of the control API.
pub struct RateLimiter {
    per_second: AtomicU32,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second: AtomicU32::new(per_second),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Applies a reloaded `control.rate_limit`.
    pub fn set_rate(&self, per_second: u32) {
        self.per_second.store(per_second, Ordering::Relaxed);
    }

    /// Takes a token for `client`; `Err` carries how long until one is available.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = self.per_second.load(Ordering::Relaxed);
        if rate == 0 {
            return Ok(());
        }
        let rate = rate as f64;
        let mut clients = self.clients.lock();
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            // Forget clients whose bucket has refilled: they lose nothing by it.
            clients.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < rate
            });
            // Every client is active: the one idle longest starts over with a full bucket.
            if clients.len() >= MAX_CLIENTS
                && let Some(oldest) = clients.iter().min_by_key(|(_, b)| b.at).map(|(ip, _)| *ip)
            {
                clients.remove(&oldest);
            }
        }
        let b = clients.entry(client).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * rate;
        b.tokens = (b.tokens + refill).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_per_client_and_refills() {
        let l = RateLimiter::new(3);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check_at(a, t).is_ok());
        }
        let wait = l.check_at(a, t).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(334));
        assert!(
            l.check_at(b, t).is_ok(),
            "another client has its own bucket"
        );
        assert!(l.check_at(a, t + Duration::from_millis(400)).is_ok());
        assert!(l.check_at(a, t + Duration::from_millis(400)).is_err());
        l.set_rate(0);
        assert!(l.check_at(a, t).is_ok(), "0 = no limit");
    }

    #[test]
    fn the_client_table_is_bounded() {
        let l = RateLimiter::new(10);
        let t = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = l.check_at(ip, t);
            let _ = l.check_at(ip, t + Duration::from_secs(1));
        }
        assert!(l.clients.lock().len() <= MAX_CLIENTS);
    }
}
