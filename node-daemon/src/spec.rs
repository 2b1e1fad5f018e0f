//! A sliver as the node manager describes it (`PUT /slivers/{name}`), with every field checked
//! and every error naming its field.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use devices::virtio::net::MacAddr;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use vmm::arch::mptable::MAX_VCPUS;
use vmm::boot::cmdline;
use vmm::memory::{host_mem_mib, MIN_MEM_MIB};

use crate::error::SliverError;
use crate::published_ports::PortForward;

/// Largest request body the daemon reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest extra command line a spec may carry (the VMM adds its own arguments).
pub const MAX_CMDLINE: usize = 1024;
/// Largest rate a limit may name: 100 Gbit/s.
pub const MAX_RATE_BPS: u64 = 100_000_000_000;
/// Largest daily byte budget: 10 TB.
pub const MAX_KBYTE_PER_DAY: u64 = 10_000_000_000;
/// Largest share weight.
pub const MAX_SHARE: u32 = 1000;
/// PlanetLab's default disk quota: 10 GB, in kB.
pub const DEFAULT_DISK_MAX_KB: u64 = 10_000_000;
/// Largest disk quota: 16 TiB, in kB.
pub const MAX_DISK_MAX_KB: u64 = 16 << 30;
/// Most ssh keys a sliver takes.
pub const MAX_KEYS: usize = 16;
/// Longest ssh key line (an RSA-4096 key with a comment is about 750 bytes).
pub const MAX_KEY_LEN: usize = 1024;
/// Most bytes of all keys together (a sliver's record holds them: 16 KiB in all).
pub const MAX_KEYS_BYTES: usize = 8192;
/// Fields whose value is an array (of strings); every other array is refused.
const ARRAY_FIELDS: [&str; 1] = ["keys"];
/// Fields that are arrays of objects (the spec's, and a PATCH's).
const OBJECT_ARRAY_FIELDS: [&str; 2] = ["net.ports", "ports"];

fn default_vcpus() -> u8 {
    1
}
fn default_mem_mib() -> u64 {
    128
}
fn default_share() -> u32 {
    1
}

/// `net` of a sliver: its address plan and PlanetLab-style limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliverNet {
    /// Guest MAC; derived from the sliver name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Guest address with prefix, e.g. `10.0.3.2/24`; with `host_ipv4` absent too, the node
    /// allocates a /30 from its `--sliver-net` (and records it here).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv4: String,
    /// Host (TAP) address in the same subnet, e.g. `10.0.3.1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ipv4: String,
    /// Ports of the node's uplink address forwarded to the sliver (`--uplink` nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortForward>,
    /// Weight of this sliver's share of the node's bandwidth.
    #[serde(default = "default_share")]
    pub net_share: u32,
    /// Guaranteed rate while it has traffic, bit/s.
    #[serde(default)]
    pub net_min_rate: u64,
    /// Cap, bit/s; none means the node's capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_max_rate: Option<u64>,
    /// Daily budget, KB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_max_kbyte: Option<u64>,
    /// Daily threshold after which the cap tightens, KB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_thresh_kbyte: Option<u64>,
}

/// A sliver spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliverSpec {
    /// Must equal the name in the URL when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The slice this sliver belongs to.
    pub slice: String,
    /// Guest kernel (ELF vmlinux with a PVH entry) on the node.
    pub kernel: PathBuf,
    /// Guest initramfs on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Extra kernel arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory, MiB.
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u64,
    /// Network device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<SliverNet>,
    /// The reference image (`GET /images`) the sliver's root disk is a copy-on-write copy of
    /// (PlanetLab's `vref`); without it the guest runs from `initrd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vref: Option<String>,
    /// Most host space the sliver's root disk may take, kB (PlanetLab's `disk_max`; default
    /// 10 000 000). It is also the disk's size as the guest sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_max: Option<u64>,
    /// ssh public keys (`authorized_keys` lines) that may log in as root (PlanetLab's
    /// `keys`); they reach the guest through its cloud-init config disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// Weight of the sliver's share of the node's CPUs when they are busy (PlanetLab's
    /// `cpu_share`), 1 to [`MAX_SHARE`].
    #[serde(default = "default_share")]
    pub cpu_share: u32,
    /// Cap, percent of one CPU (e.g. 250 for two and a half CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max_pct: Option<u32>,
    /// Guarantee, percent of one CPU (PlanetLab's `cpu_pct`): at least this much when the
    /// sliver wants it, through its CPU weight (`crate::cpu_guarantee`). 1 to 100 per vCPU
    /// and per CPU of the node, at most `cpu_max_pct`; the node's slivers together at most
    /// 90 % of its CPUs (else 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<u32>,
    /// The CPUs the sliver runs on, a cpuset list such as `0-1,3` (for benchmarkers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<String>,
}

