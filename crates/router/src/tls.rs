//! HTTPS for the router: a local certificate authority created once in the data directory
//! (`ca.pem`, and `ca-key.pem` readable by its owner only) that issues leaf certificates on
//! demand, by SNI, for the names berth serves (`*.localhost` and the configured base domain).
//! The CA is name-constrained to exactly those domains, so a client that trusts it trusts it for
//! nothing else even if its key leaked; leaves live 30 days and are renewed 10 days before they
//! expire. `berth ca export` prints `ca.pem` so curl and browsers can trust it. Certificates a
//! user supplies for custom domains (PEM chain and key) are served for their names instead.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, NameConstraints,
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

/// How long a leaf certificate lives, and how long before its end it is renewed.
const LEAF_LIFETIME: time::Duration = time::Duration::days(30);
const LEAF_RENEW_BEFORE: time::Duration = time::Duration::days(10);
/// Issued certificates kept at most.
const MAX_CACHED_CERTS: usize = 10_000;
/// How long the CA lives.
const CA_LIFETIME: time::Duration = time::Duration::days(3650);

/// The CA's parameters for the domains it may certify (`localhost`, `apps.example.com`): its
/// name, and name constraints that permit those domains and the names below them only.
fn ca_params(domains: &[String]) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "berth local CA");
    dn.push(DnType::OrganizationName, "berth");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: domains.iter().map(|d| GeneralSubtree::DnsName(d.clone())).collect(),
        excluded_subtrees: Vec::new(),
    });
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
    /// Loads the CA from `dir`, creating it on first use, for `domains` (`localhost`, the base
    /// domain). A CA made for other domains, or before CAs were name-constrained, is replaced by
    /// a new one (clients must trust the new `ca.pem`; a warning says so).
    pub fn load_or_create(dir: &Path, domains: &[String]) -> Result<LocalCa, TlsError> {
        let domains: Vec<String> = domains.iter().map(|d| d.trim_matches('.').to_ascii_lowercase()).collect();
        let (cert_path, key_path, names_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"), dir.join("ca-domains"));
        let io_err = |p: &Path| {
            let context = format!("reading {}", p.display());
            move |source| TlsError::Io { context, source }
        };
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err(p));
        if cert_path.exists() && key_path.exists() {
            let covered = std::fs::read_to_string(&names_path).unwrap_or_default();
            let covered: Vec<&str> = covered.lines().collect();
            if domains.iter().all(|d| covered.contains(&d.as_str())) {
                let key = KeyPair::from_pem(&read(&key_path)?)?;
                return Ok(LocalCa {
                    issuer: Issuer::new(ca_params(&covered.iter().map(|c| c.to_string()).collect::<Vec<_>>())?, key),
                    cert_pem: read(&cert_path)?,
                });
            }
            tracing::warn!(
                domains = %domains.join(","),
                "the local CA was not made for these domains (or predates name constraints); making a new one: \
                 clients must trust the new certificate (`berth ca export`)"
            );
            for p in [&cert_path, &key_path, &names_path] {
                let _ = std::fs::remove_file(p);
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| TlsError::Io { context: format!("creating {}", dir.display()), source: e })?;
        let key = KeyPair::generate()?;
        let mut params = ca_params(&domains)?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        write_private(&key_path, &key.serialize_pem())?;
        let cert_pem = cert.pem();
        let write = |p: &Path, content: &str| {
            std::fs::write(p, content).map_err(|e| TlsError::Io { context: format!("writing {}", p.display()), source: e })
        };
        write(&cert_path, &cert_pem)?;
        write(&names_path, &domains.iter().map(|d| format!("{d}\n")).collect::<String>())?;
        Ok(LocalCa { issuer: Issuer::new(ca_params(&domains)?, key), cert_pem })
    }

    /// The CA certificate, PEM, for clients to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf certificate for `name`, valid for [`LEAF_LIFETIME`], and when it ends.
    pub fn issue(&self, name: &str) -> Result<(CertifiedKey, time::OffsetDateTime), TlsError> {
        let mut p = CertificateParams::new(vec![name.to_owned()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + LEAF_LIFETIME;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?;
        Ok((CertifiedKey::new(vec![cert.der().clone()], signing), p.not_after))
    }
}

/// Serves certificates by SNI: issued on first use for names under the allowed suffixes, then
/// cached. Other names get no certificate, so the handshake fails.
pub struct OnDemandCerts {
    ca: LocalCa,
    suffixes: Vec<String>,
    /// Issued certificates by name, with when they end.
    cache: Mutex<HashMap<String, (Arc<CertifiedKey>, time::OffsetDateTime)>>,
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
        if let Some((c, ends)) = cache.get(&name) {
            if *ends - time::OffsetDateTime::now_utc() > LEAF_RENEW_BEFORE {
                return Some(c.clone());
            }
        }
        match self.ca.issue(&name) {
            Ok((c, ends)) => {
                let c = Arc::new(c);
                if cache.len() >= MAX_CACHED_CERTS {
                    // Names under the served domains are unbounded; the cache is not.
                    let now = time::OffsetDateTime::now_utc();
                    cache.retain(|_, (_, ends)| *ends - now > LEAF_RENEW_BEFORE);
                    if cache.len() >= MAX_CACHED_CERTS {
                        cache.clear();
                    }
                }
                cache.insert(name, (c.clone(), ends));
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
