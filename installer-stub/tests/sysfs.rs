//! The Linux classification against fixture sysfs trees: physical NIC, Wi-Fi (`wireless/`, `phy80211`), veth, virtio, bridges, carrier down.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::path::Path;

use fleet_installer_stub::EthernetPolicy;
use fleet_installer_stub::ethernet::{
    EthernetError, InterfaceKind, NetworkInventory, SysfsInventory, Verdict, evaluate,
};

/// One interface in a fixture tree.
#[derive(Debug, Default)]
pub struct Nic<'a> {
    pub name: &'a str,
    pub link_type: u32,
    /// Some(driver): a `device` link to a device whose `driver` link names it.
    pub driver: Option<&'a str>,
    pub wireless_dir: bool,
    pub phy80211: bool,
    pub bridge_dir: bool,
    /// None: reading `carrier` fails (a directory stands in for the kernel's EINVAL).
    pub carrier: Option<bool>,
    pub master: Option<&'a str>,
}

pub fn add(root: &Path, n: &Nic<'_>) {
    let dir = root.join("class/net").join(n.name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("type"), format!("{}\n", n.link_type)).unwrap();
    match n.carrier {
        Some(c) => fs::write(dir.join("carrier"), if c { "1\n" } else { "0\n" }).unwrap(),
        None => fs::create_dir(dir.join("carrier")).unwrap(),
    }
    fs::write(
        dir.join("operstate"),
        if n.carrier == Some(true) {
            "up\n"
        } else {
            "down\n"
        },
    )
    .unwrap();
    if let Some(drv) = n.driver {
        let dev = root.join("devices/pci0000:00").join(n.name);
        let drv_dir = root.join("bus/pci/drivers").join(drv);
        fs::create_dir_all(&dev).unwrap();
        fs::create_dir_all(&drv_dir).unwrap();
        symlink(&drv_dir, dev.join("driver")).unwrap();
        symlink(&dev, dir.join("device")).unwrap();
    }
    if n.wireless_dir {
        fs::create_dir(dir.join("wireless")).unwrap();
    }
    if n.phy80211 {
        let phy = root.join("class/ieee80211/phy0");
        fs::create_dir_all(&phy).unwrap();
        symlink(&phy, dir.join("phy80211")).unwrap();
    }
    if n.bridge_dir {
        fs::create_dir(dir.join("bridge")).unwrap();
    }
    if let Some(m) = n.master {
        symlink(root.join("class/net").join(m), dir.join("master")).unwrap();
    }
}

fn addrs(list: &[(&str, [u8; 4])]) -> Vec<(String, Ipv4Addr)> {
    list.iter()
        .map(|(n, a)| (n.to_string(), Ipv4Addr::from(*a)))
        .collect()
}

const M: &str = "this machine";

#[test]
fn classification() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let ether = |name| Nic {
        name,
        link_type: 1,
        carrier: Some(true),
        ..Default::default()
    };
    add(
        r,
        &Nic {
            driver: Some("e1000e"),
            ..ether("eth0")
        },
    );
    add(
        r,
        &Nic {
            driver: Some("iwlwifi"),
            wireless_dir: true,
            ..ether("wlan0")
        },
    );
    add(
        r,
        &Nic {
            driver: Some("iwlwifi"),
            phy80211: true,
            ..ether("wlp2s0")
        },
    );
    add(r, &ether("veth0"));
    add(
        r,
        &Nic {
            driver: Some("virtio_net"),
            ..ether("ens3")
        },
    );
    add(
        r,
        &Nic {
            bridge_dir: true,
            ..ether("br0")
        },
    );
    add(
        r,
        &Nic {
            driver: Some("igb"),
            carrier: Some(false),
            ..ether("eth1")
        },
    );
    add(
        r,
        &Nic {
            driver: Some("igb"),
            carrier: None,
            ..ether("eth2")
        },
    );
    add(
        r,
        &Nic {
            link_type: 772,
            ..ether("lo")
        },
    );
    add(
        r,
        &Nic {
            link_type: 65534,
            ..ether("tun0")
        },
    );
    let inv = SysfsInventory::new(
        r,
        addrs(&[("eth0", [192, 0, 2, 10]), ("lo", [127, 0, 0, 1])]),
    );
    let got: Vec<(String, InterfaceKind, bool, usize)> = inv
        .interfaces()
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.kind, i.link_up, i.ipv4.len()))
        .collect();
    use InterfaceKind::*;
    let want = [
        ("br0", Virtual, true, 0),
        ("ens3", Virtual, true, 0),
        ("eth0", Wired, true, 1),
        ("eth1", Wired, false, 0),
        ("eth2", Wired, false, 0),
        ("lo", Other("loopback".into()), true, 1),
        ("tun0", Other("link type 65534".into()), true, 0),
        ("veth0", Virtual, true, 0),
        ("wlan0", Wireless, true, 0),
        ("wlp2s0", Wireless, true, 0),
    ];
    let want: Vec<_> = want
        .into_iter()
        .map(|(n, k, u, a)| (n.to_string(), k, u, a))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn physical_nic_with_address_is_accepted() {
    let t = tempfile::tempdir().unwrap();
    add(
        t.path(),
        &Nic {
            name: "enp3s0",
            link_type: 1,
            driver: Some("r8169"),
            carrier: Some(true),
            ..Default::default()
        },
    );
    let inv = SysfsInventory::new(t.path(), addrs(&[("enp3s0", [203, 0, 113, 5])]));
    let v = evaluate(EthernetPolicy::Require, &inv.interfaces().unwrap(), M).unwrap();
    assert_eq!(
        v,
        Verdict::Accepted {
            interface: "enp3s0".into(),
            address: Ipv4Addr::new(203, 0, 113, 5),
            is_virtual: false
        }
    );
}

