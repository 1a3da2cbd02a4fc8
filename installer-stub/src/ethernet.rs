//! The wired-Ethernet check: one inventory trait, a Linux (sysfs) and a macOS (SystemConfiguration) implementation, and a pure verdict.
//!
//! "Active wired Ethernet" means: an Ethernet-type interface that is a physical NIC (not
//! Wi-Fi, Bluetooth, Thunderbolt IP or Bridge, a tethered phone, or, unless the package
//! allows it, a virtual interface), whose link is up, with a usable IPv4 address (not
//! link-local: 169.254.x.x is what a Mac assigns itself when DHCP failed). A link whose state
//! is unknown (a Mac driver that reports no media status) is settled by that address.
//! How macOS interfaces are told apart is in [`crate::mac_ethernet`].
//!
//! The messages are the user guide's, word for word; only "this Mac" becomes
//! "this machine" on Linux.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How the messages name the machine: the guide's "this Mac" on macOS.
pub const THIS_MACHINE: &str = if cfg!(target_os = "macos") {
    "this Mac"
} else {
    "this machine"
};

/// What the package demands of the network (chosen by the builder, sealed in the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EthernetPolicy {
    /// Only a physical wired NIC counts (the default).
    Require,
    /// Virtual Ethernet counts too: virtual machines (virtio), veth pairs, bridges.
    AllowVirtual,
    /// Not checked; the summary says so.
    Skip,
}

impl EthernetPolicy {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Self::Require => 1,
            Self::AllowVirtual => 2,
            Self::Skip => 3,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Require),
            2 => Some(Self::AllowVirtual),
            3 => Some(Self::Skip),
            _ => None,
        }
    }
}

impl fmt::Display for EthernetPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Require => "require",
            Self::AllowVirtual => "allow-virtual",
            Self::Skip => "skip",
        })
    }
}

impl FromStr for EthernetPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "require" => Ok(Self::Require),
            "allow-virtual" => Ok(Self::AllowVirtual),
            "skip" => Ok(Self::Skip),
            other => Err(format!(
                "unknown Ethernet policy {other:?} (expected require, allow-virtual or skip)"
            )),
        }
    }
}

/// What an interface is, as far as the check cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceKind {
    /// A physical wired Ethernet NIC.
    Wired,
    /// Wi-Fi.
    Wireless,
    /// Ethernet-like but virtual: veth, virtio, bridge, bond, tap, dummy…
    Virtual,
    /// Anything else (loopback, tunnels, Bluetooth PAN, tethered phones…), with a reason.
    Other(String),
}

/// One network interface as an inventory sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The OS name (`en0`, `eth0`).
    pub name: String,
    /// A human name (macOS's localized display name; the OS name on Linux).
    pub display_name: String,
    /// Its kind.
    pub kind: InterfaceKind,
    /// Link (carrier) up.
    pub link_up: bool,
    /// The system does not know the link state (`link_up` is then false): a usable IPv4
    /// address decides.
    pub link_unknown: bool,
    /// Its IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
}

/// Lists the machine's interfaces; the one seam the tests replace.
pub trait NetworkInventory {
    /// Every interface, in a stable order.
    fn interfaces(&self) -> Result<Vec<Interface>, EthernetError>;
}

/// The outcome of a passed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This interface qualifies.
    Accepted {
        /// Interface name.
        interface: String,
        /// Its usable IPv4 address.
        address: Ipv4Addr,
        /// True when accepted only because the policy allows virtual interfaces.
        is_virtual: bool,
    },
    /// The package's policy is `skip`.
    Skipped,
}

/// One line of the "none are connected" list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterStatus {
    /// Interface name.
    pub name: String,
    /// `inactive`, `active, no IPv4 address`, … as printed after `Status: `.
    pub status: String,
}

/// A failed check. `Display` is the full message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EthernetError {
    /// No Ethernet adapter at all (Wi-Fi only, or nothing).
    NoAdapter {
        /// "this Mac" or "this machine".
        machine: &'static str,
    },
    /// Adapters exist but none is usable.
    NoActive {
        /// Each adapter and why it does not count.
        adapters: Vec<AdapterStatus>,
        /// Some adapter was refused only because it is virtual under `require`.
        virtual_refused: bool,
    },
    /// The interfaces could not be listed.
    Inventory(String),
}

