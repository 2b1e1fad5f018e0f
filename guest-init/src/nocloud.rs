//! The sliver's configuration as a cloud-init NoCloud data source: a small FAT disk labelled
//! `cidata` holding `meta-data`, `user-data` and `network-config`
//! (<https://cloudinit.readthedocs.io/en/latest/reference/datasources/nocloud.html>). The
//! node daemon writes them; `slicevisor-init` reads them, and so would cloud-init in a
//! standard cloud image. Each file is JSON, which YAML (cloud-init's format) reads as is;
//! `user-data` starts with the `#cloud-config` line cloud-init requires.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The FAT volume label of the config disk.
pub const LABEL: &str = "cidata";
/// The line `user-data` must start with.
pub const CLOUD_CONFIG: &str = "#cloud-config";

/// `meta-data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaData {
    /// Changes when the sliver is created anew (cloud-init reruns its per-instance steps).
    #[serde(rename = "instance-id")]
    pub instance_id: String,
    /// The guest's host name.
    #[serde(rename = "local-hostname")]
    pub local_hostname: String,
}

/// `user-data` (`#cloud-config`): the host name and the slice's ssh keys, for root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserData {
    /// Host name.
    pub hostname: String,
    /// The slice's ssh public keys (`authorized_keys` lines).
    pub ssh_authorized_keys: Vec<String>,
    /// cloud-init's default (true) locks root and puts the keys on a default user; slivers
    /// log in as root, as on PlanetLab.
    pub disable_root: bool,
    /// Seed for the guest's random number generator (cloud-init's `random_seed`, fresh at
    /// every start): the guest has no hardware source, and without it `getrandom(2)` blocks
    /// for tens of seconds after boot (and with it, dropbear's first connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_seed: Option<RandomSeed>,
}

/// cloud-init's `random_seed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomSeed {
    /// `b64`.
    pub encoding: String,
    /// The seed, base64.
    pub data: String,
}

impl RandomSeed {
    /// A seed of `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        use base64::Engine;
        Self {
            encoding: "b64".into(),
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// The seed's bytes; `None` for another encoding or bad base64.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        (self.encoding == "b64" || self.encoding == "base64")
            .then(|| {
                base64::engine::general_purpose::STANDARD
                    .decode(&self.data)
                    .ok()
            })
            .flatten()
    }
}

/// `network-config`, version 2 (netplan-style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Always 2.
    pub version: u8,
    /// Interfaces by name.
    pub ethernets: BTreeMap<String, Ethernet>,
}

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ethernet {
    /// Which NIC.
    #[serde(rename = "match")]
    pub match_: Match,
    /// Name to give it.
    #[serde(rename = "set-name")]
    pub set_name: String,
    /// Addresses with prefix, e.g. `10.0.3.2/24`.
    pub addresses: Vec<String>,
    /// Routes (`to: default` via the node's side of the link).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Name servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Nameservers>,
}

/// Interface match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// The NIC's MAC, `aa:bb:cc:dd:ee:ff`.
    pub macaddress: String,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `default` or a CIDR.
    pub to: String,
    /// Gateway.
    pub via: String,
}

/// Name servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nameservers {
    /// Addresses.
    pub addresses: Vec<String>,
}

/// The three files of a config disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `meta-data`.
    pub meta: MetaData,
    /// `user-data`.
    pub user: UserData,
    /// `network-config`, if the sliver has a NIC.
    pub network: Option<NetworkConfig>,
}

impl Config {
    /// The files, as (name, content).
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut files = vec![
            ("meta-data", json(&self.meta)),
            ("user-data", format!("{CLOUD_CONFIG}\n{}", json(&self.user))),
        ];
        if let Some(n) = &self.network {
            files.push(("network-config", json(n)));
        }
        files
    }

    /// Read the files back (`network-config` may be absent).
    ///
    /// # Errors
    /// A file that is not what [`Config::files`] writes, naming it.
    pub fn parse(
        meta: &str,
        user: &str,
        network: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let err = |file| move |e: serde_json::Error| (file, e.to_string());
        let user = user
            .strip_prefix(CLOUD_CONFIG)
            .ok_or(("user-data", format!("does not start with {CLOUD_CONFIG}")))?;
        Ok(Config {
            meta: serde_json::from_str(meta).map_err(err("meta-data"))?,
            user: serde_json::from_str(user.trim_start()).map_err(err("user-data"))?,
            network: network
                .map(|n| serde_json::from_str(n).map_err(err("network-config")))
                .transpose()?,
        })
    }
}

/// `v` as pretty JSON and a newline.
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let eth = Ethernet {
            match_: Match {
                macaddress: "02:5c:00:00:00:01".into(),
            },
            set_name: "eth0".into(),
            addresses: vec!["10.0.3.2/24".into()],
            routes: vec![Route {
                to: "default".into(),
                via: "10.0.3.1".into(),
            }],
            nameservers: None,
        };
        Config {
            meta: MetaData {
                instance_id: "s1-1795834800".into(),
                local_hostname: "s1".into(),
            },
            user: UserData {
                hostname: "s1".into(),
                ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI k".into()],
                disable_root: false,
                random_seed: Some(RandomSeed::new(&[1, 2, 3, 250])),
            },
            network: Some(NetworkConfig {
                version: 2,
                ethernets: BTreeMap::from([("eth0".to_string(), eth)]),
            }),
        }
    }

    #[test]
    fn files_round_trip_with_cloud_inits_keys() {
        let c = config();
        let files = c.files();
        let get = |n: &str| files.iter().find(|f| f.0 == n).map(|f| f.1.as_str());
        let user = get("user-data").expect("user-data");
        assert!(user.starts_with("#cloud-config\n"), "{user}");
        // The keys cloud-init's schema uses, spelled as it spells them.
        let meta = get("meta-data").expect("meta-data");
        assert!(meta.contains("\"instance-id\"") && meta.contains("\"local-hostname\""));
        assert!(
            user.contains("\"ssh_authorized_keys\"") && user.contains("\"disable_root\": false")
        );
        let net = get("network-config").expect("network-config");
        for key in [
            "\"version\": 2",
            "\"ethernets\"",
            "\"set-name\"",
            "\"macaddress\"",
            "\"via\"",
        ] {
            assert!(net.contains(key), "{key} in {net}");
        }
        let back = Config::parse(get("meta-data").expect("m"), user, get("network-config"))
            .expect("parse");
        assert_eq!(back, c);
        assert_eq!(
            back.user.random_seed.and_then(|s| s.bytes()),
            Some(vec![1, 2, 3, 250])
        );
        let e = Config::parse("{}", "{}", None).expect_err("no #cloud-config");
        assert_eq!(e.0, "user-data");
    }
}
