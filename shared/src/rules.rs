//! Automatic rules: the trust review (stage 2), the price catalog (stage 3) and the callback URL
//! policy (spec §7).

use std::net::IpAddr;

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
pub fn check_callback_url(
    raw: &str,
    allow_loopback: bool,
    field: &str,
) -> Result<url::Url, ApiError> {
    let u =
        url::Url::parse(raw).map_err(|e| ApiError::invalid(field, format!("not a URL: {e}")))?;
    let host = u
        .host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let ip: Option<IpAddr> = host.parse().ok();
    let loopback = host == "localhost" || ip.is_some_and(|i| i.is_loopback());
    if raw.len() > 2048 || host.is_empty() || !u.username().is_empty() || u.password().is_some() {
        return Err(ApiError::invalid(
            field,
            "callback URL must have a host and no credentials, at most 2048 characters",
        ));
    }
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
        || host.ends_with(".localhost")
        || host.ends_with(".internal")
    {
        return Err(ApiError::invalid(
            field,
            "callback URL must not point at a private, loopback or link-local address",
        ));
    }
    Ok(u)
}

/// Public unicast only: no private, loopback, link-local, unspecified, CGNAT or unique-local ranges.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// At delivery time: every address the host resolves to must pass the policy (DNS rebinding).
pub async fn resolve_allowed(u: &url::Url, allow_loopback: bool) -> Result<(), String> {
    let host = u
        .host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = u.port_or_known_default().unwrap_or(443);
    let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    for a in addrs {
        let ip = a.ip();
        if !(is_public(ip) || (allow_loopback && ip.is_loopback())) {
            return Err(format!("{host} resolves to a non-public address"));
        }
    }
    Ok(())
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
