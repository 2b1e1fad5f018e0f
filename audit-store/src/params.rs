//! Query and export parameters as they arrive (flags or URL query strings), parsed with errors
//! that name the offending field. Times are RFC 3339, durations like `30s`, `5m` or `PT1M`.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::error::{AuditError, Result};

/// The window on each side of `at` when none is given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Flows listed when no limit is given.
pub const DEFAULT_LIMIT: usize = 1000;
/// The most flows one answer lists (an answer stays a few tens of MiB at most).
pub const MAX_LIMIT: usize = 100_000;

/// A query as text, e.g. from `GET /audit?dst=...&at=...`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The time of interest, RFC 3339 (required).
    pub at: Option<String>,
    /// How far on each side of `at` to look (default 60 s).
    pub window: Option<String>,
    /// Destination address.
    pub dst: Option<String>,
    /// Source address.
    pub src: Option<String>,
    /// Slice name.
    pub slice: Option<String>,
    /// Source or destination port.
    pub port: Option<String>,
    /// The node's port the outside saw (after the node's masquerade).
    pub public_port: Option<String>,
    /// At most this many flows in the answer (default 1000).
    pub limit: Option<String>,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParams {
    /// The time of interest, ns since the Unix epoch.
    pub at_ns: u64,
    /// Half-width of the window.
    pub window: Duration,
    /// Destination address filter.
    pub dst: Option<IpAddr>,
    /// Source address filter.
    pub src: Option<IpAddr>,
    /// Slice name filter.
    pub slice: Option<String>,
    /// Port filter (source or destination).
    pub port: Option<u16>,
    /// Public (post-masquerade) source port filter.
    pub public_port: Option<u16>,
    /// Flow list limit.
    pub limit: usize,
}

impl QueryParams {
    /// Start of the window (ns).
    pub fn from_ns(&self) -> u64 {
        self.at_ns.saturating_sub(duration_ns(self.window))
    }

    /// End of the window (ns).
    pub fn to_ns(&self) -> u64 {
        self.at_ns.saturating_add(duration_ns(self.window))
    }
}

impl QueryRequest {
    /// Parse; errors name the field as `{prefix}{name}` (prefix `--` for flags, empty for URLs).
    pub fn parse(&self, prefix: &str) -> Result<QueryParams> {
        let field = |name: &str| format!("{prefix}{name}");
        let at = self
            .at
            .as_deref()
            .ok_or_else(|| AuditError::invalid(&field("at"), "required"))?;
        let addr = |name: &str, v: &Option<String>| -> Result<Option<IpAddr>> {
            v.as_deref()
                .map(|s| {
                    s.parse().map_err(|_| {
                        AuditError::invalid(&field(name), format!("{s:?} is not an IP address"))
                    })
                })
                .transpose()
        };
        Ok(QueryParams {
            at_ns: parse_time(&field("at"), at)?,
            window: match &self.window {
                Some(w) => parse_duration(&field("window"), w)?,
                None => DEFAULT_WINDOW,
            },
            dst: addr("dst", &self.dst)?,
            src: addr("src", &self.src)?,
            slice: self.slice.clone(),
            port: port(&field("port"), self.port.as_deref())?,
            public_port: port(&field("public-port"), self.public_port.as_deref())?,
            limit: self
                .limit
                .as_deref()
                .map(|l| match l.parse() {
                    Ok(n) if n <= MAX_LIMIT => Ok(n),
                    Ok(_) => Err(AuditError::invalid(
                        &field("limit"),
                        format!("{l} is more than {MAX_LIMIT}"),
                    )),
                    Err(_) => Err(AuditError::invalid(
                        &field("limit"),
                        format!("{l:?} is not a count"),
                    )),
                })
                .transpose()?
                .unwrap_or(DEFAULT_LIMIT),
        })
    }
}

/// A port number, if given; `field` names it in the error.
fn port(field: &str, text: Option<&str>) -> Result<Option<u16>> {
    text.map(|p| {
        p.parse()
            .map_err(|_| AuditError::invalid(field, format!("{p:?} is not a port (0-65535)")))
    })
    .transpose()
}

/// An RFC 3339 time as ns since the Unix epoch; `field` names it in the error.
pub fn parse_time(field: &str, s: &str) -> Result<u64> {
    let ts: jiff::Timestamp = s
        .parse()
        .map_err(|e| AuditError::invalid(field, format!("{s:?} is not an RFC 3339 time ({e})")))?;
    u64::try_from(ts.as_nanosecond())
        .map_err(|_| AuditError::invalid(field, format!("{s:?} is before 1970")))
}

/// A duration such as `30s`, `5m`, `1h 30m` or `PT1M`; `field` names it in the error.
pub fn parse_duration(field: &str, s: &str) -> Result<Duration> {
    let d: jiff::SignedDuration = s.parse().map_err(|e| {
        AuditError::invalid(
            field,
            format!("{s:?} is not a duration like 30s or 5m ({e})"),
        )
    })?;
    Duration::try_from(d).map_err(|_| AuditError::invalid(field, format!("{s:?} is negative")))
}

/// ns since the Unix epoch as RFC 3339 (UTC).
pub fn format_time(ns: u64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{ns}ns"))
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(at: &str) -> QueryRequest {
        QueryRequest {
            at: Some(at.into()),
            ..QueryRequest::default()
        }
    }

    #[test]
    fn times_windows_and_filters_parse() {
        let mut r = req("2026-11-28T03:00:00.5Z");
        r.window = Some("5m".into());
        r.dst = Some("2001:db8::1".into());
        r.port = Some("443".into());
        let p = r.parse("--").expect("parse");
        assert_eq!(p.at_ns, 1_795_834_800_500_000_000);
        assert_eq!(p.window, Duration::from_secs(300));
        assert_eq!(p.from_ns(), p.at_ns - 300_000_000_000);
        assert_eq!(p.dst, Some("2001:db8::1".parse().expect("addr")));
        assert_eq!(p.port, Some(443));
        assert_eq!(p.limit, DEFAULT_LIMIT);
        assert_eq!(format_time(p.at_ns), "2026-11-28T03:00:00.5Z");
        r.window = Some("PT1M".into());
        assert_eq!(r.parse("").expect("iso").window, Duration::from_secs(60));
        r.limit = Some("100000".into());
        assert_eq!(r.parse("").expect("max").limit, MAX_LIMIT);
        r.limit = Some("100001".into());
        let err = r.parse("").expect_err("over the max").to_string();
        assert!(
            err.contains("limit") && err.contains("more than 100000"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (req("yesterday"), "--at"),
            (QueryRequest::default(), "--at"),
            (
                QueryRequest {
                    dst: Some("10.0.0.300".into()),
                    ..req("2026-11-28T03:00:00Z")
                },
                "--dst",
            ),
            (
                QueryRequest {
                    window: Some("-5m".into()),
                    ..req("2026-11-28T03:00:00Z")
                },
                "--window",
            ),
            (
                QueryRequest {
                    port: Some("70000".into()),
                    ..req("2026-11-28T03:00:00Z")
                },
                "--port",
            ),
        ];
        for (r, field) in cases {
            let err = r.parse("--").expect_err("invalid");
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }
}
