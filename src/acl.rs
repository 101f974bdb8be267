//! Who may ask what: lists of networks for namespace-zone queries and for forwarding.

use std::net::IpAddr;

use ipnet::IpNet;

/// A list of networks; an address is allowed if any contains it.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    nets: Vec<IpNet>,
}

impl Acl {
    pub fn new(nets: &[IpNet]) -> Acl {
        Acl { nets: nets.iter().map(|n| n.trunc()).collect() }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// The default for both lists: this host only.
pub fn loopback() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"].iter().filter_map(|s| s.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_by_default_and_mapped_v4() {
        let acl = Acl::new(&loopback());
        assert!(acl.allows("127.0.0.9".parse().unwrap()));
        assert!(acl.allows("::1".parse().unwrap()));
        assert!(acl.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!acl.allows("10.0.0.1".parse().unwrap()));
        let open = Acl::new(&["10.0.0.0/8".parse().unwrap(), "0.0.0.0/0".parse().unwrap()]);
        assert!(open.allows("192.0.2.1".parse().unwrap()));
        assert!(!Acl::new(&[]).allows("127.0.0.1".parse().unwrap()));
    }
}