impl fmt::Display for EthernetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAdapter { machine } => write!(
                f,
                "❌ ERROR: No Ethernet adapter found on {machine}\n\
                 \n\
                 Fleet Server requires a wired Ethernet connection for:\n  \
                 • Reliable 24/7 operation\n  \
                 • Consistent network performance\n  \
                 • Server-grade stability\n\
                 \n\
                 Please connect an Ethernet cable and try again."
            ),
            Self::NoActive {
                adapters,
                virtual_refused,
            } => {
                f.write_str(
                    "❌ ERROR: No active Ethernet connection detected\n\
                     \n\
                     Available Ethernet adapters found, but none are connected:\n",
                )?;
                for a in adapters {
                    writeln!(f, "  • {} - Status: {}", a.name, a.status)?;
                }
                f.write_str(
                    "\nPlease connect an Ethernet cable and try again.\n\
                     \n\
                     WiFi connections are NOT supported for Fleet Server installations.",
                )?;
                if *virtual_refused {
                    f.write_str(
                        "\n\nVirtual adapters count only for a package built with --ethernet allow-virtual.",
                    )?;
                }
                Ok(())
            }
            Self::Inventory(why) => {
                write!(f, "❌ ERROR: Cannot check the Ethernet connection: {why}")
            }
        }
    }
}

impl std::error::Error for EthernetError {}

/// Runs the check: `skip` never looks at the network.
pub fn check(
    policy: EthernetPolicy,
    inventory: &dyn NetworkInventory,
    machine: &'static str,
) -> Result<Verdict, EthernetError> {
    if policy == EthernetPolicy::Skip {
        return Ok(Verdict::Skipped);
    }
    let ifs = inventory.interfaces()?;
    evaluate(policy, &ifs, machine)
}

/// Decides on a list of interfaces; pure, so every case is testable without a network.
///
/// Physical adapters are preferred over virtual ones; within a kind, the first by name.
pub fn evaluate(
    policy: EthernetPolicy,
    interfaces: &[Interface],
    machine: &'static str,
) -> Result<Verdict, EthernetError> {
    if policy == EthernetPolicy::Skip {
        return Ok(Verdict::Skipped);
    }
    let mut candidates: Vec<&Interface> = interfaces
        .iter()
        .filter(|i| matches!(i.kind, InterfaceKind::Wired | InterfaceKind::Virtual))
        .collect();
    if candidates.is_empty() {
        return Err(EthernetError::NoAdapter { machine });
    }
    candidates.sort_by(|a, b| {
        (a.kind != InterfaceKind::Wired, &a.name).cmp(&(b.kind != InterfaceKind::Wired, &b.name))
    });
    let mut adapters = Vec::with_capacity(candidates.len());
    let mut virtual_refused = false;
    for i in &candidates {
        let is_virtual = i.kind == InterfaceKind::Virtual;
        let accepted_kind = !is_virtual || policy == EthernetPolicy::AllowVirtual;
        let usable = i.ipv4.iter().copied().find(|a| usable_ipv4(*a));
        let link_up = i.link_up || (i.link_unknown && usable.is_some());
        if let (true, true, Some(address)) = (accepted_kind, link_up, usable) {
            return Ok(Verdict::Accepted {
                interface: i.name.clone(),
                address,
                is_virtual,
            });
        }
        let mut status = if i.link_unknown {
            // Without a link state, only an address could have settled it.
            if i.ipv4.is_empty() {
                "link state unknown, no IPv4 address".to_string()
            } else if usable.is_some() {
                "link state unknown".to_string()
            } else {
                "link state unknown, link-local IPv4 address only".to_string()
            }
        } else if !link_up {
            "inactive".to_string()
        } else if usable.is_some() {
            "active".to_string()
        } else if i.ipv4.is_empty() {
            "active, no IPv4 address".to_string()
        } else {
            "active, link-local IPv4 address only".to_string()
        };
        if !accepted_kind {
            virtual_refused = true;
            status.push_str(" (virtual, not accepted)");
        }
        adapters.push(AdapterStatus {
            name: i.name.clone(),
            status,
        });
    }
    Err(EthernetError::NoActive {
        adapters,
        virtual_refused,
    })
}

