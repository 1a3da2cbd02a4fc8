//! The macOS Ethernet check on inventories modelled on real Macs (what SystemConfiguration reports), each with the user's exact message and the stub's exit code, in English and German.

use std::net::Ipv4Addr;

use fleet_installer_stub::EthernetPolicy;
use fleet_installer_stub::ethernet::{MacFactsInventory, Verdict, check};
use fleet_installer_stub::mac_ethernet::{MacInterfaceFacts, sc_type};
use fleet_installer_stub::stub::StubError;

const MAC: &str = "this Mac";

const NO_ADAPTER: &str = "❌ ERROR: No Ethernet adapter found on this Mac\n\nFleet Server requires a wired Ethernet connection for:\n  • Reliable 24/7 operation\n  • Consistent network performance\n  • Server-grade stability\n\nPlease connect an Ethernet cable and try again.";

fn no_active(lines: &[&str], virtual_refused: bool) -> String {
    let mut s = String::from(
        "❌ ERROR: No active Ethernet connection detected\n\nAvailable Ethernet adapters found, but none are connected:\n",
    );
    for l in lines {
        s.push_str(&format!("  • {l}\n"));
    }
    s.push_str("\nPlease connect an Ethernet cable and try again.\n\nWiFi connections are NOT supported for Fleet Server installations.");
    if virtual_refused {
        s.push_str(
            "\n\nVirtual adapters count only for a package built with --ethernet allow-virtual.",
        );
    }
    s
}

/// Display names by language: what SystemConfiguration localizes (the classifier must not
/// care).
#[derive(Clone, Copy)]
struct Names {
    wifi: &'static str,
    ethernet: &'static str,
    tb1: &'static str,
    tb2: &'static str,
    tb_bridge: &'static str,
    usb_lan: &'static str,
    iphone: &'static str,
    bt_pan: &'static str,
    bond: &'static str,
}

const ENGLISH: Names = Names {
    wifi: "Wi-Fi",
    ethernet: "Ethernet",
    tb1: "Thunderbolt 1",
    tb2: "Thunderbolt 2",
    tb_bridge: "Thunderbolt Bridge",
    usb_lan: "USB 10/100/1000 LAN",
    iphone: "iPhone USB",
    bt_pan: "Bluetooth PAN",
    bond: "Server Bond",
};

const GERMAN: Names = Names {
    wifi: "WLAN",
    ethernet: "Ethernet",
    tb1: "Thunderbolt 1",
    tb2: "Thunderbolt 2",
    tb_bridge: "Thunderbolt-Brücke",
    usb_lan: "USB 10/100/1000 LAN",
    iphone: "iPhone-USB",
    bt_pan: "Bluetooth-PAN",
    bond: "Bündelung",
};

fn f(bsd: &str, name: &str, ty: &str) -> MacInterfaceFacts {
    MacInterfaceFacts {
        bsd_name: bsd.into(),
        display_name: name.into(),
        sc_type: ty.into(),
        ..Default::default()
    }
}

fn up(mut i: MacInterfaceFacts, addr: [u8; 4]) -> MacInterfaceFacts {
    i.link_active = Some(true);
    i.ipv4 = vec![Ipv4Addr::from(addr)];
    i
}

fn down(mut i: MacInterfaceFacts) -> MacInterfaceFacts {
    i.link_active = Some(false);
    i
}

fn wifi(n: Names) -> MacInterfaceFacts {
    let mut w = up(f("en0", n.wifi, sc_type::WIFI), [192, 0, 2, 44]);
    w.builtin = true;
    w
}

/// The Thunderbolt IP ports and the Thunderbolt Bridge over them, as every Thunderbolt Mac
/// lists them (nothing plugged in: Active false).
fn thunderbolt(n: Names, first: u32) -> Vec<MacInterfaceFacts> {
    let mut v = Vec::new();
    for (k, name) in [n.tb1, n.tb2].into_iter().enumerate() {
        let mut p = down(f(
            &format!("en{}", first + k as u32),
            name,
            sc_type::ETHERNET,
        ));
        p.thunderbolt_ip = true;
        p.builtin = true;
        v.push(p);
    }
    let mut b = f("bridge0", n.tb_bridge, sc_type::BRIDGE);
    b.thunderbolt_ip = true;
    b.link_active = Some(false);
    v.push(b);
    v
}

