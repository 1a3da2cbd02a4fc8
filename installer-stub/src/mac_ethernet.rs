//! macOS wired-Ethernet inventory: a pure classifier over what SystemConfiguration says (tested on Linux) and a small gatherer behind `cfg(target_os = "macos")`.
//!
//! SystemConfiguration reports many things as type `Ethernet` that are no cable to a LAN:
//! the Thunderbolt IP ports (`Thunderbolt 1`, `Thunderbolt 2`, IOKit class
//! `AppleThunderboltIPPort`), a tethered iPhone (`AppleUSBEthernetHost`), Bluetooth PAN
//! (`IOBluetoothBNEPDriver`), and every NIC of a Mac that is itself a virtual machine. configd
//! tells them apart from the IOKit controller class, and exports what it found as
//! `_SCNetworkInterfaceIs{Thunderbolt,Tethered,BluetoothPAN,Builtin,HiddenInterface}`
//! (configd's SCNetworkInterface.c); a tethered phone's and Bluetooth PAN's link is also
//! marked `Expensive` in `State:/Network/Interface/<bsd>/Link`. The classifier uses only those
//! facts, never the localized display names (which follow the system language).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::ethernet::{Interface, InterfaceKind};

/// What macOS says about one interface, as plain data (filled by the gatherer on a Mac, by
/// hand in tests).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MacInterfaceFacts {
    /// BSD name: `en0`, `bond0`, `bridge0`.
    pub bsd_name: String,
    /// Localized display name; shown to people, never used to decide.
    pub display_name: String,
    /// `SCNetworkInterfaceGetInterfaceType`: `Ethernet`, `IEEE80211`, `Bond`, `Bridge`,
    /// `VLAN`, `FireWire`, …
    pub sc_type: String,
    /// Built into the Mac (IOKit `IOBuiltin`/`IOPrimaryInterface`); a USB or Thunderbolt
    /// adapter is not.
    pub builtin: bool,
    /// A Thunderbolt IP port, or the Thunderbolt Bridge over them: a Mac-to-Mac cable.
    pub thunderbolt_ip: bool,
    /// A tethered iPhone or iPad (USB).
    pub tethered: bool,
    /// Bluetooth PAN.
    pub bluetooth_pan: bool,
    /// Hidden by the system (not offered in System Settings).
    pub hidden: bool,
    /// The link dictionary's `Expensive` (set for tethered and cellular links).
    pub expensive: bool,
    /// The Mac itself runs in a virtual machine (`kern.hv_vmm_present`): its Ethernet is
    /// emulated.
    pub in_virtual_machine: bool,
    /// For a bond: its members' BSD names.
    pub bond_members: Vec<String>,
    /// The link dictionary's `Active`; `None` when the key is absent (the driver reports no
    /// media status) or there is no link dictionary.
    pub link_active: Option<bool>,
    /// IPv4 addresses on this interface.
    pub ipv4: Vec<Ipv4Addr>,
}

/// SystemConfiguration's interface type strings (`kSCNetworkInterfaceType…`).
pub mod sc_type {
    /// Wired Ethernet, and everything else Ethernet-framed (see the module's doc).
    pub const ETHERNET: &str = "Ethernet";
    /// Wi-Fi.
    pub const WIFI: &str = "IEEE80211";
    /// A link aggregate of Ethernet ports.
    pub const BOND: &str = "Bond";
    /// A bridge (Thunderbolt Bridge, Internet Sharing, virtual machines).
    pub const BRIDGE: &str = "Bridge";
    /// A VLAN on an Ethernet port.
    pub const VLAN: &str = "VLAN";
}

/// Bridges numbered from 100 are made by Internet Sharing and virtualization (vmnet) for
/// hosts behind this Mac: host-only, never the way to the LAN.
const FIRST_HOST_ONLY_BRIDGE: u32 = 100;

/// A plain, physical wired Ethernet port by what SystemConfiguration says (what configd's
/// `_SCNetworkInterfaceIsPhysicalEthernet` accepts, and what a bond may hold).
fn physical_ethernet(f: &MacInterfaceFacts) -> bool {
    f.sc_type == sc_type::ETHERNET
        && !(f.thunderbolt_ip || f.tethered || f.bluetooth_pan || f.hidden || f.expensive)
}

/// Why an Ethernet-framed interface is not a wired adapter, if it is not.
fn not_wired(f: &MacInterfaceFacts) -> Option<&'static str> {
    if f.thunderbolt_ip {
        Some("Thunderbolt IP")
    } else if f.tethered {
        Some("tethered phone")
    } else if f.bluetooth_pan {
        Some("Bluetooth PAN")
    } else if f.hidden {
        Some("hidden")
    } else if f.expensive {
        Some("metered link")
    } else {
        None
    }
}

fn bsd_unit(name: &str) -> Option<u32> {
    let digits = name.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    digits.parse().ok()
}