/// Whether `s` is a valid sliver name: `[a-z0-9-]{1,63}`.
pub fn valid_sliver_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `s` is a valid slice name: `[a-z0-9_-]{1,63}` (PlanetLab slice names carry the
/// site prefix with an underscore, e.g. `princeton_codeen`).
pub fn valid_slice_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Check what serde would otherwise let through: a request body is a JSON object whose
/// values are scalars or objects of the same kind. An array (serde would read it as a struct,
/// field by field in order) or a `null` (read as "absent") is refused, naming its field.
fn check_shape(value: &serde_json::Value, path: &str) -> Result<(), SliverError> {
    let field = |path: &str| {
        if path.is_empty() {
            "body".to_string()
        } else {
            path.to_string()
        }
    };
    match value {
        serde_json::Value::Object(map) => map.iter().try_for_each(|(key, v)| {
            let inner = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            check_shape(v, &inner)
        }),
        serde_json::Value::Array(_) if path.is_empty() => Err(SliverError::invalid(
            "body",
            "the body must be a JSON object, not an array",
        )),
        serde_json::Value::Array(items) if ARRAY_FIELDS.contains(&path) => {
            match items.iter().position(|v| !v.is_string()) {
                Some(i) => Err(SliverError::invalid(
                    &format!("{path}[{i}]"),
                    "must be a string",
                )),
                None => Ok(()),
            }
        }
        serde_json::Value::Array(items) if OBJECT_ARRAY_FIELDS.contains(&path) => {
            items.iter().enumerate().try_for_each(|(i, v)| {
                let inner = format!("{path}[{i}]");
                if v.is_object() {
                    check_shape(v, &inner)
                } else {
                    Err(SliverError::invalid(&inner, "must be an object"))
                }
            })
        }
        serde_json::Value::Array(_) => Err(SliverError::invalid(
            &field(path),
            "an array is not allowed here",
        )),
        serde_json::Value::Null => Err(SliverError::invalid(
            &field(path),
            "null is not allowed: leave the field out instead",
        )),
        _ if path.is_empty() => Err(SliverError::invalid(
            "body",
            "the body must be a JSON object",
        )),
        _ => Ok(()),
    }
}

/// Parse a JSON body into `T`: a type error, unknown field or truncated document names its
/// field; the body must be an object without arrays or nulls ([`check_shape`]).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, SliverError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(SliverError::TooLarge {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        SliverError::invalid(&field, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| {
        SliverError::invalid(
            "body",
            format!("trailing data after the JSON document: {e}"),
        )
    })?;
    let document: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| SliverError::invalid("body", format!("not JSON: {e}")))?;
    check_shape(&document, "")?;
    Ok(value)
}

