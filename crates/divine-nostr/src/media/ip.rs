//! IP classification for outbound media fetches (SSRF defence): which addresses a fetch may connect to. Pure
//! functions over `std::net` addresses, no I/O; `media` calls [`ip_allowed`] on every resolved address and on
//! every redirect hop, so this module is the one place the address policy lives.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How an address may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpClass {
    Public,
    /// 127.0.0.0/8, ::1 (and their IPv4-mapped forms).
    Loopback,
    /// Private, link-local, CGNAT, unique-local, unspecified, multicast, documentation, reserved.
    Forbidden,
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn classify_v4(ip: Ipv4Addr) -> IpClass {
    if in_v4(ip, [127, 0, 0, 0], 8) {
        return IpClass::Loopback;
    }
    const FORBIDDEN: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT
        ([169, 254, 0, 0], 16),  // link-local
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // TEST-NET-1
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved + broadcast
    ];
    if FORBIDDEN.iter().any(|(net, bits)| in_v4(ip, *net, *bits)) {
        IpClass::Forbidden
    } else {
        IpClass::Public
    }
}

/// Classifies an address for outbound media fetches.
pub fn classify_ip(ip: IpAddr) -> IpClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if v6 == Ipv6Addr::LOCALHOST {
                return IpClass::Loopback;
            }
            if v6.is_unspecified() {
                return IpClass::Forbidden;
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            // ::ffff:a.b.c.d (IPv4-mapped) → judge the IPv4 address.
            if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
                return classify_v4(embedded(s[6], s[7]));
            }
            // ::a.b.c.d (deprecated IPv4-compatible) and ::ffff:0:a.b.c.d (SIIT).
            if s[..6] == [0; 6] || (s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0) {
                return IpClass::Forbidden;
            }
            // 64:ff9b::/96 NAT64 → judge the embedded IPv4 address.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return classify_v4(embedded(s[6], s[7]));
            }
            // 2002::/16 6to4 → judge the embedded IPv4 address.
            if s[0] == 0x2002 {
                return classify_v4(embedded(s[1], s[2]));
            }
            let forbidden = (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
                || (s[0] & 0xff00) == 0xff00 // ff00::/8 multicast
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] == 0) // Teredo
                || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1) // 64:ff9b:1::/48 local NAT64
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]); // 100::/64 discard
            if forbidden {
                IpClass::Forbidden
            } else {
                IpClass::Public
            }
        }
    }
}

/// Whether `ip` may be connected to under `allow_loopback`.
pub fn ip_allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    match classify_ip(ip) {
        IpClass::Public => true,
        IpClass::Loopback => allow_loopback,
        IpClass::Forbidden => false,
    }
}
