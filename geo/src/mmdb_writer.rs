//! Writes a small MaxMind-format (`.mmdb`) city database: for tests and demos, which need a
//! database whose answers they know, and cannot download one.
//!
//! The [MaxMind DB format](https://maxmind.github.io/MaxMind-DB/) is a binary search tree over
//! the address bits (here IPv4 only, 32-bit records), 16 zero bytes, a data section of typed
//! values, and a metadata map after the `\xAB\xCD\xEFMaxMind.com` marker. Each entry's network
//! becomes a path of tree nodes ending in a pointer to its record: `{"country": {"iso_code"},
//! "subdivisions": [{"names": {"en"}}], "city": {"names": {"en"}}}`, the GeoIP2-City layout.
//!
//! ```
//! use auditgate_geo::{Locator, mmdb_writer::{Entry, write_city_database}};
//!
//! let path = std::env::temp_dir().join(format!("doc-{}.mmdb", std::process::id()));
//! write_city_database(&path, &[Entry {
//!     network: "81.2.69.0/24".parse()?,
//!     country: "GB",
//!     region: Some("England"),
//!     city: Some("London"),
//! }])?;
//! let found = Locator::with_city_database(&path)?.locate("81.2.69.160".parse()?).unwrap();
//! assert_eq!(found.city.as_deref(), Some("London"));
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

pub use ipnet::Ipv4Net;

/// One network and where it is.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The addresses it covers.
    pub network: Ipv4Net,
    /// ISO 3166-1 alpha-2.
    pub country: &'a str,
    /// The largest subdivision, in English.
    pub region: Option<&'a str>,
    /// The city, in English.
    pub city: Option<&'a str>,
}

/// A tree record: another node, an entry's data, or nothing.
#[derive(Debug, Clone, Copy)]
enum Record {
    Node(u32),
    Data(u32),
    Empty,
}

/// Writes the entries (later ones win where networks overlap) as a database at `path`.
pub fn write_city_database(path: &Path, entries: &[Entry<'_>]) -> std::io::Result<()> {
    let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty; 2]];
    let mut data = Vec::new();
    for entry in entries {
        let offset = u32::try_from(data.len()).map_err(std::io::Error::other)?;
        encode_entry(entry, &mut data);
        let bits = u32::from(entry.network.network());
        let depth = u32::from(entry.network.prefix_len());
        let mut node = 0usize;
        for level in 0..depth {
            let bit = ((bits >> (31 - level)) & 1) as usize;
            if level + 1 == depth {
                nodes[node][bit] = Record::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Record::Node(next) => next as usize,
                _ => {
                    nodes.push([Record::Empty; 2]);
                    let next = nodes.len() - 1;
                    nodes[node][bit] = Record::Node(next as u32);
                    next
                }
            };
        }
    }
    let node_count = u32::try_from(nodes.len()).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(nodes.len() * 8 + 16 + data.len() + 256);
    for node in &nodes {
        for record in node {
            let value = match *record {
                Record::Node(n) => n,
                Record::Data(offset) => node_count + 16 + offset,
                Record::Empty => node_count,
            };
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    map_header(&mut out, 9);
    string(&mut out, "binary_format_major_version");
    uint(&mut out, 5, 2);
    string(&mut out, "binary_format_minor_version");
    uint(&mut out, 5, 0);
    string(&mut out, "build_epoch");
    extended_uint(&mut out, 9, 0);
    string(&mut out, "database_type");
    string(&mut out, "GeoIP2-City");
    string(&mut out, "description");
    map_header(&mut out, 1);
    string(&mut out, "en");
    string(&mut out, "auditgate test database");
    string(&mut out, "ip_version");
    uint(&mut out, 5, 4);
    string(&mut out, "languages");
    extended_header(&mut out, 11, 1);
    string(&mut out, "en");
    string(&mut out, "node_count");
    uint(&mut out, 6, u64::from(node_count));
    string(&mut out, "record_size");
    uint(&mut out, 5, 32);
    std::fs::write(path, out)
}

fn encode_entry(entry: &Entry<'_>, out: &mut Vec<u8>) {
    let members = 1 + usize::from(entry.region.is_some()) + usize::from(entry.city.is_some());
    map_header(out, members);
    string(out, "country");
    map_header(out, 1);
    string(out, "iso_code");
    string(out, entry.country);
    if let Some(region) = entry.region {
        string(out, "subdivisions");
        extended_header(out, 11, 1);
        names(out, region);
    }
    if let Some(city) = entry.city {
        string(out, "city");
        names(out, city);
    }
}

/// `{"names": {"en": NAME}}`
fn names(out: &mut Vec<u8>, name: &str) {
    map_header(out, 1);
    string(out, "names");
    map_header(out, 1);
    string(out, "en");
    string(out, name);
}

/// A control byte (type in the top three bits) and the size, in the spec's variable form.
fn header(out: &mut Vec<u8>, kind: u8, size: usize, extended: Option<u8>) {
    let (first, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, Vec::new()),
        29..=284 => (29, vec![(size - 29) as u8]),
        _ => {
            let rest = (size - 285) as u16;
            (30, rest.to_be_bytes().to_vec())
        }
    };
    out.push((kind << 5) | first);
    out.extend(extended);
    out.extend(extra);
}

fn extended_header(out: &mut Vec<u8>, kind: u8, size: usize) {
    header(out, 0, size, Some(kind - 7));
}

fn map_header(out: &mut Vec<u8>, members: usize) {
    header(out, 7, members, None);
}

fn string(out: &mut Vec<u8>, text: &str) {
    header(out, 2, text.len(), None);
    out.extend_from_slice(text.as_bytes());
}

/// An unsigned integer of type 5 (uint16) or 6 (uint32), big-endian without leading zeros.
fn uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = significant(value);
    header(out, kind, bytes.len(), None);
    out.extend_from_slice(&bytes);
}

/// An extended unsigned integer (type 9, uint64).
fn extended_uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = significant(value);
    extended_header(out, kind, bytes.len());
    out.extend_from_slice(&bytes);
}

fn significant(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}
