//! Where a client is: `request.location` from the client's full address, before it is
//! anonymised.
//!
//! The country comes from an IP-to-country table embedded in the binary (the `iptocc` crate:
//! the five Regional Internet Registries' delegation statistics), so a fresh deployment with
//! nothing configured records it, and no lookup leaves the machine. An operator who has a
//! MaxMind-format city database (GeoLite2-City, DB-IP City Lite, …) adds region and city
//! with [`Locator::with_city_database`]; its country then wins, since it says where an
//! address is used rather than where it was registered.
//!
//! Private, loopback, link-local and other addresses that are not on the public internet
//! have no location: the table would answer nothing true for them.
//!
//! ```
//! use auditgate_geo::Locator;
//!
//! let locator = Locator::embedded();
//! let found = locator.locate("8.8.8.8".parse()?).expect("a public address");
//! assert_eq!(found.country, "US");
//! assert_eq!(locator.locate("10.1.2.3".parse()?), None);
//! assert_eq!(locator.locate("::1".parse()?), None);
//! # Ok::<(), std::net::AddrParseError>(())
//! ```

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use auditgate_rules::Location;

pub mod mmdb_writer;

/// Finds the location of client addresses. Cheap to share (`Arc`); a lookup allocates only
/// for a city database's region and city.
#[derive(Debug, Default)]
pub struct Locator {
    city: Option<maxminddb::Reader<Vec<u8>>>,
}

/// A city database that could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: not a MaxMind-format database ({source}); give a .mmdb file such as GeoLite2-City.mmdb"
)]
pub struct DatabaseError {
    path: PathBuf,
    #[source]
    source: maxminddb::MaxMindDbError,
}

impl Locator {
    /// Countries from the embedded table only.
    pub fn embedded() -> Locator {
        Locator::default()
    }

    /// Countries, regions and cities from the MaxMind-format database at `path` (read into
    /// memory once), and the embedded table's country where the database has none.
    pub fn with_city_database(path: &Path) -> Result<Locator, DatabaseError> {
        let city = maxminddb::Reader::open_readfile(path).map_err(|source| DatabaseError {
            path: path.to_owned(),
            source,
        })?;
        Ok(Locator { city: Some(city) })
    }

    /// Where `ip` is; `None` for addresses not on the public internet and for those neither
    /// source knows.
    pub fn locate(&self, ip: IpAddr) -> Option<Location> {
        let ip = canonical(ip);
        if !is_public(ip) {
            return None;
        }
        let from_database = self.city.as_ref().and_then(|db| city_of(db, ip));
        match from_database {
            Some(found) if !found.country.is_empty() => Some(found),
            found => {
                let country = iptocc::country_code(ip)?;
                Some(Location {
                    country: Cow::Borrowed(country),
                    region: found.as_ref().and_then(|f| f.region.clone()),
                    city: found.and_then(|f| f.city),
                })
            }
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:8.8.8.8`, as dual-stack sockets report IPv4
/// peers) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether the address can be somewhere: not private, loopback, link-local, shared (CGNAT),
/// documentation, benchmarking, multicast, broadcast or unspecified.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, shared address space
        || (a == 198 && (b == 18 || b == 19)) // 198.18.0.0/15, benchmarking
        || (a == 192 && b == 0 && c == 0)) // 192.0.0.0/24, protocol assignments
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (first & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)) // 2001:db8::/32, documentation
}

/// The database's answer for `ip`; `None` when it has none (or cannot decode its entry).
fn city_of(db: &maxminddb::Reader<Vec<u8>>, ip: IpAddr) -> Option<Location> {
    let found = db.lookup(ip).ok()?;
    let city: maxminddb::geoip2::City<'_> = found.decode().ok()??;
    let country = city.country.iso_code.unwrap_or_default();
    Some(Location {
        country: Cow::Owned(country.to_owned()),
        region: (city.subdivisions.first())
            .and_then(|s| s.names.english)
            .map(str::to_owned),
        city: city.city.names.english.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmdb_writer::{Entry, write_city_database};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn public_addresses_have_a_country_and_others_none() {
        let locator = Locator::embedded();
        assert_eq!(locator.locate(ip("8.8.8.8")).unwrap().country, "US");
        assert_eq!(
            locator.locate(ip("2001:4860:4860::8888")).unwrap().country,
            "US"
        );
        assert_eq!(
            locator.locate(ip("::ffff:8.8.8.8")).unwrap().country,
            "US",
            "an IPv4 peer of a dual-stack socket"
        );
        for private in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "203.0.113.7",
            "::1",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "::",
        ] {
            assert_eq!(locator.locate(ip(private)), None, "{private}");
        }
    }

    #[test]
    fn a_city_database_adds_region_and_city() {
        let dir = std::env::temp_dir().join(format!("auditgate-geo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("city.mmdb");
        write_city_database(
            &path,
            &[Entry {
                network: "8.8.8.0/24".parse().unwrap(),
                country: "US",
                region: Some("California"),
                city: Some("Mountain View"),
            }],
        )
        .unwrap();
        let locator = Locator::with_city_database(&path).unwrap();
        assert_eq!(
            locator.locate(ip("8.8.8.8")),
            Some(Location {
                country: "US".into(),
                region: Some("California".into()),
                city: Some("Mountain View".into()),
            })
        );
        // Outside the database: the embedded country alone.
        let other = locator.locate(ip("1.1.1.1")).unwrap();
        assert_eq!((other.region, other.city), (None, None));
        assert!(!other.country.is_empty());

        std::fs::write(&path, b"not a database").unwrap();
        let error = Locator::with_city_database(&path).unwrap_err().to_string();
        assert!(error.contains("not a MaxMind-format database"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
