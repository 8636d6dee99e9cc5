//! The CA certificates an `https` upstream must chain to (`upstream_ca_file`), read once at
//! start-up so that a bad file stops the proxy before it listens.

use std::path::Path;
use std::sync::Arc;

use pingora::utils::tls::{WrappedX509, parse_x509};

use crate::error::ProxyError;

/// Reads every certificate of a PEM file; an unreadable file, or one with no certificate or a
/// malformed one, is an error that names the file.
pub(crate) fn load(path: &Path) -> Result<Arc<[WrappedX509]>, ProxyError> {
    let bad = |message: String| ProxyError::UpstreamCa {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut certs = Vec::new();
    for (index, cert) in rustls_pemfile::certs(&mut text.as_slice()).enumerate() {
        let der = cert.map_err(|e| bad(format!("certificate {} is not PEM: {e}", index + 1)))?;
        // Checked here: pingora's own parse of the DER panics on a malformed certificate.
        if x509_parser::parse_x509_certificate(&der).is_err() {
            return Err(bad(format!(
                "certificate {} is not an X.509 certificate",
                index + 1
            )));
        }
        certs.push(WrappedX509::new(der.to_vec(), parse_x509));
    }
    if certs.is_empty() {
        return Err(bad(
            "no certificate in it (expected PEM blocks: -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(certs.into())
}