fn check_file(field: &str, path: &std::path::Path) -> Result<(), SliverError> {
    if !path.is_absolute() {
        return Err(SliverError::invalid(
            field,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(SliverError::invalid(
            field,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(SliverError::invalid(
            field,
            format!("{}: {e}", path.display()),
        )),
    }
}

/// `ADDRESS/PREFIX`, the prefix one or two decimal digits (no sign, as the schema says).
fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    if !(1..=2).contains(&prefix.len()) || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((addr.parse().ok()?, prefix.parse().ok()?))
}

impl SliverNet {
    /// Guest address and prefix (valid once [`SliverNet::validate`] passed).
    pub fn guest_cidr(&self) -> Option<(Ipv4Addr, u8)> {
        parse_cidr(&self.ipv4)
    }

    /// Host (TAP) address (valid once [`SliverNet::validate`] passed).
    pub fn host_addr(&self) -> Option<Ipv4Addr> {
        self.host_ipv4.parse().ok()
    }

    /// Whether the node is to allocate the addresses (neither is given).
    pub fn wants_addresses(&self) -> bool {
        self.ipv4.is_empty() && self.host_ipv4.is_empty()
    }

    /// The guest's subnet (valid once [`SliverNet::validate`] passed with addresses).
    pub fn subnet(&self) -> Option<Ipv4Net> {
        let (ip, prefix) = self.guest_cidr()?;
        Ipv4Net::new(ip, prefix).ok().map(|n| n.trunc())
    }

    /// Check addresses (unless both are to be allocated), ports and limits.
    pub fn validate(&self) -> Result<(), SliverError> {
        crate::published_ports::validate(&self.ports)?;
        if self.wants_addresses() {
            return self.validate_mac_and_limits();
        }
        for (field, value, other) in [
            ("net.ipv4", &self.ipv4, "net.host_ipv4"),
            ("net.host_ipv4", &self.host_ipv4, "net.ipv4"),
        ] {
            if value.is_empty() {
                return Err(SliverError::invalid(
                    field,
                    format!("required with {other} (give both, or neither for the node to allocate them)"),
                ));
            }
        }
        self.validate_addresses()?;
        self.validate_mac_and_limits()
    }

    fn validate_mac_and_limits(&self) -> Result<(), SliverError> {
        if let Some(mac) = &self.mac {
            let parsed: MacAddr =
                mac.parse()
                    .map_err(|e: devices::virtio::net::config::BadMac| {
                        SliverError::invalid("net.mac", e.to_string())
                    })?;
            if parsed.is_multicast() {
                return Err(SliverError::invalid(
                    "net.mac",
                    format!("{mac} is a multicast address"),
                ));
            }
        }
        self.validate_limits()
    }

    fn validate_addresses(&self) -> Result<(), SliverError> {
        let (guest, prefix) = parse_cidr(&self.ipv4)
            .filter(|(_, p)| (1..=30).contains(p))
            .ok_or_else(|| {
                SliverError::invalid(
                    "net.ipv4",
                    format!(
                        "{:?} is not ADDRESS/PREFIX with a prefix of 1 to 30",
                        self.ipv4
                    ),
                )
            })?;
        let host: Ipv4Addr = self.host_ipv4.parse().map_err(|_| {
            SliverError::invalid(
                "net.host_ipv4",
                format!("{:?} is not an IPv4 address", self.host_ipv4),
            )
        })?;
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(host) & mask != u32::from(guest) & mask || host == guest {
            return Err(SliverError::invalid(
                "net.host_ipv4",
                format!("{host} must be another address in {guest}/{prefix}"),
            ));
        }
        Ok(())
    }

    /// The limits as the shaper's allocator takes them.
    pub fn limits(&self) -> crate::shares::slots::Limits {
        crate::shares::slots::Limits {
            share: self.net_share,
            min_rate: self.net_min_rate,
            max_rate: self.net_max_rate,
            budget: self.net_thresh_kbyte.zip(self.net_max_kbyte),
        }
    }

    /// Check the limits alone (also used for PATCH).
    pub fn validate_limits(&self) -> Result<(), SliverError> {
        if !(1..=MAX_SHARE).contains(&self.net_share) {
            return Err(SliverError::invalid(
                "net.net_share",
                format!("{} is not a weight from 1 to {MAX_SHARE}", self.net_share),
            ));
        }
        if self.net_min_rate > MAX_RATE_BPS {
            return Err(SliverError::invalid(
                "net.net_min_rate",
                format!("{} bit/s is above {MAX_RATE_BPS}", self.net_min_rate),
            ));
        }
        if let Some(max) = self.net_max_rate {
            if max == 0 || max > MAX_RATE_BPS {
                return Err(SliverError::invalid(
                    "net.net_max_rate",
                    format!("{max} bit/s is not between 1 and {MAX_RATE_BPS}"),
                ));
            }
            if self.net_min_rate > max {
                return Err(SliverError::invalid(
                    "net.net_min_rate",
                    format!("{} bit/s is above net_max_rate {max}", self.net_min_rate),
                ));
            }
        }
        for (field, value) in [
            ("net.net_max_kbyte", self.net_max_kbyte),
            ("net.net_thresh_kbyte", self.net_thresh_kbyte),
        ] {
            if value.is_some_and(|v| v > MAX_KBYTE_PER_DAY) {
                return Err(SliverError::invalid(
                    field,
                    format!(
                        "{} KB a day is above {MAX_KBYTE_PER_DAY}",
                        value.unwrap_or(0)
                    ),
                ));
            }
        }
        match (self.net_thresh_kbyte, self.net_max_kbyte) {
            (Some(t), Some(m)) if t > m => Err(SliverError::invalid(
                "net.net_thresh_kbyte",
                format!("{t} KB is above net_max_kbyte {m}"),
            )),
            (Some(_), None) => Err(SliverError::invalid(
                "net.net_thresh_kbyte",
                "a threshold needs net_max_kbyte",
            )),
            _ => Ok(()),
        }
    }
}

impl SliverSpec {
    /// Check the spec for sliver `name` (from the URL); fills in `name`.
    pub fn validate(&mut self, name: &str) -> Result<(), SliverError> {
        if !valid_sliver_name(name) {
            return Err(SliverError::invalid(
                "name",
                format!("{name:?} does not match [a-z0-9-]{{1,63}}"),
            ));
        }
        if let Some(body_name) = &self.name {
            if body_name != name {
                return Err(SliverError::invalid(
                    "name",
                    format!("{body_name:?} differs from {name:?} in the URL"),
                ));
            }
        }
        self.name = Some(name.to_string());
        if !valid_slice_name(&self.slice) {
            return Err(SliverError::invalid(
                "slice",
                format!("{:?} does not match [a-z0-9_-]{{1,63}}", self.slice),
            ));
        }
        check_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_file("initrd", initrd)?;
        }
        if let Some(extra) = &self.cmdline {
            if extra.len() > MAX_CMDLINE {
                return Err(SliverError::invalid(
                    "cmdline",
                    format!("{} bytes is over {MAX_CMDLINE}", extra.len()),
                ));
            }
            cmdline::build(Some(extra), &[])
                .map_err(|e| SliverError::invalid("cmdline", e.to_string()))?;
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(SliverError::invalid(
                "vcpus",
                format!("{} is not between 1 and {MAX_VCPUS}", self.vcpus),
            ));
        }
        let host = host_mem_mib().unwrap_or(u64::MAX);
        if self.mem_mib < MIN_MEM_MIB || self.mem_mib > host {
            return Err(SliverError::invalid(
                "mem_mib",
                format!(
                    "{} MiB is not between {MIN_MEM_MIB} and the host's {host}",
                    self.mem_mib
                ),
            ));
        }
        if let Some(net) = &self.net {
            net.validate()?;
        }
        self.validate_cpu()?;
        self.validate_storage()
    }

    /// Check the CPU fields against this host.
    pub(crate) fn validate_cpu(&self) -> Result<(), SliverError> {
        if !(1..=MAX_SHARE).contains(&self.cpu_share) {
            return Err(SliverError::invalid(
                "cpu_share",
                format!("{} is not a weight from 1 to {MAX_SHARE}", self.cpu_share),
            ));
        }
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|l| crate::sliver_cgroups::parse_cpu_list(&l))
            .unwrap_or_else(|| vec![0]);
        if let Some(pct) = self.cpu_max_pct {
            let most = 100 * online.len() as u32;
            if pct == 0 || pct > most {
                return Err(SliverError::invalid(
                    "cpu_max_pct",
                    format!(
                        "{pct} is not between 1 and {most} (percent of one of this host's {} CPUs)",
                        online.len()
                    ),
                ));
            }
        }
        self.validate_cpu_pct()?;
        if let Some(cores) = &self.cpu_cores {
            let cpus = crate::sliver_cgroups::parse_cpu_list(cores).ok_or_else(|| {
                SliverError::invalid(
                    "cpu_cores",
                    format!("{cores:?} is not a CPU list like 0-1,3"),
                )
            })?;
            if let Some(missing) = cpus.iter().find(|c| !online.contains(c)) {
                return Err(SliverError::invalid(
                    "cpu_cores",
                    format!("CPU {missing} is not on this host (online: {online:?})"),
                ));
            }
        }
        Ok(())
    }

    /// `cpu_pct` on its own: 1 to 100 per vCPU and per CPU the node's slivers may use, and
    /// at most `cpu_max_pct` (whether it fits beside the other slivers' is the registry's to
    /// say).
    fn validate_cpu_pct(&self) -> Result<(), SliverError> {
        let Some(pct) = self.cpu_pct else {
            return Ok(());
        };
        let cpus = crate::cpu_guarantee::node_cpus();
        let most = 100 * u32::from(self.vcpus).min(cpus);
        if pct == 0 || pct > most {
            return Err(SliverError::invalid(
                "cpu_pct",
                format!(
                    "{pct} is not between 1 and {most} (percent of one CPU: at most 100 per \
                     vCPU, of which it has {}, and per CPU of this node, which has {cpus})",
                    self.vcpus
                ),
            ));
        }
        if let Some(max) = self.cpu_max_pct.filter(|&max| pct > max) {
            return Err(SliverError::invalid(
                "cpu_pct",
                format!("{pct} is above cpu_max_pct {max}: a guarantee cannot exceed the cap"),
            ));
        }
        Ok(())
    }

    /// What the sliver's cgroup enforces.
    pub fn cgroup_limits(&self) -> crate::sliver_cgroups::CgroupLimits {
        crate::sliver_cgroups::CgroupLimits {
            cpu_share: self.cpu_share,
            cpu_max_pct: self.cpu_max_pct,
            cpu_cores: self.cpu_cores.clone(),
            memory_bytes: (self.mem_mib << 20) + crate::sliver_cgroups::VMM_ALLOWANCE_BYTES,
        }
    }

    /// The root disk's quota in bytes (the default when not given).
    pub fn disk_max_bytes(&self) -> u64 {
        self.disk_max
            .unwrap_or(DEFAULT_DISK_MAX_KB)
            .saturating_mul(1024)
    }

    /// `vref`, `disk_max` and `keys` on their own (whether the image exists and fits is the
    /// image store's to say).
    fn validate_storage(&self) -> Result<(), SliverError> {
        if let Some(vref) = &self.vref {
            if !crate::images::valid_image_name(vref) {
                return Err(SliverError::invalid(
                    "vref",
                    format!("{vref:?} is not an image name ([a-z0-9][a-z0-9._-]{{0,62}})"),
                ));
            }
            if self.initrd.is_some() {
                return Err(SliverError::invalid(
                    "initrd",
                    "a sliver boots from its vref's disk or from an initrd, not both",
                ));
            }
        }
        if let Some(kb) = self.disk_max {
            if self.vref.is_none() {
                return Err(SliverError::invalid("disk_max", "needs vref (a disk)"));
            }
            if kb == 0 || kb > MAX_DISK_MAX_KB {
                return Err(SliverError::invalid(
                    "disk_max",
                    format!("{kb} kB is not between 1 and {MAX_DISK_MAX_KB}"),
                ));
            }
        }
        let keys = self.keys.as_deref().unwrap_or_default();
        if keys.len() > MAX_KEYS {
            return Err(SliverError::invalid(
                "keys",
                format!("{} keys; at most {MAX_KEYS}", keys.len()),
            ));
        }
        for (i, key) in keys.iter().enumerate() {
            check_key(key).map_err(|why| SliverError::invalid(&format!("keys[{i}]"), why))?;
        }
        let total: usize = keys.iter().map(String::len).sum();
        if total > MAX_KEYS_BYTES {
            return Err(SliverError::invalid(
                "keys",
                format!("{total} bytes in all; at most {MAX_KEYS_BYTES}"),
            ));
        }
        Ok(())
    }
}

/// Check one `authorized_keys` line: one OpenSSH public key (type, base64 blob that decodes
/// to a key of that type, optional comment), no options, nothing else.
fn check_key(key: &str) -> Result<(), String> {
    if key.len() > MAX_KEY_LEN {
        return Err(format!("{} bytes; at most {MAX_KEY_LEN}", key.len()));
    }
    if key.contains(['\n', '\r', '\0']) {
        return Err("one key per entry: no line breaks or NUL".into());
    }
    ssh_key::PublicKey::from_openssh(key.trim())
        .map(|_| ())
        .map_err(|e| format!("not an OpenSSH public key: {e}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn kernel() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().expect("tmp")
    }

    fn good(kernel: &std::path::Path) -> serde_json::Value {
        json!({
            "slice": "princeton_codeen",
            "kernel": kernel,
            "vcpus": 1,
            "mem_mib": 128,
            "net": {"ipv4": "10.0.3.2/24", "host_ipv4": "10.0.3.1", "net_share": 3,
                    "net_min_rate": 1000000, "net_max_rate": 10000000,
                    "net_max_kbyte": 5000000, "net_thresh_kbyte": 4000000}
        })
    }

    fn check(body: &[u8], name: &str) -> Result<SliverSpec, SliverError> {
        let mut spec: SliverSpec = parse(body)?;
        spec.validate(name)?;
        Ok(spec)
    }

    #[test]
    fn a_good_spec_passes_with_defaults_filled() {
        let k = kernel();
        let mut body = good(k.path());
        body.as_object_mut().expect("object").remove("vcpus");
        let spec = check(body.to_string().as_bytes(), "web-1").expect("valid");
        assert_eq!(spec.name.as_deref(), Some("web-1"));
        assert_eq!(spec.vcpus, 1);
        assert_eq!(spec.net.as_ref().map(|n| n.net_share), Some(3));
        assert_eq!(spec.cpu_pct, None);
    }

    #[test]
    fn a_guarantee_within_the_vcpus_and_the_cap_passes() {
        let k = kernel();
        let mut body = good(k.path());
        body["cpu_pct"] = json!(40);
        body["cpu_max_pct"] = json!(40);
        let spec = check(body.to_string().as_bytes(), "web-1").expect("valid");
        assert_eq!(spec.cpu_pct, Some(40));
        let shown = serde_json::to_value(&spec).expect("serialize");
        assert_eq!(shown["cpu_pct"], 40);
    }

    #[test]
    fn each_bad_field_is_named() {
        let k = kernel();
        let dir = tempfile::tempdir().expect("dir");
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("slice", Box::new(|v| v["slice"] = json!("Bad Slice"))),
            ("cpu_share", Box::new(|v| v["cpu_share"] = json!(0))),
            ("cpu_share", Box::new(|v| v["cpu_share"] = json!(100_000))),
            ("cpu_max_pct", Box::new(|v| v["cpu_max_pct"] = json!(0))),
            (
                "cpu_max_pct",
                Box::new(|v| v["cpu_max_pct"] = json!(1_000_000)),
            ),
            ("cpu_pct", Box::new(|v| v["cpu_pct"] = json!(0))),
            ("cpu_pct", Box::new(|v| v["cpu_pct"] = json!(101))),
            ("cpu_pct", Box::new(|v| v["cpu_pct"] = json!(u32::MAX))),
            ("cpu_pct", Box::new(|v| v["cpu_pct"] = json!(-1))),
            (
                "cpu_pct",
                Box::new(|v| {
                    v["cpu_pct"] = json!(50);
                    v["cpu_max_pct"] = json!(25);
                }),
            ),
            ("cpu_cores", Box::new(|v| v["cpu_cores"] = json!("0-"))),
            ("cpu_cores", Box::new(|v| v["cpu_cores"] = json!("4095"))),
            (
                "kernel",
                Box::new(|v| v["kernel"] = json!("/nonexistent/vmlinux")),
            ),
            (
                "kernel",
                Box::new(|v| v["kernel"] = json!("relative/vmlinux")),
            ),
            ("kernel", Box::new(move |v| v["kernel"] = json!(dir.path()))),
            (
                "initrd",
                Box::new(|v| v["initrd"] = json!("/nonexistent/initrd")),
            ),
            (
                "cmdline",
                Box::new(|v| v["cmdline"] = json!("a=\"unbalanced")),
            ),
            (
                "cmdline",
                Box::new(|v| v["cmdline"] = json!("x".repeat(2000))),
            ),
            ("vcpus", Box::new(|v| v["vcpus"] = json!(0))),
            ("vcpus", Box::new(|v| v["vcpus"] = json!(300))),
            ("vcpus", Box::new(|v| v["vcpus"] = json!("two"))),
            ("mem_mib", Box::new(|v| v["mem_mib"] = json!(1))),
            ("mem_mib", Box::new(|v| v["mem_mib"] = json!(1u64 << 40))),
            ("mem_mib", Box::new(|v| v["mem_mib"] = json!(-5))),
            (
                "net.mac",
                Box::new(|v| v["net"]["mac"] = json!("01:00:5e:00:00:01")),
            ),
            ("net.mac", Box::new(|v| v["net"]["mac"] = json!("nope"))),
            (
                "net.ipv4",
                Box::new(|v| v["net"]["ipv4"] = json!("10.0.3.2")),
            ),
            (
                "net.ipv4",
                Box::new(|v| v["net"]["ipv4"] = json!("10.0.3.2/31")),
            ),
            (
                "net.ipv4",
                Box::new(|v| v["net"]["ipv4"] = json!("10.0.3.2/+24")),
            ),
            (
                "net.host_ipv4",
                Box::new(|v| v["net"]["host_ipv4"] = json!("10.0.4.1")),
            ),
            (
                "net.host_ipv4",
                Box::new(|v| v["net"]["host_ipv4"] = json!("10.0.3.2")),
            ),
            (
                "net.net_share",
                Box::new(|v| v["net"]["net_share"] = json!(0)),
            ),
            (
                "net.net_share",
                Box::new(|v| v["net"]["net_share"] = json!(-1)),
            ),
            (
                "net.net_max_rate",
                Box::new(|v| v["net"]["net_max_rate"] = json!(0)),
            ),
            (
                "net.net_max_rate",
                Box::new(|v| v["net"]["net_max_rate"] = json!(1e15)),
            ),
            (
                "net.net_min_rate",
                Box::new(|v| v["net"]["net_min_rate"] = json!(20_000_000)),
            ),
            (
                "net.net_thresh_kbyte",
                Box::new(|v| v["net"]["net_thresh_kbyte"] = json!(6_000_000)),
            ),
            (
                "net.net_max_kbyte",
                Box::new(|v| v["net"]["net_max_kbyte"] = json!(u64::MAX)),
            ),
            ("net.bogus", Box::new(|v| v["net"]["bogus"] = json!(1))),
            ("colour", Box::new(|v| v["colour"] = json!("blue"))),
            ("name", Box::new(|v| v["name"] = json!("other"))),
        ];
        for (field, mutate) in cases {
            let mut body = good(k.path());
            mutate(&mut body);
            let e = check(body.to_string().as_bytes(), "web-1")
                .expect_err(&format!("{field} case should fail: {body}"));
            assert_eq!(e.field(), Some(field), "{body}: {e:?}");
            assert!(matches!(e, SliverError::Invalid { .. }), "{e:?}");
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn bad_names_truncated_json_and_big_bodies() {
        let k = kernel();
        let body = good(k.path()).to_string();
        for name in ["", "UPPER", "a_b", "a/b", &"x".repeat(64)] {
            let e = check(body.as_bytes(), name).expect_err("bad name");
            assert_eq!(e.field(), Some("name"), "{name:?}");
        }
        let e = check(&body.as_bytes()[..body.len() / 2], "ok").expect_err("truncated");
        assert!(matches!(e, SliverError::Invalid { .. }), "{e:?}");
        assert!(e.field().is_some());
        let e = check(format!("{body} {{}}").as_bytes(), "ok").expect_err("trailing");
        assert_eq!(e.field(), Some("body"));
        let e = check(&vec![b' '; MAX_BODY_BYTES + 1], "ok").expect_err("big");
        assert!(matches!(e, SliverError::TooLarge { .. }), "{e:?}");
    }

    #[test]
    fn only_objects_without_arrays_or_nulls() {
        let k = kernel();
        let positional = json!(["arr1", "s1", k.path()]).to_string();
        let e = check(positional.as_bytes(), "arr1").expect_err("array body");
        assert_eq!(e.field(), Some("body"), "{e}");
        for (body, field) in [
            (
                json!({"name": null, "slice": "s", "kernel": k.path()}),
                "name",
            ),
            (
                json!({"slice": "s", "kernel": k.path(), "net": null}),
                "net",
            ),
            (
                json!({"slice": "s", "kernel": k.path(), "net": ["10.0.3.2/24", "10.0.3.1"]}),
                "net",
            ),
            (json!(42), "body"),
            (json!("spec"), "body"),
        ] {
            let e = check(body.to_string().as_bytes(), "web-1").expect_err("refused");
            assert_eq!(e.field(), Some(field), "{body}: {e}");
        }
        let e = parse::<crate::registry::SliverPatch>(b"[999]").expect_err("array patch");
        assert_eq!(e.field(), Some("body"));
        let e = parse::<crate::registry::SliverPatch>(b"{\"net_max_rate\": null}")
            .expect_err("null patch");
        assert_eq!(e.field(), Some("net_max_rate"));
    }
}
