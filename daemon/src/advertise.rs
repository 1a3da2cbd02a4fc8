//! Which of this machine's addresses the node publishes, and which one its URL uses.
//!
//! Not every address reaches the node from the cluster: link-local ones (169.254/16, what a
//! Mac gives itself when DHCP fails; fe80::/10) and those of host-only bridges (a Mac's
//! `bridge100`… of Internet Sharing and virtualization, Linux's `docker0`, `virbr0`) never
//! do. Of the rest, the default route's interface comes first: that is the network the
//! machine reaches others on.

use std::net::IpAddr;

/// Bridges numbered from 100 are made by macOS Internet Sharing and vmnet.
const FIRST_HOST_ONLY_BRIDGE: u32 = 100;

/// True for interfaces whose networks exist only inside this machine.
pub fn is_host_only(name: &str) -> bool {
    if let Some(unit) = name.strip_prefix("bridge") {
        return unit
            .parse::<u32>()
            .is_ok_and(|u| u >= FIRST_HOST_ONLY_BRIDGE);
    }
    [
        "docker", "virbr", "lxcbr", "vmnet", "vboxnet", "utun", "awdl", "llw",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

fn link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The addresses to publish, best first: the default route's interface (`primary`) first,
/// then IPv4 before IPv6, then by address; loopback, link-local and host-only ones left out.
pub fn advertised(interfaces: &[(String, IpAddr)], primary: Option<&str>) -> Vec<IpAddr> {
    let mut keep: Vec<(bool, bool, IpAddr)> = interfaces
        .iter()
        .filter(|(name, ip)| {
            !(ip.is_loopback() || ip.is_unspecified() || link_local(ip) || is_host_only(name))
        })
        .map(|(name, ip)| (Some(name.as_str()) != primary, ip.is_ipv6(), *ip))
        .collect();
    keep.sort();
    let mut out: Vec<IpAddr> = Vec::with_capacity(keep.len());
    for (_, _, ip) in keep {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// This machine's addresses to publish, best first.
pub fn local_addresses() -> Vec<IpAddr> {
    let interfaces: Vec<(String, IpAddr)> = if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| (i.name.clone(), i.ip())).collect())
        .unwrap_or_default();
    let primary = fleet_installer_stub::ethernet::default_route_interface();
    advertised(&interfaces, primary.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifs(list: &[(&str, &str)]) -> Vec<(String, IpAddr)> {
        list.iter()
            .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
            .collect()
    }

    #[test]
    fn link_local_and_host_only_are_left_out_and_the_default_route_comes_first() {
        let list = ifs(&[
            ("lo0", "127.0.0.1"),
            ("en0", "169.254.3.4"),
            ("bridge100", "192.0.2.1"),
            ("en1", "198.51.100.7"),
            ("en0", "203.0.113.5"),
            ("en0", "fe80::1"),
            ("en0", "2001:db8::5"),
            ("docker0", "198.51.100.1"),
            ("bridge0", "198.51.100.200"),
        ]);
        let got: Vec<String> = advertised(&list, Some("en0"))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "203.0.113.5",
                "2001:db8::5",
                "198.51.100.7",
                "198.51.100.200"
            ]
        );
        let got: Vec<String> = advertised(&list, None)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "198.51.100.7",
                "198.51.100.200",
                "203.0.113.5",
                "2001:db8::5"
            ]
        );
    }

    #[test]
    fn host_only_names() {
        for n in [
            "bridge100",
            "bridge101",
            "docker0",
            "virbr0",
            "vmnet8",
            "utun3",
        ] {
            assert!(is_host_only(n), "{n}");
        }
        for n in ["bridge0", "en0", "eth0", "bond0", "br0"] {
            assert!(!is_host_only(n), "{n}");
        }
    }
}