/// An address a server can be reached at: not link-local (self-assigned after a DHCP
/// failure), loopback, unspecified or broadcast.
fn usable_ipv4(a: Ipv4Addr) -> bool {
    !(a.is_link_local() || a.is_loopback() || a.is_unspecified() || a.is_broadcast())
}

/// Where IPv4 addresses come from: the system (`if-addrs`), or a fixed list in tests.
pub trait Ipv4Source {
    /// (interface name, address) pairs.
    fn ipv4_addresses(&self) -> Result<Vec<(String, Ipv4Addr)>, EthernetError>;
}

/// The running system's addresses, through `getifaddrs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemIpv4;

impl Ipv4Source for SystemIpv4 {
    fn ipv4_addresses(&self) -> Result<Vec<(String, Ipv4Addr)>, EthernetError> {
        let all = if_addrs::get_if_addrs()
            .map_err(|e| EthernetError::Inventory(format!("listing addresses: {e}")))?;
        Ok(all
            .into_iter()
            .filter_map(|i| match i.addr {
                if_addrs::IfAddr::V4(v4) => Some((i.name, v4.ip)),
                if_addrs::IfAddr::V6(_) => None,
            })
            .collect())
    }
}

impl Ipv4Source for Vec<(String, Ipv4Addr)> {
    fn ipv4_addresses(&self) -> Result<Vec<(String, Ipv4Addr)>, EthernetError> {
        Ok(self.clone())
    }
}

/// Linux: classifies `/sys/class/net/<if>` under a configurable sysfs root.
#[derive(Debug, Clone)]
pub struct SysfsInventory<A = SystemIpv4> {
    sysfs_root: PathBuf,
    addresses: A,
}

impl SysfsInventory<SystemIpv4> {
    /// The real `/sys` and the system's addresses.
    pub fn system() -> Self {
        Self::new("/sys", SystemIpv4)
    }
}

impl<A: Ipv4Source> SysfsInventory<A> {
    /// `sysfs_root` holds `class/net/` (a fixture tree in tests).
    pub fn new(sysfs_root: impl Into<PathBuf>, addresses: A) -> Self {
        Self {
            sysfs_root: sysfs_root.into(),
            addresses,
        }
    }
}

/// What sysfs says about one interface before addresses are merged in.
struct SysfsEntry {
    kind: InterfaceKind,
    link_up: bool,
    master: Option<String>,
}

impl<A: Ipv4Source> NetworkInventory for SysfsInventory<A> {
    fn interfaces(&self) -> Result<Vec<Interface>, EthernetError> {
        let net = self.sysfs_root.join("class/net");
        let dir = std::fs::read_dir(&net)
            .map_err(|e| EthernetError::Inventory(format!("reading {}: {e}", net.display())))?;
        let mut entries = BTreeMap::new();
        for ent in dir.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            entries.insert(name, classify_sysfs(&ent.path()));
        }
        let mut addrs: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for (name, a) in self.addresses.ipv4_addresses()? {
            addrs.entry(name).or_default().push(a);
        }
        let mut out = Vec::with_capacity(entries.len());
        for (name, e) in &entries {
            let mut ipv4 = addrs.get(name).cloned().unwrap_or_default();
            let mut link_up = e.link_up;
            // A NIC enslaved to a bridge or bond carries its master's addresses (the
            // usual server setup `eth0 -> br0`): the wired link is what matters.
            if let Some(m) = e.master.as_ref().and_then(|m| entries.get_key_value(m)) {
                link_up &= m.1.link_up;
                ipv4.extend(addrs.get(m.0).into_iter().flatten().copied());
            }
            out.push(Interface {
                name: name.clone(),
                display_name: name.clone(),
                kind: e.kind.clone(),
                link_up,
                link_unknown: false,
                ipv4,
            });
        }
        Ok(out)
    }
}

