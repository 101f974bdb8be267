//! Who may ask what: lists of networks for namespace-zone queries and for forwarding.

use std::net::IpAddr;

use ipnet::IpNet;

/// A list of networks; an address is allowed if any contains it.
///
/// Kept as (network, mask) integers per family: every query is checked against both lists, and
/// `IpNet::contains` (a mask built from the prefix length, per family, per call) was 0.4% of
/// the core at saturation.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Acl {
    pub fn new(nets: &[IpNet]) -> Acl {
        let mut acl = Acl::default();
        for n in nets {
            match n.trunc() {
                IpNet::V4(n) => acl.v4.push((n.network().to_bits(), n.netmask().to_bits())),
                IpNet::V6(n) => acl.v6.push((n.network().to_bits(), n.netmask().to_bits())),
            }
        }
        acl
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        match ip {
            IpAddr::V4(v4) => self.allows_v4(v4.to_bits()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.allows_v4(v4.to_bits()),
                None => {
                    let a = v6.to_bits();
                    self.v6.iter().any(|&(net, mask)| a & mask == net)
                }
            },
        }
    }

    fn allows_v4(&self, a: u32) -> bool {
        self.v4.iter().any(|&(net, mask)| a & mask == net)
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
        // Host bits in a configured network are ignored, as `IpNet::trunc` would.
        let nets = Acl::new(&["192.0.2.77/24".parse().unwrap(), "2001:db8::1/32".parse().unwrap()]);
        assert!(nets.allows("192.0.2.1".parse().unwrap()));
        assert!(!nets.allows("192.0.3.1".parse().unwrap()));
        assert!(nets.allows("2001:db8:ffff::9".parse().unwrap()));
        assert!(!nets.allows("2001:db9::1".parse().unwrap()));
        // A v6 network never holds a mapped v4 client, and ::/0 holds every v6 address.
        let any6 = Acl::new(&["::/0".parse().unwrap()]);
        assert!(any6.allows("2001:db8::1".parse().unwrap()));
        assert!(!any6.allows("::ffff:192.0.2.1".parse().unwrap()));
    }
}