/// Turns macOS facts into the check's interfaces. Pure: every Mac the tests model goes
/// through here exactly as on a Mac.
///
/// A bond's members carry no addresses of their own (the bond has them): they are listed as
/// members, and the bond counts as wired when all its members are physical Ethernet ports.
pub fn classify(facts: &[MacInterfaceFacts]) -> Vec<Interface> {
    let by_name: BTreeMap<&str, &MacInterfaceFacts> =
        facts.iter().map(|f| (f.bsd_name.as_str(), f)).collect();
    let mut bond_of: BTreeMap<&str, &str> = BTreeMap::new();
    for f in facts.iter().filter(|f| f.sc_type == sc_type::BOND) {
        for m in &f.bond_members {
            bond_of.insert(m.as_str(), f.bsd_name.as_str());
        }
    }
    let mut out: Vec<Interface> = facts
        .iter()
        .map(|f| {
            let mut link = f.link_active;
            let kind = if let Some(bond) = bond_of.get(f.bsd_name.as_str()) {
                InterfaceKind::Other(format!("member of {bond}"))
            } else {
                match f.sc_type.as_str() {
                    sc_type::WIFI => InterfaceKind::Wireless,
                    sc_type::ETHERNET => match not_wired(f) {
                        Some(why) => InterfaceKind::Other(why.into()),
                        None if f.in_virtual_machine => InterfaceKind::Virtual,
                        None => InterfaceKind::Wired,
                    },
                    sc_type::BOND => {
                        let members: Vec<&MacInterfaceFacts> = f
                            .bond_members
                            .iter()
                            .filter_map(|m| by_name.get(m.as_str()).copied())
                            .collect();
                        // A bond's link is up when a member's is (configd reports the
                        // bond's own `Active` too; a member's settles a missing one).
                        if link.is_none() && !members.is_empty() {
                            link = members
                                .iter()
                                .filter_map(|m| m.link_active)
                                .reduce(|a, b| a || b);
                        }
                        let all_physical = !members.is_empty()
                            && members.len() == f.bond_members.len()
                            && members.iter().all(|m| physical_ethernet(m));
                        if all_physical && !members.iter().any(|m| m.in_virtual_machine) {
                            InterfaceKind::Wired
                        } else {
                            InterfaceKind::Virtual
                        }
                    }
                    sc_type::BRIDGE => {
                        if f.thunderbolt_ip {
                            InterfaceKind::Other("Thunderbolt Bridge".into())
                        } else if bsd_unit(&f.bsd_name).is_some_and(|u| u >= FIRST_HOST_ONLY_BRIDGE)
                        {
                            InterfaceKind::Other("host-only bridge".into())
                        } else {
                            InterfaceKind::Virtual
                        }
                    }
                    sc_type::VLAN => InterfaceKind::Virtual,
                    other => InterfaceKind::Other(other.to_string()),
                }
            };
            Interface {
                name: f.bsd_name.clone(),
                display_name: f.display_name.clone(),
                kind,
                link_up: link.unwrap_or(false),
                link_unknown: link.is_none(),
                ipv4: f.ipv4.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The interface of the IPv4 default route, as configd publishes it
/// (`State:/Network/Global/IPv4`, key `PrimaryInterface`); `None` when there is none.
#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
pub fn primary_interface() -> Option<String> {
    use system_configuration::core_foundation::base::{CFType, TCFType};
    use system_configuration::core_foundation::dictionary::CFDictionary;
    use system_configuration::core_foundation::propertylist::CFPropertyList;
    use system_configuration::core_foundation::string::CFString;
    use system_configuration::dynamic_store::SCDynamicStoreBuilder;

    let store = SCDynamicStoreBuilder::new("fleet-primary-interface").build()?;
    let global = store
        .get(CFString::from_static_string("State:/Network/Global/IPv4"))
        .and_then(CFPropertyList::downcast_into::<CFDictionary>)?;
    let key = CFString::from_static_string("PrimaryInterface");
    let value = *global.find(key.as_CFTypeRef())?;
    if value.is_null() {
        return None;
    }
    // SAFETY: `value` is a non-null CF object held by `global`, alive here; the get rule
    // retains it for the wrapper, and `downcast` checks its type before it is read.
    let value = unsafe { CFType::wrap_under_get_rule(value) };
    value.downcast::<CFString>().map(|s| s.to_string())
}

/// The gatherer: fills [`MacInterfaceFacts`] from SystemConfiguration (public API and the
/// configd SPI named in the module's doc), the dynamic store and `getifaddrs`.
#[cfg(target_os = "macos")]
pub mod gather {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use system_configuration::core_foundation::array::CFArray;
    use system_configuration::core_foundation::base::TCFType;
    use system_configuration::core_foundation::boolean::CFBoolean;
    use system_configuration::core_foundation::dictionary::CFDictionary;
    use system_configuration::core_foundation::propertylist::CFPropertyList;
    use system_configuration::core_foundation::string::CFString;
    use system_configuration::dynamic_store::SCDynamicStoreBuilder;
    use system_configuration::network_configuration::{SCNetworkInterface, get_interfaces};
    use system_configuration::sys::network_configuration::SCNetworkInterfaceRef;

    use super::{MacInterfaceFacts, sc_type};
    use crate::ethernet::{EthernetError, Ipv4Source, SystemIpv4};

    // configd's SPI (SCNetworkConfigurationPrivate.h), exported by SystemConfiguration since
    // macOS 10.5–10.9; each returns a Boolean (u8) and only reads the interface. The
    // framework is linked by system-configuration-sys.
    #[allow(unsafe_code)]
    unsafe extern "C" {
        fn _SCNetworkInterfaceIsBuiltin(i: SCNetworkInterfaceRef) -> u8;
        fn _SCNetworkInterfaceIsThunderbolt(i: SCNetworkInterfaceRef) -> u8;
        fn _SCNetworkInterfaceIsTethered(i: SCNetworkInterfaceRef) -> u8;
        fn _SCNetworkInterfaceIsBluetoothPAN(i: SCNetworkInterfaceRef) -> u8;
        fn _SCNetworkInterfaceIsHiddenInterface(i: SCNetworkInterfaceRef) -> u8;
        fn SCBondInterfaceGetMemberInterfaces(
            bond: SCNetworkInterfaceRef,
        ) -> system_configuration::core_foundation::array::CFArrayRef;
    }

    /// The SPI flags of one interface.
    #[allow(unsafe_code)]
    fn spi_flags(i: &SCNetworkInterface) -> [bool; 5] {
        let r = i.as_concrete_TypeRef();
        // SAFETY: `r` is a valid SCNetworkInterfaceRef for the life of `i`; the functions
        // only read it and check its type themselves (isA_SCNetworkInterface).
        unsafe {
            [
                _SCNetworkInterfaceIsBuiltin(r) != 0,
                _SCNetworkInterfaceIsThunderbolt(r) != 0,
                _SCNetworkInterfaceIsTethered(r) != 0,
                _SCNetworkInterfaceIsBluetoothPAN(r) != 0,
                _SCNetworkInterfaceIsHiddenInterface(r) != 0,
            ]
        }
    }

    /// BSD names of a bond's members.
    #[allow(unsafe_code)]
    fn bond_members(i: &SCNetworkInterface) -> Vec<String> {
        // SAFETY: a valid bond interface; the array follows the get rule (owned by the
        // bond, retained by the wrapper) and is checked for null first.
        let members: Option<CFArray<SCNetworkInterface>> = unsafe {
            let a = SCBondInterfaceGetMemberInterfaces(i.as_concrete_TypeRef());
            (!a.is_null()).then(|| CFArray::wrap_under_get_rule(a))
        };
        members
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.bsd_name().map(|s| s.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True on a Mac that is itself a virtual machine.
    fn in_virtual_machine() -> bool {
        std::process::Command::new("/usr/sbin/sysctl")
            .args(["-n", "kern.hv_vmm_present"])
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "1")
    }

    /// Every interface SystemConfiguration lists, with its link and addresses.
    pub fn facts() -> Result<Vec<MacInterfaceFacts>, EthernetError> {
        let store = SCDynamicStoreBuilder::new("fleet-installer-stub")
            .build()
            .ok_or_else(|| EthernetError::Inventory("cannot open the dynamic store".into()))?;
        let active_key = CFString::from_static_string("Active");
        let expensive_key = CFString::from_static_string("Expensive");
        // kCFBooleanTrue is a process-wide singleton: a pointer comparison is exact.
        let cf_true = CFBoolean::true_value();
        let true_ref = cf_true.as_CFTypeRef();
        let mut addrs: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for (name, a) in SystemIpv4.ipv4_addresses()? {
            addrs.entry(name).or_default().push(a);
        }
        let vm = in_virtual_machine();
        let mut out = Vec::new();
        for iface in get_interfaces().iter() {
            let Some(bsd) = iface.bsd_name().map(|s| s.to_string()) else {
                continue;
            };
            let sc_type = iface
                .interface_type_string()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let [builtin, thunderbolt_ip, tethered, bluetooth_pan, hidden] = spi_flags(&iface);
            let link = store
                .get(CFString::new(&format!(
                    "State:/Network/Interface/{bsd}/Link"
                )))
                .and_then(CFPropertyList::downcast_into::<CFDictionary>);
            let flag = |key: &CFString| {
                link.as_ref()
                    .and_then(|d| d.find(key.as_CFTypeRef()).map(|v| *v == true_ref))
            };
            out.push(MacInterfaceFacts {
                display_name: iface
                    .display_name()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| bsd.clone()),
                bond_members: if sc_type == sc_type::BOND {
                    bond_members(&iface)
                } else {
                    Vec::new()
                },
                builtin,
                thunderbolt_ip,
                tethered,
                bluetooth_pan,
                hidden,
                expensive: flag(&expensive_key).unwrap_or(false),
                in_virtual_machine: vm && sc_type == sc_type::ETHERNET,
                link_active: flag(&active_key),
                ipv4: addrs.get(&bsd).cloned().unwrap_or_default(),
                sc_type,
                bsd_name: bsd,
            });
        }
        Ok(out)
    }
}