fn macbook_pro(n: Names) -> Vec<MacInterfaceFacts> {
    let mut v = vec![wifi(n)];
    v.extend(thunderbolt(n, 1));
    v
}

fn mac_mini(n: Names, cable: bool) -> Vec<MacInterfaceFacts> {
    let mut en0 = f("en0", n.ethernet, sc_type::ETHERNET);
    en0.builtin = true;
    let en0 = if cable {
        up(en0, [198, 51, 100, 20])
    } else {
        down(en0)
    };
    let mut w = wifi(n);
    w.bsd_name = "en1".into();
    w.link_active = Some(false);
    w.ipv4.clear();
    let mut v = vec![en0, w];
    v.extend(thunderbolt(n, 2));
    v
}

fn macbook_air_usb_c(n: Names) -> Vec<MacInterfaceFacts> {
    let mut v = macbook_pro(n);
    // An Apple USB-C/Belkin adapter: plain Ethernet, not built in.
    v.push(up(f("en7", n.usb_lan, sc_type::ETHERNET), [203, 0, 113, 7]));
    v
}

fn mac_pro_bond(n: Names) -> Vec<MacInterfaceFacts> {
    let mut en0 = up(f("en0", n.ethernet, sc_type::ETHERNET), [0, 0, 0, 0]);
    en0.ipv4.clear();
    en0.builtin = true;
    let mut en1 = en0.clone();
    en1.bsd_name = "en1".into();
    let mut bond = up(f("bond0", n.bond, sc_type::BOND), [198, 51, 100, 30]);
    bond.bond_members = vec!["en0".into(), "en1".into()];
    let mut w = wifi(n);
    w.bsd_name = "en2".into();
    let mut v = vec![en0, en1, bond, w];
    v.extend(thunderbolt(n, 3));
    v
}

fn tethered_iphone(n: Names) -> Vec<MacInterfaceFacts> {
    let mut v = macbook_pro(n);
    v[0] = down(v[0].clone());
    v[0].ipv4.clear();
    let mut phone = up(f("en8", n.iphone, sc_type::ETHERNET), [192, 0, 2, 2]);
    phone.tethered = true;
    phone.expensive = true;
    v.push(phone);
    let mut pan = up(f("en9", n.bt_pan, sc_type::ETHERNET), [192, 0, 2, 66]);
    pan.bluetooth_pan = true;
    pan.expensive = true;
    v.push(pan);
    v
}

/// A macOS guest (Virtualization.framework, Parallels, VMware): one emulated Ethernet NIC.
fn virtual_mac(n: Names) -> Vec<MacInterfaceFacts> {
    let mut en0 = up(f("en0", n.ethernet, sc_type::ETHERNET), [192, 0, 2, 100]);
    en0.in_virtual_machine = true;
    vec![en0]
}

/// Runs the check as the stub does and returns (exit code, message or accepted interface).
fn run(policy: EthernetPolicy, facts: Vec<MacInterfaceFacts>) -> (u8, String) {
    match check(policy, &MacFactsInventory(facts), MAC) {
        Ok(Verdict::Accepted {
            interface, address, ..
        }) => (0, format!("{interface} {address}")),
        Ok(Verdict::Skipped) => (0, "skipped".into()),
        Err(e) => {
            let e = StubError::from(e);
            (e.status.code(), e.message)
        }
    }
}

