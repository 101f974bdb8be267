//! Response rate limiting per client network (UDP only: a TCP client has proven its address).
//! Off by default. As in BIND's RRL, clients are grouped by network (/24 for IPv4, /56 for IPv6
//! by default, as spoofed floods vary the host part) and each group has a token bucket of
//! `responses_per_second`; over it, responses are dropped, except every `slip`-th one which is
//! sent truncated (TC, no records) so a real client behind a spoofed flood can retry over TCP.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub responses_per_second: u32,
    pub slip: u32,
    pub ipv4_prefix_len: u8,
    pub ipv6_prefix_len: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send it truncated.
    Slip,
    Drop,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// How many client networks are tracked before idle ones are forgotten.
const MAX_TRACKED: usize = 100_000;

pub struct RateLimiter {
    settings: RateLimitSettings,
    buckets: DashMap<IpAddr, Bucket>,
    dropped: AtomicU32,
}

impl RateLimiter {
    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// `None` when rate limiting is off.
    pub fn new(settings: RateLimitSettings) -> Option<RateLimiter> {
        (settings.responses_per_second > 0).then(|| RateLimiter {
            settings,
            buckets: DashMap::new(),
            dropped: AtomicU32::new(0),
        })
    }

    fn network(&self, ip: IpAddr) -> IpAddr {
        let net = match ip {
            IpAddr::V4(_) => ipnet::IpNet::new(ip, self.settings.ipv4_prefix_len.min(32)),
            IpAddr::V6(_) => ipnet::IpNet::new(ip, self.settings.ipv6_prefix_len.min(128)),
        };
        net.map(|n| n.network()).unwrap_or(ip)
    }

    pub fn check(&self, ip: IpAddr, now_ms: u64) -> Verdict {
        let rate = self.settings.responses_per_second as f64;
        if self.buckets.len() >= MAX_TRACKED {
            // Forget idle networks; if that frees too little (a flood from that many networks at
            // once), start over, so this runs at most once per MAX_TRACKED / 10 new networks.
            self.buckets.retain(|_, b| now_ms.saturating_sub(b.last_ms) < 1000);
            if self.buckets.len() >= MAX_TRACKED * 9 / 10 {
                self.buckets.clear();
            }
        }
        let mut b = self.buckets.entry(self.network(ip)).or_insert(Bucket { tokens: rate, last_ms: now_ms });
        let elapsed = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last_ms = now_ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Send;
        }
        drop(b);
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if self.settings.slip > 0 && n.is_multiple_of(self.settings.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_network_and_slips() {
        let rl = RateLimiter::new(RateLimitSettings {
            responses_per_second: 10,
            slip: 2,
            ipv4_prefix_len: 24,
            ipv6_prefix_len: 56,
        })
        .unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let same_net: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let verdicts: Vec<Verdict> =
            (0..20).map(|i| rl.check(if i % 2 == 0 { a } else { same_net }, 0)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Send).count(), 10);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Slip).count(), 5);
        assert_eq!(rl.check(other, 0), Verdict::Send);
        // A second later the bucket is full again.
        assert_eq!(rl.check(a, 1000), Verdict::Send);
        assert!(
            RateLimiter::new(RateLimitSettings {
                responses_per_second: 0,
                slip: 2,
                ipv4_prefix_len: 24,
                ipv6_prefix_len: 56
            })
            .is_none()
        );
    }
}
