//! Which addresses keyward's own outbound requests (webhook deliveries) may reach.
//!
//! A webhook URL is checked when it is created (shape, and a literal address) and again at
//! every delivery: a name is resolved by [`GuardedResolver`], which hands the connection only
//! addresses that pass [`refusal`], so a name that resolves (or re-resolves) to a refused
//! address is never called. Redirects are not followed and no proxy is used.
//!
//! Two kinds of addresses are refused, in every form (IPv4-mapped, -compatible, NAT64, 6to4):
//! - never a receiver: unspecified, link-local (where cloud metadata lives), multicast,
//!   reserved and broadcast addresses: always refused;
//! - internal: loopback, private (RFC 1918, unique local) and shared (CGNAT) addresses:
//!   allowed by default, as the API contract promises (a self-hosted service notifies services
//!   next to it), refused with `KEYWARD_WEBHOOK_ALLOW_PRIVATE=false`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What kind of address this is, when it is one keyward may refuse to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Never a receiver (unspecified, link-local, multicast, reserved): always refused.
    Never(&'static str),
    /// Loopback, private or shared: refused only with `KEYWARD_WEBHOOK_ALLOW_PRIVATE=false`.
    Internal(&'static str),
}

/// Why an address may not be called (`None` when it may).
pub(crate) fn refusal(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    match kind(ip)? {
        Kind::Never(why) => Some(why),
        Kind::Internal(_) if allow_private => None,
        Kind::Internal(why) => Some(why),
    }
}

/// The kind of an address, `None` for an ordinary public one.
pub(crate) fn kind(ip: IpAddr) -> Option<Kind> {
    match ip {
        IpAddr::V4(v4) => kind_v4(v4),
        IpAddr::V6(v6) => kind_v6(v6),
    }
}

fn kind_v4(ip: Ipv4Addr) -> Option<Kind> {
    use Kind::{Internal, Never};
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if a == 0 => Never("an unspecified address"),
        _ if ip.is_link_local() => Never("a link-local address (cloud metadata lives there)"),
        _ if ip.is_multicast() => Never("a multicast address"),
        _ if a >= 240 => Never("a reserved or broadcast address"),
        _ if ip.is_loopback() => Internal("a loopback address"),
        _ if ip.is_private() => Internal("a private address"),
        // Shared address space (carrier-grade NAT; some clouds' metadata, e.g. 100.100.100.200).
        _ if a == 100 && (64..128).contains(&b) => Internal("a shared (carrier-grade NAT) address"),
        _ if a == 192 && b == 0 && c == 0 => Internal("an IETF protocol address"),
        _ if a == 198 && (b == 18 || b == 19) => Internal("a benchmarking address"),
        _ => return None,
    })
}

fn kind_v6(ip: Ipv6Addr) -> Option<Kind> {
    use Kind::{Internal, Never};
    let s = ip.segments();
    // IPv4 written in IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64
    // (64:ff9b::a.b.c.d) and 6to4 (2002:AABB:CCDD::) carry an IPv4 address that is judged.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return kind_v4(v4);
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return kind_v4(embedded(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return kind_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return kind_v4(embedded(s[1], s[2]));
    }
    Some(match () {
        _ if ip.is_unspecified() => Never("an unspecified address"),
        _ if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 => Never("a link-local address"),
        _ if ip.is_multicast() => Never("a multicast address"),
        _ if ip.is_loopback() => Internal("a loopback address"),
        _ if s[0] & 0xfe00 == 0xfc00 => Internal("a unique local (private) address"),
        _ => return None,
    })
}

/// A refused address, as the error a delivery records.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused_message(host: &str, ip: IpAddr, why: &str, allow_private: bool) -> String {
    if allow_private {
        format!("refused: {host} is {why} ({ip}), never a webhook receiver")
    } else {
        format!("refused: {host} is {why} ({ip}); internal receivers need KEYWARD_WEBHOOK_ALLOW_PRIVATE=true")
    }
}

