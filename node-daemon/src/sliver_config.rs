//! What a sliver's cloud-init config disk says (the format is `guest_init::nocloud`'s):
//! host name, the slice's keys for root, the network, a fresh random seed.

use std::collections::BTreeMap;

use guest_init::nocloud::{
    Config, Ethernet, Match, MetaData, NetworkConfig, RandomSeed, Route, UserData,
};
use sha2::{Digest, Sha256};

use crate::spec::SliverSpec;
use crate::supervisor::sliver_mac;

/// 32 bytes from the kernel's CSPRNG.
fn seed() -> Vec<u8> {
    let mut buf = vec![0u8; 32];
    // SAFETY: getrandom(2) writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    buf.truncate(usize::try_from(n).unwrap_or(0));
    buf
}

/// The config disk of sliver `name` with `spec`. The instance id changes with the spec, so
/// a re-created sliver is a new instance to cloud-init.
pub fn config(name: &str, spec: &SliverSpec) -> Config {
    let digest = Sha256::digest(serde_json::to_vec(spec).unwrap_or_default());
    let instance = digest
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let network = spec.net.as_ref().map(|net| {
        let eth = Ethernet {
            match_: Match {
                macaddress: sliver_mac(name, net),
            },
            set_name: "eth0".into(),
            addresses: vec![net.ipv4.clone()],
            routes: vec![Route {
                to: "default".into(),
                via: net.host_ipv4.clone(),
            }],
            nameservers: None,
        };
        NetworkConfig {
            version: 2,
            ethernets: BTreeMap::from([("eth0".to_string(), eth)]),
        }
    });
    Config {
        meta: MetaData {
            instance_id: format!("{name}-{instance}"),
            local_hostname: name.to_string(),
        },
        user: UserData {
            hostname: name.to_string(),
            ssh_authorized_keys: spec.keys.clone().unwrap_or_default(),
            disable_root: false,
            random_seed: Some(RandomSeed::new(&seed())),
        },
        network,
    }
}