#[test]
fn real_macs_in_english_and_german() {
    for n in [ENGLISH, GERMAN] {
        let lang = n.wifi;
        let r = EthernetPolicy::Require;
        assert_eq!(
            run(r, macbook_pro(n)),
            (10, NO_ADAPTER.into()),
            "{lang}: MacBook Pro, Wi-Fi and Thunderbolt ports only"
        );
        assert_eq!(
            run(r, mac_mini(n, true)),
            (0, "en0 198.51.100.20".into()),
            "{lang}: Mac mini, en0 up"
        );
        assert_eq!(
            run(r, mac_mini(n, false)),
            (11, no_active(&["en0 - Status: inactive"], false)),
            "{lang}: Mac mini, cable unplugged"
        );
        assert_eq!(
            run(r, macbook_air_usb_c(n)),
            (0, "en7 203.0.113.7".into()),
            "{lang}: USB-C Ethernet adapter"
        );
        assert_eq!(
            run(r, mac_pro_bond(n)),
            (0, "bond0 198.51.100.30".into()),
            "{lang}: bond of two built-in ports"
        );
        assert_eq!(
            run(r, tethered_iphone(n)),
            (10, NO_ADAPTER.into()),
            "{lang}: tethered iPhone and Bluetooth PAN only"
        );
        assert_eq!(
            run(r, virtual_mac(n)),
            (
                11,
                no_active(&["en0 - Status: active (virtual, not accepted)"], true)
            ),
            "{lang}: virtual machine under require"
        );
        assert_eq!(
            run(EthernetPolicy::AllowVirtual, virtual_mac(n)),
            (0, "en0 192.0.2.100".into()),
            "{lang}: virtual machine under allow-virtual"
        );
    }
}

#[test]
fn a_missing_active_key_is_settled_by_the_address() {
    let mut mini = mac_mini(ENGLISH, true);
    mini[0].link_active = None;
    assert_eq!(
        run(EthernetPolicy::Require, mini.clone()),
        (0, "en0 198.51.100.20".into())
    );
    mini[0].ipv4 = vec![Ipv4Addr::new(169, 254, 7, 1)];
    assert_eq!(
        run(EthernetPolicy::Require, mini.clone()),
        (
            11,
            no_active(
                &["en0 - Status: link state unknown, link-local IPv4 address only"],
                false
            )
        )
    );
    mini[0].ipv4.clear();
    assert_eq!(
        run(EthernetPolicy::Require, mini),
        (
            11,
            no_active(
                &["en0 - Status: link state unknown, no IPv4 address"],
                false
            )
        )
    );
}

#[test]
fn bonds_hosts_bridges_and_metered_links() {
    // A bond whose link dictionary has no Active: a member's link settles it.
    let mut v = mac_pro_bond(ENGLISH);
    v[2].link_active = None;
    assert_eq!(
        run(EthernetPolicy::Require, v.clone()),
        (0, "bond0 198.51.100.30".into())
    );
    // A bond holding a Thunderbolt IP port is no wired bond: virtual.
    v[1].thunderbolt_ip = true;
    let (code, msg) = run(EthernetPolicy::Require, v.clone());
    assert_eq!(code, 11, "{msg}");
    assert!(
        msg.contains("bond0 - Status: active (virtual, not accepted)"),
        "{msg}"
    );
    // All down: the bond is listed, its members are not.
    let mut v = mac_pro_bond(ENGLISH);
    for i in &mut v[..3] {
        i.link_active = Some(false);
    }
    assert_eq!(
        run(EthernetPolicy::Require, v),
        (11, no_active(&["bond0 - Status: inactive"], false))
    );
    // Internet Sharing's bridge100 is host-only: not an adapter, even under allow-virtual.
    let mut v = macbook_pro(ENGLISH);
    v.push(up(
        f("bridge100", "bridge100", sc_type::BRIDGE),
        [192, 168, 2, 1],
    ));
    assert_eq!(
        run(EthernetPolicy::AllowVirtual, v),
        (10, NO_ADAPTER.into())
    );
    // An unknown Ethernet-framed interface whose link is metered (a cellular modem).
    let mut v = macbook_pro(ENGLISH);
    let mut m = up(f("en12", "Modem", sc_type::ETHERNET), [192, 0, 2, 9]);
    m.expensive = true;
    v.push(m);
    assert_eq!(run(EthernetPolicy::Require, v), (10, NO_ADAPTER.into()));
}
