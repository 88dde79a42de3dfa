//! ClusterIP and NodePort allocation. Each allocated value is a key in the store
//! (`/registry/ranges/serviceips/<ip>`, `/registry/ranges/servicenodeports/<port>`) created in
//! the same transaction as its Service on the condition that it does not exist yet, so two
//! concurrent creates can never get the same value: the loser's transaction fails and it picks
//! again.

use std::net::Ipv4Addr;

use super::hooks::Exists;
use super::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocConfig {
    pub service_network: Ipv4Addr,
    pub service_prefix: u8,
    pub node_ports: (i32, i32),
}

impl Default for AllocConfig {
    fn default() -> Self {
        AllocConfig { service_network: Ipv4Addr::new(10, 96, 0, 0), service_prefix: 12, node_ports: (30000, 32767) }
    }
}

impl AllocConfig {
    /// Parses `--service-cidr` (`10.96.0.0/12`).
    pub fn with_service_cidr(cidr: &str) -> Result<Self, String> {
        let (ip, len) = crate::api::validation::parse_cidr(cidr)
            .ok_or_else(|| format!("--service-cidr {cidr:?} is not an IPv4 CIDR such as 10.96.0.0/12"))?;
        if !(8..=28).contains(&len) {
            return Err(format!("--service-cidr {cidr:?}: the prefix length must be between 8 and 28"));
        }
        let mask = u32::MAX << (32 - len);
        Ok(AllocConfig {
            service_network: Ipv4Addr::from(u32::from(ip) & mask),
            service_prefix: len,
            ..Default::default()
        })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.service_prefix)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.service_prefix);
        u32::from(ip) & mask == u32::from(self.service_network)
    }
}

pub fn ip_key(ip: &str) -> Vec<u8> {
    format!("/registry/ranges/serviceips/{ip}").into_bytes()
}

pub fn port_key(port: i32) -> Vec<u8> {
    format!("/registry/ranges/servicenodeports/{port}").into_bytes()
}

/// Tries random addresses first (cheap while the range is mostly free), then walks the range.
pub fn pick_ip(cfg: &AllocConfig, exists: Exists) -> Result<Ipv4Addr, ApiError> {
    use rand::Rng;
    let base = u32::from(cfg.service_network);
    let usable = cfg.size() - 2; // not the network or broadcast address
    let mut rng = rand::thread_rng();
    for _ in 0..32 {
        let ip = Ipv4Addr::from(base + 1 + rng.gen_range(0..usable));
        if !exists(&ip_key(&ip.to_string()))? {
            return Ok(ip);
        }
    }
    let start = rng.gen_range(0..usable);
    for i in 0..usable {
        let ip = Ipv4Addr::from(base + 1 + (start + i) % usable);
        if !exists(&ip_key(&ip.to_string()))? {
            return Ok(ip);
        }
    }
    Err(ApiError::Unavailable(format!(
        "Internal error occurred: failed to allocate a serviceIP: range is full ({}/{})",
        cfg.service_network, cfg.service_prefix
    )))
}

pub fn check_ip(cfg: &AllocConfig, ip: &str, exists: Exists, name: &str) -> Result<(), ApiError> {
    let invalid = |why: String| {
        ApiError::Invalid(format!(
            "Service {name:?} is invalid: spec.clusterIPs: Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: {why}"
        ))
    };
    let parsed: Ipv4Addr = ip.parse().map_err(|_| invalid("not an IPv4 address".into()))?;
    if !cfg.contains(parsed) {
        return Err(invalid(format!(
            "provided IP is not in the valid range. The range of valid IPs is {}/{}",
            cfg.service_network, cfg.service_prefix
        )));
    }
    if exists(&ip_key(ip))? {
        return Err(invalid("provided IP is already allocated".into()));
    }
    Ok(())
}

pub fn pick_port(cfg: &AllocConfig, used: &[i32], exists: Exists) -> Result<i32, ApiError> {
    use rand::Rng;
    let (lo, hi) = cfg.node_ports;
    let span = hi - lo + 1;
    let start = rand::thread_rng().gen_range(0..span);
    for i in 0..span {
        let port = lo + (start + i) % span;
        if !used.contains(&port) && !exists(&port_key(port))? {
            return Ok(port);
        }
    }
    Err(ApiError::Unavailable(format!(
        "Internal error occurred: failed to allocate a nodePort: range is full ({lo}-{hi})"
    )))
}

pub fn check_port(cfg: &AllocConfig, port: i32, exists: Exists, name: &str) -> Result<(), ApiError> {
    let (lo, hi) = cfg.node_ports;
    if !(lo..=hi).contains(&port) {
        return Err(ApiError::Invalid(format!(
            "Service {name:?} is invalid: spec.ports[0].nodePort: Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
        )));
    }
    if exists(&port_key(port))? {
        return Err(ApiError::Invalid(format!(
            "Service {name:?} is invalid: spec.ports[0].nodePort: Invalid value: {port}: provided port is already allocated"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_cidrs_parse_and_bound_allocations() {
        let cfg = AllocConfig::with_service_cidr("10.96.0.0/12").expect("valid");
        assert!(cfg.contains("10.100.1.1".parse().expect("ip")));
        assert!(!cfg.contains("10.112.0.1".parse().expect("ip")));
        assert!(AllocConfig::with_service_cidr("10.96.0.0").is_err());
        assert!(AllocConfig::with_service_cidr("10.96.0.0/30").is_err());
    }

    #[test]
    fn a_full_small_range_says_so() {
        let cfg = AllocConfig::with_service_cidr("10.0.0.0/28").expect("valid");
        let taken = std::cell::RefCell::new(std::collections::HashSet::new());
        let exists = |k: &[u8]| Ok(taken.borrow().contains(k));
        for _ in 0..14 {
            let ip = pick_ip(&cfg, &exists).expect("room left");
            assert!(taken.borrow_mut().insert(ip_key(&ip.to_string())), "{ip} given twice");
        }
        assert!(matches!(pick_ip(&cfg, &exists), Err(ApiError::Unavailable(_))));
    }
}