/// ARPHRD_ETHER: Ethernet, but also Wi-Fi, veth and bridges.
const ARPHRD_ETHER: u32 = 1;
/// ARPHRD_LOOPBACK.
const ARPHRD_LOOPBACK: u32 = 772;

fn classify_sysfs(dir: &Path) -> SysfsEntry {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string());
    // Reading `carrier` fails with EINVAL while the interface is administratively
    // down: any failure means down.
    let carrier = read("carrier").is_ok_and(|c| c == "1");
    let link_up = carrier && read("operstate").map_or(true, |s| s != "down");
    let master = std::fs::read_link(dir.join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let kind = match read("type").ok().and_then(|t| t.parse::<u32>().ok()) {
        Some(ARPHRD_LOOPBACK) => InterfaceKind::Other("loopback".into()),
        Some(ARPHRD_ETHER) => {
            if dir.join("wireless").exists() || dir.join("phy80211").exists() {
                InterfaceKind::Wireless
            } else if dir.join("bridge").is_dir() || dir.join("bonding").is_dir() {
                InterfaceKind::Virtual
            } else if dir.join("device").exists() {
                let driver = std::fs::read_link(dir.join("device/driver"))
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                match driver.as_str() {
                    // A VM's paravirtual NIC: a device, but not a cable.
                    "virtio_net" | "xen_netfront" => InterfaceKind::Virtual,
                    // An iPhone's USB tethering.
                    "ipheth" => InterfaceKind::Other("tethered phone".into()),
                    _ => InterfaceKind::Wired,
                }
            } else {
                // No device behind it: veth, tap, dummy, macvlan, vxlan…
                InterfaceKind::Virtual
            }
        }
        Some(t) => InterfaceKind::Other(format!("link type {t}")),
        None => InterfaceKind::Other("unknown link type".into()),
    };
    SysfsEntry {
        kind,
        link_up,
        master,
    }
}

/// macOS: SystemConfiguration's interfaces, classified by [`crate::mac_ethernet::classify`].
#[cfg(target_os = "macos")]
#[derive(Debug, Clone, Copy, Default)]
pub struct MacInventory;

#[cfg(target_os = "macos")]
impl NetworkInventory for MacInventory {
    fn interfaces(&self) -> Result<Vec<Interface>, EthernetError> {
        let facts = crate::mac_ethernet::gather::facts()?;
        Ok(crate::mac_ethernet::classify(&facts))
    }
}

/// Mac facts given as data: the macOS classifier run anywhere (the tests' Macs).
#[derive(Debug, Clone)]
pub struct MacFactsInventory(pub Vec<crate::mac_ethernet::MacInterfaceFacts>);

impl NetworkInventory for MacFactsInventory {
    fn interfaces(&self) -> Result<Vec<Interface>, EthernetError> {
        Ok(crate::mac_ethernet::classify(&self.0))
    }
}

/// The interface of the IPv4 default route (what the node advertises first): configd's
/// `PrimaryInterface` on macOS, `/proc/net/route` on Linux. `None` when there is none.
pub fn default_route_interface() -> Option<String> {
    #[cfg(target_os = "macos")]
    {
        crate::mac_ethernet::primary_interface()
    }
    #[cfg(not(target_os = "macos"))]
    {
        std::fs::read_to_string("/proc/net/route")
            .ok()
            .and_then(|t| default_route_in_proc_net_route(&t))
    }
}

/// The default route's interface in the text of Linux's `/proc/net/route` (destination and
/// mask 0, flag RTF_UP), the lowest metric first.
pub fn default_route_in_proc_net_route(text: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (iface, dest, flags, metric, mask) =
                (f.first()?, f.get(1)?, f.get(3)?, f.get(6)?, f.get(7)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let metric: u32 = metric.parse().ok()?;
            (*dest == "00000000" && *mask == "00000000" && flags & RTF_UP != 0)
                .then(|| (metric, iface.to_string()))
        })
        .min()
        .map(|(_, i)| i)
}