/// Checks a webhook URL as it is created: an absolute `http`/`https` URL of at most 2048
/// characters, without credentials, control characters, whitespace or a fragment, whose host
/// (when it is a literal address, in any of the forms URL parsing accepts, such as
/// `2130706433` or `[::ffff:127.0.0.1]`) may be called. `Err` names the problem.
pub(crate) fn check_url(url: &str, allow_private: bool) -> Result<(), String> {
    if url.len() > 2048 {
        return Err("url must be at most 2048 characters".into());
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("url may not contain control characters or whitespace".into());
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("url must be an absolute http:// or https:// URL".into());
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|_| "url is not a valid absolute URL".to_string())?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url may not contain credentials (user:password@)".into());
    }
    if parsed.fragment().is_some() {
        return Err("url may not contain a fragment (#...)".into());
    }
    let Some(host) = parsed.host() else {
        return Err("url must name a host".into());
    };
    let literal = match host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if !allow_private && (d == "localhost" || d.ends_with(".localhost")) {
                return Err(format!("url names {d}, a loopback host; internal receivers need KEYWARD_WEBHOOK_ALLOW_PRIVATE=true"));
            }
            None
        }
    };
    match literal.and_then(|ip| Some((ip, refusal(ip, allow_private)?))) {
        Some((ip, why)) => Err(format!(
            "url {}",
            refused_message(
                parsed.host_str().unwrap_or_default(),
                ip,
                why,
                allow_private
            )
            .trim_start_matches("refused: ")
        )),
        None => Ok(()),
    }
}

/// Why a URL's literal address may not be called at delivery time (a name is checked by the
/// resolver instead).
pub(crate) fn literal_refusal(url: &str, allow_private: bool) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let ip = match parsed.host()? {
        url::Host::Ipv4(v4) => IpAddr::V4(v4),
        url::Host::Ipv6(v6) => IpAddr::V6(v6),
        url::Host::Domain(_) => return None,
    };
    refusal(ip, allow_private).map(|why| refused_message(&ip.to_string(), ip, why, allow_private))
}

/// Resolves names with the system resolver and keeps only addresses that may be called; a name
/// left with none fails with [`Refused`].
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match refusal(a.ip(), allow_private) {
                    None => true,
                    Some(why) => {
                        first_refusal.get_or_insert_with(|| {
                            refused_message(&host, a.ip(), why, allow_private)
                        });
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let msg = first_refusal.unwrap_or_else(|| format!("{host} did not resolve"));
                return Err(Box::new(Refused(msg)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client of webhook deliveries: a total timeout, no redirects, no proxy from the
/// environment, and the guarded resolver. `None` when it cannot be built (no TLS backend):
/// never a default client, which would follow redirects and skip the address rules.
pub(crate) fn client(timeout: Duration, allow_private: bool) -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .build()
        .inspect_err(|e| tracing::error!(error = %e, "cannot build the webhook HTTP client"))
        .ok()
}

/// The refusal inside a failed request, if that is why it failed.
pub(crate) fn refused_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.0.clone());
        }
        cur = err.source();
    }
    None
}

/// Consecutive failed attempts after which an endpoint's circuit opens.
pub(crate) const CIRCUIT_FAILURES: u32 = 5;
/// How long a circuit first stays open; each failed probe doubles it, up to [`MAX_OPEN_MS`].
const FIRST_OPEN_MS: i64 = 30_000;
const MAX_OPEN_MS: i64 = 600_000;

/// Per-endpoint circuits of this node: an endpoint whose last [`CIRCUIT_FAILURES`] attempts
/// failed is not called until its circuit's time is up; then one attempt probes it (success
/// closes the circuit, failure opens it again for twice as long). Endpoints that are being
/// called right now are marked busy, so each endpoint gets one worker and one attempt at a
/// time, in event order.
#[derive(Default)]
pub(crate) struct Circuits {
    state: std::sync::Mutex<std::collections::HashMap<String, Circuit>>,
}

#[derive(Default, Clone, Copy)]
struct Circuit {
    failures: u32,
    /// Open until then (ms since the epoch).
    open_until: Option<i64>,
    /// How long it opens next time.
    next_open_ms: i64,
    busy: bool,
}

/// What the delivery worker may do with an endpoint now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Call it (the endpoint is now marked busy until [`Circuits::release`]).
    Go,
    /// Another worker is calling it.
    Busy,
    /// Its circuit is open until this instant (ms).
    OpenUntil(i64),
}

impl Circuits {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Circuit>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the endpoint for one worker at `now_ms`, unless it is busy or its circuit is open.
    pub(crate) fn enter(&self, endpoint: &str, now_ms: i64) -> Gate {
        let mut map = self.lock();
        let c = map.entry(endpoint.to_string()).or_default();
        if c.busy {
            return Gate::Busy;
        }
        if let Some(until) = c.open_until.filter(|&u| u > now_ms) {
            return Gate::OpenUntil(until);
        }
        c.busy = true;
        Gate::Go
    }