#[test]
fn wifi_only_is_no_adapter() {
    let t = tempfile::tempdir().unwrap();
    add(
        t.path(),
        &Nic {
            name: "wlan0",
            link_type: 1,
            driver: Some("iwlwifi"),
            wireless_dir: true,
            carrier: Some(true),
            ..Default::default()
        },
    );
    add(
        t.path(),
        &Nic {
            name: "wlan1",
            link_type: 1,
            driver: Some("ath9k"),
            phy80211: true,
            carrier: Some(true),
            ..Default::default()
        },
    );
    add(
        t.path(),
        &Nic {
            name: "lo",
            link_type: 772,
            carrier: Some(true),
            ..Default::default()
        },
    );
    let inv = SysfsInventory::new(t.path(), addrs(&[("wlan0", [192, 0, 2, 20])]));
    let e = evaluate(EthernetPolicy::AllowVirtual, &inv.interfaces().unwrap(), M).unwrap_err();
    assert_eq!(e, EthernetError::NoAdapter { machine: M });
    assert!(
        e.to_string()
            .starts_with("❌ ERROR: No Ethernet adapter found on this machine\n")
    );
}

#[test]
fn carrier_down_is_inactive() {
    let t = tempfile::tempdir().unwrap();
    add(
        t.path(),
        &Nic {
            name: "eth0",
            link_type: 1,
            driver: Some("e1000e"),
            carrier: Some(false),
            ..Default::default()
        },
    );
    // An address on a downed link (static configuration) does not make it active.
    let inv = SysfsInventory::new(t.path(), addrs(&[("eth0", [192, 0, 2, 30])]));
    let e = evaluate(EthernetPolicy::Require, &inv.interfaces().unwrap(), M).unwrap_err();
    assert!(
        e.to_string().contains("\n  • eth0 - Status: inactive\n"),
        "{e}"
    );
}

#[test]
fn veth_is_virtual_and_counts_only_when_allowed() {
    let t = tempfile::tempdir().unwrap();
    add(
        t.path(),
        &Nic {
            name: "veth0",
            link_type: 1,
            carrier: Some(true),
            ..Default::default()
        },
    );
    let inv = SysfsInventory::new(t.path(), addrs(&[("veth0", [198, 51, 100, 2])]));
    let ifs = inv.interfaces().unwrap();
    let e = evaluate(EthernetPolicy::Require, &ifs, M).unwrap_err();
    assert!(
        e.to_string()
            .contains("  • veth0 - Status: active (virtual, not accepted)\n"),
        "{e}"
    );
    assert!(matches!(
        evaluate(EthernetPolicy::AllowVirtual, &ifs, M),
        Ok(Verdict::Accepted {
            is_virtual: true,
            ..
        })
    ));
}

#[test]
fn nic_in_a_bridge_uses_the_bridge_address() {
    let t = tempfile::tempdir().unwrap();
    add(
        t.path(),
        &Nic {
            name: "br0",
            link_type: 1,
            bridge_dir: true,
            carrier: Some(true),
            ..Default::default()
        },
    );
    add(
        t.path(),
        &Nic {
            name: "eno1",
            link_type: 1,
            driver: Some("igb"),
            carrier: Some(true),
            master: Some("br0"),
            ..Default::default()
        },
    );
    let inv = SysfsInventory::new(t.path(), addrs(&[("br0", [192, 0, 2, 40])]));
    let v = evaluate(EthernetPolicy::Require, &inv.interfaces().unwrap(), M).unwrap();
    assert_eq!(
        v,
        Verdict::Accepted {
            interface: "eno1".into(),
            address: Ipv4Addr::new(192, 0, 2, 40),
            is_virtual: false
        }
    );
}

#[test]
fn missing_sysfs_is_an_inventory_error() {
    let t = tempfile::tempdir().unwrap();
    let inv = SysfsInventory::new(t.path().join("nope"), Vec::new());
    assert!(matches!(inv.interfaces(), Err(EthernetError::Inventory(_))));
}
