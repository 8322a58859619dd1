//! Automatic rules: the trust review (stage 2), the price catalog (stage 3) and the callback URL
//! policy (spec §7).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::ApiError;
use crate::model::{AgentManifest, TrustCheck, TrustLimits};

pub const SUPPORTED_TOOLS: &[&str] = &["tokenops"];

/// (tool, capability) → price in credits. The seed's usage receipt debits 1 credit per result package.
pub const CATALOG: &[(&str, &str, i64)] = &[
    ("tokenops", "tokenops_result_package", 1),
    ("tokenops", "evidence_summary", 1),
    ("tokenops", "operating_record", 1),
];

pub fn price(tool: &str, capability: &str) -> Result<i64, ApiError> {
    if !SUPPORTED_TOOLS.contains(&tool) {
        return Err(ApiError::invalid(
            "requested_tool",
            format!("unsupported tool '{tool}'; supported: {SUPPORTED_TOOLS:?}"),
        ));
    }
    CATALOG
        .iter()
        .find(|(t, c, _)| *t == tool && *c == capability)
        .map(|(_, _, p)| *p)
        .ok_or_else(|| {
            ApiError::invalid(
                "requested_capability",
                format!("tool '{tool}' has no capability '{capability}'"),
            )
        })
}

/// Structural checks are 4xx (bad input); policy checks become the trust profile's result.
pub fn validate_manifest(m: &AgentManifest, allow_loopback: bool) -> Result<(), ApiError> {
    let name = m.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid("name", "name must be 1–100 characters"));
    }
    let contact_ok = m.owner_contact.len() <= 254
        && m.owner_contact.split_once('@').is_some_and(|(u, d)| {
            !u.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
        });
    if !contact_ok {
        return Err(ApiError::invalid(
            "owner_contact",
            "owner_contact must be an email address",
        ));
    }
    if m.requested_tools.is_empty() || m.requested_tools.len() > 16 {
        return Err(ApiError::invalid(
            "requested_tools",
            "requested_tools must list 1–16 tools",
        ));
    }
    if m.description.as_ref().is_some_and(|d| d.len() > 2000) {
        return Err(ApiError::invalid(
            "description",
            "description must be at most 2000 characters",
        ));
    }
    check_callback_url(&m.callback_url, allow_loopback, "callback_url")?;
    Ok(())
}

/// The trust review: which rules passed, the limits granted, and whether the agent is active.
pub fn trust_review(m: &AgentManifest) -> (bool, Vec<TrustCheck>, TrustLimits) {
    let unsupported: Vec<&String> = m
        .requested_tools
        .iter()
        .filter(|t| !SUPPORTED_TOOLS.contains(&t.as_str()))
        .collect();
    let checks = vec![
        TrustCheck {
            rule: "manifest_complete".into(),
            passed: true,
            detail: "name, owner contact, tools and callback URL present".into(),
        },
        TrustCheck {
            rule: "tools_supported".into(),
            passed: unsupported.is_empty(),
            detail: if unsupported.is_empty() {
                "every requested tool is offered".into()
            } else {
                format!("not offered: {unsupported:?}")
            },
        },
        TrustCheck {
            rule: "callback_url_policy".into(),
            passed: true,
            detail: "callback URL is https and public (or loopback in the local runtime)".into(),
        },
    ];
    let passed = checks.iter().all(|c| c.passed);
    let limits = TrustLimits {
        max_run_credits: 100,
        max_entitlement_credits: 100_000,
        allowed_tools: m
            .requested_tools
            .iter()
            .filter(|t| SUPPORTED_TOOLS.contains(&t.as_str()))
            .cloned()
            .collect(),
    };
    (passed, checks, limits)
}