    /// Records one attempt's outcome; `Some(until)` when the circuit (re)opened.
    pub(crate) fn record(&self, endpoint: &str, ok: bool, now_ms: i64) -> Option<i64> {
        let mut map = self.lock();
        let c = map.entry(endpoint.to_string()).or_default();
        if ok {
            *c = Circuit {
                busy: c.busy,
                ..Circuit::default()
            };
            return None;
        }
        c.failures += 1;
        // A failed probe (the circuit was open before) reopens at once.
        if c.failures >= CIRCUIT_FAILURES || c.open_until.is_some() {
            let open = if c.next_open_ms == 0 {
                FIRST_OPEN_MS
            } else {
                c.next_open_ms
            };
            c.open_until = Some(now_ms + open);
            c.next_open_ms = (open * 2).min(MAX_OPEN_MS);
            return c.open_until;
        }
        None
    }

    /// The worker is done with the endpoint.
    pub(crate) fn release(&self, endpoint: &str) {
        let mut map = self.lock();
        if let Some(c) = map.get_mut(endpoint) {
            c.busy = false;
            // Forget healthy, idle endpoints (deleted webhooks do not pile up).
            if c.failures == 0 && c.open_until.is_none() {
                map.remove(endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_internal_address_form_is_refused_and_public_ones_are_not() {
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(refusal(ip, false).is_some(), "{refused} must be refused");
        }
        for never in [
            "0.0.0.0",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "224.0.0.1",
        ] {
            let ip: IpAddr = never.parse().unwrap();
            assert!(refusal(ip, true).is_some(), "{never} is never a receiver");
        }
        for internal in [
            "127.0.0.1",
            "10.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "fd00::1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert_eq!(refusal(ip, true), None, "{internal} is allowed by default");
        }
        for allowed in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert_eq!(refusal(ip, false), None, "{allowed} may be called");
        }
    }

    #[test]
    fn urls_are_refused_for_shape_and_for_literal_internal_addresses() {
        for (url, says) in [
            ("http://example.com/a\r\nX: y", "control"),
            ("http://example.com/a b", "whitespace"),
            ("ftp://example.com/", "http"),
            ("http://user:pass@example.com/", "credentials"),
            ("http://example.com/#frag", "fragment"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://0.0.0.0:8080/", "unspecified"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://2130706433/", "loopback"),
            ("http://0x7f.1/", "loopback"),
            ("http://localhost:6379/", "loopback"),
            ("http://api.localhost/", "loopback"),
        ] {
            let err = check_url(url, false).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
        }
        assert!(check_url("https://hooks.example.com/keyward?x=1", false).is_ok());
        assert!(check_url("http://127.0.0.1:9/h", true).is_ok());
        assert!(check_url("http://localhost:9/h", true).is_ok());
        assert!(check_url("http://user@127.0.0.1:9/h", true).is_err());
        assert!(check_url("http://169.254.169.254/", true).is_err());
        assert!(check_url("http://0.0.0.0:9/", true).is_err());
    }

    #[test]
    fn a_circuit_opens_after_consecutive_failures_and_a_failed_probe_doubles_it() {
        let c = Circuits::default();
        assert_eq!(c.enter("wh", 0), Gate::Go);
        assert_eq!(c.enter("wh", 0), Gate::Busy, "one worker per endpoint");
        for i in 1..CIRCUIT_FAILURES {
            assert_eq!(c.record("wh", false, i as i64), None);
        }
        c.record("wh", true, 10);
        for i in 0..CIRCUIT_FAILURES - 1 {
            assert_eq!(
                c.record("wh", false, 20 + i as i64),
                None,
                "a success reset the count"
            );
        }
        assert_eq!(c.record("wh", false, 100), Some(100 + FIRST_OPEN_MS));
        c.release("wh");
        assert_eq!(c.enter("wh", 200), Gate::OpenUntil(100 + FIRST_OPEN_MS));
        assert_eq!(c.enter("wh", 100 + FIRST_OPEN_MS), Gate::Go, "a probe");
        assert_eq!(
            c.record("wh", false, 40_000),
            Some(40_000 + 2 * FIRST_OPEN_MS),
            "a failed probe reopens for twice as long"
        );
        c.release("wh");
        assert_eq!(c.enter("wh", 40_000 + 2 * FIRST_OPEN_MS), Gate::Go);
        assert_eq!(c.record("wh", true, 100_000), None);
        c.release("wh");
        assert_eq!(c.enter("wh", 100_001), Gate::Go, "closed again");
    }
}
