//! Host-local IP address management for the node's pod subnet: which address a new pod gets
//! ([`allocate`], a pure function) and the on-disk record of who holds which address
//! ([`IpamStore`]: one file per address, created exclusively, holding the owner's sandbox id).
//! The first address of the subnet is the bridge's (the pods' gateway).

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// An IPv4 subnet, e.g. `10.244.1.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Ipv4Net {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid subnet {input:?}: {reason}")]
    InvalidSubnet { input: String, reason: &'static str },
    #[error("no free address left in {subnet}")]
    Exhausted { subnet: Ipv4Net },
    #[error("ip allocation record {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl Ipv4Net {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The first usable address: the bridge's address and the pods' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, IpamError> {
        let bad = |reason| IpamError::InvalidSubnet { input: s.to_string(), reason };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("prefix is not a number"))?;
        // A pod subnet needs a gateway, at least one pod address and a broadcast address.
        if !(8..=30).contains(&prefix) {
            return Err(bad("prefix must be between 8 and 30"));
        }
        let net = Ipv4Net { network: addr, prefix };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(bad("host bits are set"));
        }
        Ok(net)
    }
}

/// The address a new pod gets: the first free one after `last` (the previous allocation), wrapping
/// around, skipping the network address, the gateway and the broadcast address. Round-robin like
/// CNI's host-local plugin, so a just-freed address is not reused at once.
pub fn allocate(subnet: Ipv4Net, used: &BTreeSet<Ipv4Addr>, last: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.gateway()) + 1;
    let end = u32::from(subnet.broadcast()); // exclusive
    if first >= end {
        return None;
    }
    let start = match last.map(u32::from) {
        Some(l) if l >= first && l < end => l + 1,
        _ => first,
    };
    let count = end - first;
    (0..count)
        .map(|i| {
            let off = (start - first + i) % count;
            Ipv4Addr::from(first + off)
        })
        .find(|ip| !used.contains(ip))
}

/// The on-disk allocations of one subnet: `DIR/<ip>` holds the owner's id; `DIR/last` the most
/// recent allocation. Creation is exclusive, so two allocators never hand out one address.
#[derive(Clone, Debug)]
pub struct IpamStore {
    dir: PathBuf,
    subnet: Ipv4Net,
}

impl IpamStore {
    pub fn new(dir: &Path, subnet: Ipv4Net) -> IpamStore {
        IpamStore { dir: dir.join(subnet.to_string().replace('/', "_")), subnet }
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> IpamError {
        let path = path.to_path_buf();
        move |source| IpamError::Io { path, source }
    }

    /// All current allocations: (address, owner).
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.io(&self.dir)(e)),
        };
        for entry in rd {
            let entry = entry.map_err(self.io(&self.dir))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else { continue };
            let owner = match std::fs::read_to_string(entry.path()) {
                Ok(owner) => owner,
                // Released since read_dir listed it (a concurrent release): no longer held.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(&entry.path())(e)),
            };
            out.push((ip, owner.trim().to_string()));
        }
        out.sort();
        Ok(out)
    }

    /// Allocates an address for `owner`, or returns the one it already holds.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let current = self.list()?;
        if let Some((ip, _)) = current.iter().find(|(_, o)| o == owner) {
            return Ok(*ip);
        }
        let mut used: BTreeSet<Ipv4Addr> = current.into_iter().map(|(ip, _)| ip).collect();
        let last_path = self.dir.join("last");
        let mut last = std::fs::read_to_string(&last_path).ok().and_then(|s| s.trim().parse().ok());
        loop {
            let ip = allocate(self.subnet, &used, last).ok_or(IpamError::Exhausted { subnet: self.subnet })?;
            let path = self.dir.join(ip.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes()).and_then(|_| f.sync_all()).map_err(self.io(&path))?;
                    std::fs::write(&last_path, ip.to_string()).map_err(self.io(&last_path))?;
                    return Ok(ip);
                }
                // Another allocator took it between our listing and now: try the next one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    used.insert(ip);
                    last = Some(ip);
                }
                Err(e) => return Err(self.io(&path)(e)),
            }
        }
    }

    /// Frees every address `owner` holds (normally one). Freeing nothing is not an error.
    pub fn release(&self, owner: &str) -> Result<(), IpamError> {
        for (ip, o) in self.list()? {
            if o == owner {
                let path = self.dir.join(ip.to_string());
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io(&path)(e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid subnet")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("valid ip")
    }

    #[test]
    fn subnet_parsing_rejects_what_cannot_hold_pods() {
        assert_eq!(net("10.244.1.0/24").gateway(), ip("10.244.1.1"));
        assert_eq!(net("10.244.1.0/24").broadcast(), ip("10.244.1.255"));
        for bad in ["10.244.1.0", "10.244.1.5/24", "10.244.1.0/31", "10.244.1.0/x", "nope/24"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn allocation_skips_gateway_and_broadcast_and_goes_round_robin() {
        let n = net("10.0.0.0/29"); // .1 gateway, .2-.6 pods, .7 broadcast
        let mut used = BTreeSet::new();
        assert_eq!(allocate(n, &used, None), Some(ip("10.0.0.2")));
        used.insert(ip("10.0.0.2"));
        assert_eq!(allocate(n, &used, Some(ip("10.0.0.2"))), Some(ip("10.0.0.3")));
        // After .6 it wraps to .2 (freed meanwhile) rather than handing out .7.
        used.clear();
        assert_eq!(allocate(n, &used, Some(ip("10.0.0.6"))), Some(ip("10.0.0.2")));
        // A just-freed address is not reused while others are free.
        used.extend([ip("10.0.0.2"), ip("10.0.0.4")]);
        assert_eq!(allocate(n, &used, Some(ip("10.0.0.3"))), Some(ip("10.0.0.5")));
        // Full.
        used.extend([ip("10.0.0.3"), ip("10.0.0.5"), ip("10.0.0.6")]);
        assert_eq!(allocate(n, &used, None), None);
        // A `last` outside the subnet starts from the beginning.
        assert_eq!(allocate(n, &BTreeSet::new(), Some(ip("192.168.0.1"))), Some(ip("10.0.0.2")));
    }

    #[test]
    fn store_keeps_allocations_on_disk_and_frees_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = IpamStore::new(dir.path(), net("10.0.0.0/29"));
        let a = store.allocate("pod-a").expect("allocate a");
        let b = store.allocate("pod-b").expect("allocate b");
        assert_ne!(a, b);
        assert_eq!(store.allocate("pod-a").expect("again"), a, "an owner keeps its address");
        let reopened = IpamStore::new(dir.path(), net("10.0.0.0/29"));
        assert_eq!(reopened.list().expect("list"), vec![(a, "pod-a".into()), (b, "pod-b".into())]);
        reopened.release("pod-a").expect("release");
        reopened.release("pod-a").expect("release twice is fine");
        assert_eq!(reopened.list().expect("list"), vec![(b, "pod-b".into())]);
        for i in 0..4 {
            store.allocate(&format!("p{i}")).expect("room for four more");
        }
        assert!(matches!(store.allocate("one-too-many"), Err(IpamError::Exhausted { .. })));
    }
}