/// Callback URLs must be https and not point at private, loopback or link-local addresses;
/// the local runtime also allows http(s) to loopback, explicitly.
///
/// IP-literal hosts are checked here with [`is_public`]; the `url` crate has already normalized
/// the legacy IPv4 spellings (`2130706433`, `0x7f.1`, `0177.0.0.1`) into dotted quads, so they
/// cannot slip past. Host names are checked again on every address they resolve to at delivery
/// time ([`resolve_allowed`]).
pub fn check_callback_url(
    raw: &str,
    allow_loopback: bool,
    field: &str,
) -> Result<url::Url, ApiError> {
    let u =
        url::Url::parse(raw).map_err(|e| ApiError::invalid(field, format!("not a URL: {e}")))?;
    if raw.len() > 2048
        || u.host_str().is_none_or(str::is_empty)
        || !u.username().is_empty()
        || u.password().is_some()
    {
        return Err(ApiError::invalid(
            field,
            "callback URL must have a host and no credentials, at most 2048 characters",
        ));
    }
    let (ip, name) = match u.host() {
        Some(url::Host::Ipv4(v4)) => (Some(IpAddr::V4(v4)), String::new()),
        Some(url::Host::Ipv6(v6)) => (Some(IpAddr::V6(v6)), String::new()),
        Some(url::Host::Domain(d)) => (None, d.trim_end_matches('.').to_ascii_lowercase()),
        None => (None, String::new()),
    };
    let loopback = name == "localhost" || ip.is_some_and(|i| i.is_loopback());
    if loopback && allow_loopback {
        return if matches!(u.scheme(), "http" | "https") {
            Ok(u)
        } else {
            Err(ApiError::invalid(field, "callback URL must be http(s)"))
        };
    }
    if u.scheme() != "https" {
        return Err(ApiError::invalid(field, "callback URL must be https"));
    }
    if loopback
        || ip.is_some_and(|i| !is_public(i))
        || name.ends_with(".localhost")
        || name.ends_with(".internal")
    {
        return Err(ApiError::invalid(
            field,
            "callback URL must not point at a private, loopback or link-local address",
        ));
    }
    Ok(u)
}

/// IPv4 ranges a callback may not reach: the IANA IPv4 Special-Purpose Address Registry entries
/// that are not globally reachable, plus multicast and the reserved block. Entries marked
/// globally reachable (AS112 192.31.196.0/24 and 192.175.48.0/24, AMT 192.52.193.0/24) are
/// allowed. Deliberately stricter than the registry: all of 192.0.0.0/24 (its PCP/TURN anycast
/// /32s are service addresses, never an agent's receiver) and the deprecated 6to4 relay anycast
/// 192.88.99.0/24.
const V4_REFUSED: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "this network"),
    ([10, 0, 0, 0], 8, "private-use"),
    ([100, 64, 0, 0], 10, "shared address space (CGNAT)"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([172, 16, 0, 0], 12, "private-use"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments"),
    ([192, 0, 2, 0], 24, "documentation (TEST-NET-1)"),
    ([192, 88, 99, 0], 24, "deprecated 6to4 relay anycast"),
    ([192, 168, 0, 0], 16, "private-use"),
    ([198, 18, 0, 0], 15, "benchmarking"),
    ([198, 51, 100, 0], 24, "documentation (TEST-NET-2)"),
    ([203, 0, 113, 0], 24, "documentation (TEST-NET-3)"),
    ([224, 0, 0, 0], 4, "multicast"),
    (
        [240, 0, 0, 0],
        4,
        "reserved (and limited broadcast 255.255.255.255)",
    ),
];

/// IPv6 ranges inside global unicast 2000::/3 that a callback may not reach (the IANA IPv6
/// Special-Purpose Address Registry entries there that are not globally reachable). Stricter
/// than the registry: all of 2001::/23 but Teredo (its globally reachable /32s and /28s are
/// anycast, AMT, AS112 and ORCHID identifiers, never an agent's receiver).
const V6_REFUSED: &[([u16; 8], u8, &str)] = &[
    (
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignments",
    ),
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
];

fn in_v4(ip: Ipv4Addr, (net, len, _): &([u8; 4], u8, &str)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(*net)) & mask
}

fn in_v6(ip: Ipv6Addr, (net, len, _): &([u16; 8], u8, &str)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(*net)) & mask
}

/// The one allow rule (spec §7): globally routable unicast only.
///
/// IPv4: anything outside [`V4_REFUSED`].
///
/// IPv6: only the global unicast block 2000::/3 (the IANA IPv6 Address Space registry), minus
/// [`V6_REFUSED`] — so loopback, unspecified, unique-local fc00::/7, link-local fe80::/10,
/// site-local fec0::/10, multicast ff00::/8, discard-only 100::/64, SRv6 SIDs 5f00::/16 and every
/// other reserved block are refused without a list. Prefixes that embed an IPv4 address:
/// - IPv4-mapped ::ffff:0:0/96 — the socket talks IPv4 to the embedded address: apply the IPv4 rule.
/// - NAT64 well-known prefix 64:ff9b::/96 — globally reachable; the translator forwards to the
///   embedded address (this is what DNS64 returns in IPv6-only subnets): apply the IPv4 rule.
/// - NAT64 local-use 64:ff9b:1::/48 — not globally reachable, and where the IPv4 sits depends on
///   the operator's prefix length: refused.
/// - IPv4-compatible ::/96 — deprecated (RFC 4291), no legitimate use: refused.
/// - 6to4 2002::/16 — tunnelled to the IPv4 in bits 16–47: apply the IPv4 rule.
/// - Teredo 2001::/32 — tunnelled via the server (bits 32–63) to the client (the bitwise NOT of
///   the last 32 bits): both must pass the IPv4 rule.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !V4_REFUSED.iter().any(|r| in_v4(v4, r)),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let bits = u128::from(v6);
            let v4_at = |shift: u32| IpAddr::V4(Ipv4Addr::from((bits >> shift) as u32));
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(v4_at(0));
            }
            if s[0] == 0x2002 {
                return is_public(v4_at(80));
            }
            if s[..2] == [0x2001, 0] {
                let client = IpAddr::V4(Ipv4Addr::from(!(bits as u32)));
                return is_public(v4_at(64)) && is_public(client);
            }
            (s[0] & 0xe000) == 0x2000 && !V6_REFUSED.iter().any(|r| in_v6(v6, r))
        }
    }
}

