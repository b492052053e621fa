//! New requests per source IP: a token bucket per address, so one host
//! flooding INVITEs or REGISTERs (a scanner, a broken phone, an attack)
//! is dropped at the socket while every other source's calls go on.
//! Trunks' allowed networks are exempt: a carrier legitimately sends
//! thousands of calls per second from one address. Dialog traffic (ACK,
//! BYE, responses) is never counted. Sans-IO: time is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Sources tracked at most; each costs about 40 bytes. A flood from
/// spoofed addresses beyond this is dropped until idle entries age out.
pub const MAX_SOURCES: usize = 100_000;
/// How often full (idle) buckets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    updated: Instant,
}

#[derive(Debug)]
pub struct SourceLimiter {
    per_second: f32,
    burst: f32,
    exempt: Vec<IpNet>,
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Option<Instant>,
}

impl SourceLimiter {
    /// `per_second` new requests per source on average, bursts of `burst`;
    /// `per_second == 0` switches the limit off.
    pub fn new(per_second: u32, burst: u32, exempt: Vec<IpNet>) -> Self {
        SourceLimiter {
            per_second: per_second as f32,
            burst: burst.max(1) as f32,
            exempt,
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Trunks changed (reload): their networks are exempt from now on.
    pub fn set_exempt(&mut self, exempt: Vec<IpNet>) {
        self.exempt = exempt;
    }

    /// Whether a new request from `ip` may go on.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = crate::routing::canonical(ip);
        if self.per_second == 0.0 || self.exempt.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        self.sweep(now);
        let tracked = self.buckets.len();
        let (per_second, burst) = (self.per_second, self.burst);
        let bucket = match self.buckets.get_mut(&ip) {
            Some(bucket) => bucket,
            None if tracked >= MAX_SOURCES => return false,
            None => self.buckets.entry(ip).or_insert(Bucket {
                tokens: burst,
                updated: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f32();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets.retain(|_, bucket| {
            let refill = now.saturating_duration_since(bucket.updated).as_secs_f32() * per_second;
            bucket.tokens + refill < burst
        });
        if self.buckets.capacity() > 1024 && self.buckets.len() < self.buckets.capacity() / 4 {
            self.buckets.shrink_to(self.buckets.len() * 2);
        }
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_flooding_source_is_limited_and_others_are_not() {
        let start = Instant::now();
        let mut limiter = SourceLimiter::new(10, 20, vec!["10.0.0.0/8".parse().unwrap()]);
        let allowed = (0..1000)
            .filter(|_| limiter.allow(ip("192.0.2.1"), start))
            .count();
        assert_eq!(allowed, 20, "the burst, then nothing");
        assert!(limiter.allow(ip("192.0.2.2"), start), "another source");
        assert!(
            (0..1000).all(|_| limiter.allow(ip("10.1.2.3"), start)),
            "a trunk's network is exempt"
        );
        // Half a second refills five requests.
        let later = start + Duration::from_millis(500);
        let allowed = (0..100)
            .filter(|_| limiter.allow(ip("192.0.2.1"), later))
            .count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn idle_sources_are_forgotten_and_the_map_is_bounded() {
        let start = Instant::now();
        let mut limiter = SourceLimiter::new(1, 2, Vec::new());
        for n in 0..MAX_SOURCES as u32 {
            assert!(limiter.allow(IpAddr::from(n.to_be_bytes()), start));
        }
        assert!(
            !limiter.allow(ip("192.0.2.9"), start),
            "untracked beyond the bound"
        );
        assert_eq!(limiter.tracked(), MAX_SOURCES);
        // Every bucket is full again after 2 s; the next sweep drops them.
        let later = start + Duration::from_secs(11);
        assert!(limiter.allow(ip("192.0.2.9"), later));
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn zero_switches_the_limit_off() {
        let now = Instant::now();
        let mut limiter = SourceLimiter::new(0, 1, Vec::new());
        assert!((0..10_000).all(|_| limiter.allow(ip("192.0.2.1"), now)));
        assert_eq!(limiter.tracked(), 0);
    }
}
