//! HTTPS for the router: a local certificate authority created once in the data directory
//! (`ca.pem`, and `ca-key.pem` readable by its owner only) that issues leaf certificates on
//! demand, by SNI, for the names berth serves (`*.localhost` and the configured base domain).
//! `berth ca export` prints `ca.pem` so curl and browsers can trust it. Certificates a user
//! supplies for custom domains (PEM chain and key) are served for their names instead.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
}

/// A certificate chain and its key, read from PEM files, served for `domains` (exact names, or
/// `*.example.com` for one label under it).
pub fn load_certificate(domains: &[String], cert: &Path, key: &Path) -> Result<(Vec<String>, Arc<CertifiedKey>), TlsError> {
    let pem_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Pem { path: path.display().to_string(), message: e.to_string() };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).map_err(|e| pem_err(cert, &e))?.collect::<Result<_, _>>().map_err(|e| pem_err(cert, &e))?;
    if chain.is_empty() {
        return Err(pem_err(cert, &"no certificate in the file"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| pem_err(key, &format!("the key does not belong to the certificate ({e})")))?;
    if domains.is_empty() {
        return Err(pem_err(cert, &"name the domains it serves"));
    }
    Ok((domains.iter().map(|d| d.trim_end_matches('.').to_ascii_lowercase()).collect(), Arc::new(certified)))
}

/// The CA's parameters, rebuilt identically on every start so leaves chain to the stored cert.
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "berth local CA");
    dn.push(DnType::OrganizationName, "berth");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = time::macros::datetime!(2024-01-01 0:00 UTC);
    p.not_after = time::macros::datetime!(2044-01-01 0:00 UTC);
    Ok(p)
}

pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

fn write_private(path: &Path, content: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io_err = |e| TlsError::Io { context: format!("writing {}", path.display()), source: e };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err)?;
    f.write_all(content.as_bytes()).map_err(io_err)
}

impl LocalCa {
    /// Loads the CA from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, TlsError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| TlsError::Io { context: format!("reading {}", p.display()), source: e });
        if cert_path.exists() && key_path.exists() {
            let key = KeyPair::from_pem(&read(&key_path)?)?;
            return Ok(LocalCa { issuer: Issuer::new(ca_params()?, key), cert_pem: read(&cert_path)? });
        }
        std::fs::create_dir_all(dir).map_err(|e| TlsError::Io { context: format!("creating {}", dir.display()), source: e })?;
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&key_path, &key.serialize_pem())?;
        let cert_pem = cert.pem();
        std::fs::write(&cert_path, &cert_pem)
            .map_err(|e| TlsError::Io { context: format!("writing {}", cert_path.display()), source: e })?;
        Ok(LocalCa { issuer: Issuer::new(ca_params()?, key), cert_pem })
    }

    /// The CA certificate, PEM, for clients to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf certificate for `name`, valid for a year.
    pub fn issue(&self, name: &str) -> Result<CertifiedKey, TlsError> {
        let mut p = CertificateParams::new(vec![name.to_owned()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(365);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?;
        Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
    }
}

/// Serves certificates by SNI: issued on first use for names under the allowed suffixes, then
/// cached. Other names get no certificate, so the handshake fails.
pub struct OnDemandCerts {
    ca: LocalCa,
    suffixes: Vec<String>,
    cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// User-supplied certificates by name (`*.example.com` for wildcards).
    supplied: HashMap<String, Arc<CertifiedKey>>,
}

impl std::fmt::Debug for OnDemandCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemandCerts").field("suffixes", &self.suffixes).finish()
    }
}

impl OnDemandCerts {
    /// `suffixes` such as `.localhost` or `.apps.example.com`.
    pub fn new(ca: LocalCa, suffixes: Vec<String>) -> OnDemandCerts {
        OnDemandCerts { ca, suffixes, cache: Mutex::new(HashMap::new()), supplied: HashMap::new() }
    }

    /// Adds certificates from [`load_certificate`]; they win over issued ones for their names.
    pub fn with_supplied(mut self, certs: Vec<(Vec<String>, Arc<CertifiedKey>)>) -> OnDemandCerts {
        for (names, cert) in certs {
            for n in names {
                self.supplied.insert(n, cert.clone());
            }
        }
        self
    }

    fn supplied_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(c) = self.supplied.get(name) {
            return Some(c.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.supplied.get(&format!("*.{parent}")).cloned()
    }

    fn allowed(&self, name: &str) -> bool {
        self.suffixes.iter().any(|s| name.len() > s.len() && name.ends_with(s.as_str()))
    }
}

impl ResolvesServerCert for OnDemandCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        if let Some(c) = self.supplied_for(&name) {
            return Some(c);
        }
        if !self.allowed(&name) {
            tracing::debug!(sni = %name, "no certificate for this name");
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&name) {
            return Some(c.clone());
        }
        match self.ca.issue(&name) {
            Ok(c) => {
                let c = Arc::new(c);
                cache.insert(name, c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(sni = %name, error = %e, "issuing a certificate failed");
                None
            }
        }
    }
}

/// A rustls server configuration offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(certs: Arc<OnDemandCerts>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