/// At delivery time: the host's addresses, every one checked against the policy (any refused
/// address refuses the host). The caller connects to these addresses only — resolving again
/// would reopen the DNS-rebinding window between check and connect.
pub async fn resolve_allowed(
    u: &url::Url,
    allow_loopback: bool,
) -> Result<Vec<SocketAddr>, String> {
    let port = u
        .port_or_known_default()
        .ok_or_else(|| format!("{u}: no port"))?;
    let addrs: Vec<SocketAddr> = match u.host() {
        Some(url::Host::Ipv4(v4)) => vec![SocketAddr::from((v4, port))],
        Some(url::Host::Ipv6(v6)) => vec![SocketAddr::from((v6, port))],
        Some(url::Host::Domain(host)) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolve {host}: {e}"))?
            .collect(),
        None => return Err(format!("{u}: no host")),
    };
    let host = u.host_str().unwrap_or_default();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    // The message goes on the callback record the agent reads: no address in it, so private
    // DNS records cannot be enumerated through callback URLs.
    if addrs
        .iter()
        .any(|a| !(is_public(a.ip()) || (allow_loopback && a.ip().is_loopback())))
    {
        return Err(format!("{host} resolves to a non-public address"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_policy() {
        assert!(check_callback_url("https://agent.example.com/cb", false, "callback_url").is_ok());
        for bad in [
            "http://agent.example.com/cb",
            "https://127.0.0.1/cb",
            "https://10.0.0.8/x",
            "https://169.254.169.254/",
            "https://[::1]/",
            "https://localhost/",
            "ftp://x.y/",
            "https://u:p@x.example.com/",
        ] {
            let e = check_callback_url(bad, false, "callback_url").unwrap_err();
            assert_eq!(
                (e.status, e.field.as_deref()),
                (422, Some("callback_url")),
                "{bad}"
            );
        }
        assert!(check_callback_url("http://127.0.0.1:9000/cb", true, "callback_url").is_ok());
        assert!(check_callback_url("http://10.0.0.8/cb", true, "callback_url").is_err());
    }

    /// The audit's addresses (each was accepted before the allow rule; see the commit message),
    /// the legacy IPv4 host spellings, and the public addresses that must stay allowed.
    #[test]
    fn callback_address_table() {
        let refused = [
            // multicast
            "https://224.0.0.1/",
            "https://239.255.255.250/",
            "https://[ff02::1]/",
            // reserved, IETF protocol assignments, benchmarking
            "https://240.0.0.1/",
            "https://192.0.0.1/",
            "https://198.18.0.1/",
            // NAT64 embedding 10.0.0.1 / 169.254.169.254, IPv4-compatible, 6to4, site-local
            "https://[64:ff9b::a00:1]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[::a00:1]/",
            "https://[2002:a00:1::]/",
            "https://[fec0::1]/",
            // 127.0.0.1 spelled as decimal, hex, octal; `url` normalizes them to dotted quads
            "https://2130706433/",
            "https://0x7f.1/",
            "https://0x7f000001/",
            "https://0177.0.0.1/",
            "https://017700000001/",
            // 169.254.169.254 (instance metadata) spelled as decimal
            "https://2852039166/",
        ];
        for url in refused {
            let e = check_callback_url(url, false, "callback_url").unwrap_err();
            assert_eq!(
                (e.status, e.field.as_deref()),
                (422, Some("callback_url")),
                "{url}"
            );
        }
        for url in [
            "https://8.8.8.8/",
            "https://1.1.1.1/",
            "https://[2606:4700:4700::1111]/",
            // NAT64 well-known prefix embedding 8.8.8.8: what DNS64 answers in IPv6-only subnets
            "https://[64:ff9b::808:808]/",
        ] {
            assert!(
                check_callback_url(url, false, "callback_url").is_ok(),
                "{url}"
            );
        }
        // The loopback allowance sees through the legacy spellings too.
        assert!(check_callback_url("http://2130706433:9000/cb", true, "callback_url").is_ok());
        assert!(check_callback_url("http://localhost./cb", false, "callback_url").is_err());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Every refused registry range: its first and last address are refused.
    #[test]
    fn registry_ranges_are_refused_end_to_end() {
        for (net, len, what) in V4_REFUSED {
            let first = u32::from(Ipv4Addr::from(*net));
            let last = first | (u32::MAX >> len);
            for a in [first, last] {
                assert!(!is_public(Ipv4Addr::from(a).into()), "{what}");
            }
        }
        for (net, len, what) in V6_REFUSED {
            let first = u128::from(Ipv6Addr::from(*net));
            let last = first | (u128::MAX >> len);
            for a in [first, last] {
                let a = Ipv6Addr::from(a);
                // Teredo, inside 2001::/23, has its own rule.
                if a.segments()[..2] != [0x2001, 0] {
                    assert!(!is_public(a.into()), "{what}: {a}");
                }
            }
        }
        for refused in [
            "0.0.0.0",
            "255.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "172.31.255.255",
            "::",
            "::1",
            "fc00::1",
            "fdff::1",
            "fe80::1",
            "febf::1",
            "ff0e::1",
            "100::1",
            "5f00::1",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "4000::1",
        ] {
            assert!(!is_public(ip(refused)), "{refused}");
        }
        // Just outside the ranges, and the registry's globally reachable entries.
        for public in [
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.31.196.1",
            "192.52.193.1",
            "192.175.48.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2000::1",
            "2001:200::1",
            "2620:4f:8000::1",
            "2a00:1450:4001::1",
            "2c0f:fb50::1",
        ] {
            assert!(is_public(ip(public)), "{public}");
        }
    }

    /// Prefixes that embed an IPv4 address: unwrapped (mapped, NAT64 WKP, 6to4, Teredo) or refused
    /// outright (IPv4-compatible, NAT64 local-use).
    #[test]
    fn embedded_ipv4() {
        for (addr, public) in [
            ("::ffff:8.8.8.8", true),
            ("::ffff:10.0.0.1", false),
            ("::ffff:127.0.0.1", false),
            ("64:ff9b::808:808", true),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b:1::808:808", false),
            ("::808:808", false),
            ("2002:808:808::1", true),
            ("2002:a9fe:a9fe::1", false),
            ("2002:c000:201::1", false),
            // Teredo: server 65.54.227.120, client 8.8.8.8 / 10.0.0.1 / 169.254.169.254 (inverted)
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", true),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", false),
            ("2001:0:4136:e378:8000:63bf:5601:5601", false),
            // Teredo with a private server address
            ("2001:0:a00:1:8000:63bf:f7f7:f7f7", false),
        ] {
            assert_eq!(is_public(ip(addr)), public, "{addr}");
        }
    }

    /// Delivery time: a host name is checked on what it resolves to, and the checked addresses are
    /// what the sender is given.
    #[tokio::test]
    async fn delivery_checks_resolved_addresses() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        let e = resolve_allowed(&u("https://localhost/cb"), false)
            .await
            .unwrap_err();
        assert!(e.contains("non-public"), "{e}");
        let pinned = resolve_allowed(&u("http://localhost:9000/cb"), true)
            .await
            .unwrap();
        assert!(!pinned.is_empty());
        assert!(
            pinned
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 9000),
            "{pinned:?}"
        );
        // IP literals need no lookup; the embedded-IPv4 rule applies to them as well.
        assert_eq!(
            resolve_allowed(&u("https://8.8.8.8/cb"), false).await,
            Ok(vec!["8.8.8.8:443".parse().unwrap()])
        );
        for bad in ["https://10.0.0.1/", "https://[64:ff9b::a9fe:a9fe]/"] {
            assert!(resolve_allowed(&u(bad), true).await.is_err(), "{bad}");
        }
    }

    #[test]
    fn prices_and_unknown_capabilities() {
        assert_eq!(price("tokenops", "tokenops_result_package").unwrap(), 1);
        assert_eq!(
            price("other", "x").unwrap_err().field.as_deref(),
            Some("requested_tool")
        );
        assert_eq!(
            price("tokenops", "x").unwrap_err().field.as_deref(),
            Some("requested_capability")
        );
    }
}
