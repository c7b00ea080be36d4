//! IP address ranges in CIDR notation (`10.0.0.0/8`, `fd00::/8`), for the
//! IP-literal entries of `proxy_hosts`: a Service's ClusterIP or a pod IP
//! a client puts in `Host` names this proxy when it lies in a configured
//! range.
//!
//! A bare address (`10.0.0.7`, `::1`, `[fd00::1]`) is the range of that one
//! address. Host bits set below the prefix (`10.0.0.1/8`) are refused rather
//! than silently masked: the operator most likely mistyped the range.

use std::net::IpAddr;

/// One range: a network address and a prefix length (at most 32 for IPv4,
/// 128 for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    network: IpAddr,
    prefix: u8,
}

/// Why an entry is not a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("not an IP address")]
    Address,
    #[error("prefix length is not a number from 0 to {max}")]
    Prefix { max: u8 },
    #[error("host bits are set below the /{prefix} prefix (the network is {network}/{prefix})")]
    HostBits { network: IpAddr, prefix: u8 },
}

impl IpNet {
    /// Parse `ADDR`, `[V6]`, `ADDR/LEN` or `[V6]/LEN`.
    pub fn parse(s: &str) -> Result<IpNet, CidrError> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let network: IpAddr = addr.parse().map_err(|_| CidrError::Address)?;
        let max = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max && !l.starts_with('+'))
                .ok_or(CidrError::Prefix { max })?,
        };
        let masked = mask(network, prefix);
        if masked != network {
            return Err(CidrError::HostBits {
                network: masked,
                prefix,
            });
        }
        Ok(IpNet { network, prefix })
    }

    /// Whether `ip` lies in this range. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.7`) is compared as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.network
            }
            _ => false,
        }
    }
}

/// `ip` with every bit below the first `prefix` bits cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}