/// The inventory for the running OS.
pub fn system_inventory() -> Box<dyn NetworkInventory> {
    #[cfg(target_os = "macos")]
    {
        Box::new(MacInventory)
    }
    #[cfg(not(target_os = "macos"))]
    {
        Box::new(SysfsInventory::system())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, kind: InterfaceKind, up: bool, ipv4: &[[u8; 4]]) -> Interface {
        Interface {
            name: name.into(),
            display_name: name.into(),
            kind,
            link_up: up,
            link_unknown: false,
            ipv4: ipv4.iter().map(|a| Ipv4Addr::from(*a)).collect(),
        }
    }

    const M: &str = "this Mac";

    #[test]
    fn no_adapter_message_is_the_guides() {
        let e = evaluate(
            EthernetPolicy::Require,
            &[iface(
                "en1",
                InterfaceKind::Wireless,
                true,
                &[[192, 0, 2, 5]],
            )],
            M,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "❌ ERROR: No Ethernet adapter found on this Mac\n\nFleet Server requires a wired Ethernet connection for:\n  • Reliable 24/7 operation\n  • Consistent network performance\n  • Server-grade stability\n\nPlease connect an Ethernet cable and try again."
        );
    }

    #[test]
    fn no_active_message_is_the_guides() {
        let e = evaluate(
            EthernetPolicy::Require,
            &[iface("en0", InterfaceKind::Wired, false, &[])],
            M,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "❌ ERROR: No active Ethernet connection detected\n\nAvailable Ethernet adapters found, but none are connected:\n  • en0 - Status: inactive\n\nPlease connect an Ethernet cable and try again.\n\nWiFi connections are NOT supported for Fleet Server installations."
        );
    }

    #[test]
    fn statuses_and_policies() {
        let ifs = [
            iface("en0", InterfaceKind::Wired, true, &[]),
            iface("en1", InterfaceKind::Wired, true, &[[169, 254, 3, 4]]),
            iface("veth0", InterfaceKind::Virtual, true, &[[192, 0, 2, 7]]),
        ];
        let e = evaluate(EthernetPolicy::Require, &ifs, M).unwrap_err();
        let EthernetError::NoActive {
            adapters,
            virtual_refused,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(virtual_refused);
        let statuses: Vec<_> = adapters.iter().map(|a| a.status.as_str()).collect();
        assert_eq!(
            statuses,
            [
                "active, no IPv4 address",
                "active, link-local IPv4 address only",
                "active (virtual, not accepted)"
            ]
        );
        assert!(e.to_string().contains("--ethernet allow-virtual"));
        assert_eq!(
            evaluate(EthernetPolicy::AllowVirtual, &ifs, M),
            Ok(Verdict::Accepted {
                interface: "veth0".into(),
                address: Ipv4Addr::new(192, 0, 2, 7),
                is_virtual: true
            })
        );
        assert_eq!(evaluate(EthernetPolicy::Skip, &[], M), Ok(Verdict::Skipped));
    }

    #[test]
    fn physical_preferred_over_virtual() {
        let ifs = [
            iface("br0", InterfaceKind::Virtual, true, &[[198, 51, 100, 1]]),
            iface("eth1", InterfaceKind::Wired, true, &[[203, 0, 113, 9]]),
        ];
        let v = evaluate(EthernetPolicy::AllowVirtual, &ifs, M).unwrap();
        assert!(
            matches!(v, Verdict::Accepted { ref interface, is_virtual: false, .. } if interface == "eth1")
        );
    }

    #[test]
    fn default_route_from_proc() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            wlan0\t00000000\t0102000A\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            eth0\t00000000\t01020A0A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth0\t0002000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            default_route_in_proc_net_route(text).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            default_route_in_proc_net_route("Iface\tDestination\n"),
            None
        );
    }

    #[test]
    fn policy_strings() {
        for p in [
            EthernetPolicy::Require,
            EthernetPolicy::AllowVirtual,
            EthernetPolicy::Skip,
        ] {
            assert_eq!(p.to_string().parse::<EthernetPolicy>(), Ok(p));
            assert_eq!(EthernetPolicy::from_byte(p.to_byte()), Some(p));
        }
    }
}
