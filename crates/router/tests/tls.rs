//! HTTPS through the router with curl: certificates issued on demand by the local CA (which
//! persists across restarts), HTTP/2 by ALPN, `X-Forwarded-Proto: https`, no certificate for
//! names berth does not serve, and a user-supplied certificate for a custom domain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use berth_router::tls::{load_certificate, server_config, LocalCa, OnDemandCerts};
use berth_router::{RouteSpec, Router, RouterOptions, RoutingTable};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn backend() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let proto = req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("proto={proto}")))))
                });
                let _ =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

async fn curl(args: Vec<String>) -> Result<std::process::Output> {
    Ok(tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_certificates_on_demand() -> Result {
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(dir.path(), &["localhost".to_owned()])?;
    let pem = ca.cert_pem().to_owned();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.path().join("ca-key.pem"))?.permissions().mode() & 0o777, 0o600);
    // A restart loads the same CA: leaves it issues still chain to the exported certificate.
    drop(ca);
    let ca = LocalCa::load_or_create(dir.path(), &["localhost".to_owned()])?;
    assert_eq!(ca.cert_pem(), pem);

    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("web.localhost", "web", vec![backend().await?])]);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let config = server_config(Arc::new(OnDemandCerts::new(ca, vec![".localhost".into()])))?;
    let router = Router::with_options(table, RouterOptions { redirect_to_https_port: Some(port), hsts: true, ..RouterOptions::default() });
    let plain = TcpListener::bind("127.0.0.1:0").await?;
    let plain_port = plain.local_addr()?.port();
    tokio::spawn(router.clone().serve(plain));
    tokio::spawn(router.serve_tls(listener, config));

    let cacert = dir.path().join("ca.pem").display().to_string();
    let base = |name: &str| {
        vec![
            "-s".to_string(),
            "--cacert".into(),
            cacert.clone(),
            "--resolve".into(),
            format!("{name}:{port}:127.0.0.1"),
            "-w".into(),
            "\n%{http_code} %{http_version}".into(),
        ]
    };
    let mut args = base("web.localhost");
    args.push(format!("https://web.localhost:{port}/"));
    let out = curl(args).await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "proto=https\n200 2", "{}", String::from_utf8_lossy(&out.stderr));
    let mut args = base("web.localhost");
    args.extend(["--http1.1".to_string(), format!("https://web.localhost:{port}/")]);
    assert_eq!(String::from_utf8_lossy(&curl(args).await?.stdout), "proto=https\n200 1.1");
    // Plain HTTP is redirected to HTTPS; HTTPS answers carry HSTS.
    let out = curl(vec![
        "-s".into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code} %{redirect_url}".into(),
        "-H".into(),
        "Host: web.localhost".into(),
        format!("http://127.0.0.1:{plain_port}/a?b=1"),
    ])
    .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("308 https://web.localhost:{port}/a?b=1"));
    let mut args = base("web.localhost");
    args.extend(["-D".to_string(), "-".into(), "-o".into(), "/dev/null".into(), format!("https://web.localhost:{port}/")]);
    let headers = String::from_utf8_lossy(&curl(args).await?.stdout).to_ascii_lowercase();
    assert!(headers.contains("strict-transport-security: max-age=31536000"), "{headers}");

    // A name outside the served suffixes gets no certificate: the handshake fails.
    let mut args = base("example.com");
    args.push(format!("https://example.com:{port}/"));
    let out = curl(args).await?;
    assert!(!out.status.success());
    // A served name with no route: 404 over TLS.
    let mut args = base("other.localhost");
    args.push(format!("https://other.localhost:{port}/"));
    assert!(String::from_utf8_lossy(&curl(args).await?.stdout).ends_with("404 2"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_supplied_certificate_for_a_custom_domain() -> Result {
    let dir = tempfile::tempdir()?;
    // The user's own certificate (self-signed here; any chain works).
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()])?.self_signed(&key)?;
    let (cert_path, key_path) = (dir.path().join("shop.pem"), dir.path().join("shop.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    let other = rcgen::KeyPair::generate()?;
    let wrong_key = dir.path().join("wrong.key");
    std::fs::write(&wrong_key, other.serialize_pem())?;
    let mismatch = load_certificate(&["shop.example.com".into()], &cert_path, &wrong_key).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(mismatch.contains("the key does not belong to the certificate"), "{mismatch}");
    assert!(load_certificate(&["shop.example.com".into()], &dir.path().join("missing.pem"), &key_path).is_err());

    let supplied = load_certificate(&["Shop.Example.com".into()], &cert_path, &key_path)?;
    let ca = LocalCa::load_or_create(&dir.path().join("ca"), &["localhost".to_owned()])?;
    let certs = OnDemandCerts::new(ca, vec![".localhost".into()]).with_supplied(vec![supplied]);
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("shop.example.com", "shop", vec![backend().await?])]);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(Router::new(table).serve_tls(listener, server_config(Arc::new(certs))?));
    let out = curl(vec![
        "-s".into(),
        "--cacert".into(),
        cert_path.display().to_string(),
        "--resolve".into(),
        format!("shop.example.com:{port}:127.0.0.1"),
        "-w".into(),
        "\n%{http_code}".into(),
        format!("https://shop.example.com:{port}/"),
    ])
    .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "proto=https\n200", "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Whether a client that trusts `ca` (rustls' WebPKI verifier, as browsers check name
/// constraints) accepts a leaf the CA issued for `name`.
fn trusted(ca: &LocalCa, name: &str) -> Result<bool> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())?)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
    let (leaf, _) = ca.issue(name)?;
    let server_name = ServerName::try_from(name.to_owned())?;
    Ok(verifier.verify_server_cert(&leaf.cert[0], &[], &server_name, &[], UnixTime::now()).is_ok())
}

/// The local CA is good for the domains berth serves and nothing else, even for certificates it
/// signed itself; leaves live a month; a new base domain gets a new CA.
#[test]
fn the_local_ca_certifies_only_its_domains() -> Result {
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(dir.path(), &["localhost".to_owned()])?;
    assert!(trusted(&ca, "web.localhost")?);
    assert!(!trusted(&ca, "bank.example.com")?, "a leaf outside the CA's domains must not verify");
    let (_, ends) = ca.issue("web.localhost")?;
    assert!(ends <= time::OffsetDateTime::now_utc() + time::Duration::days(30));

    let wider = LocalCa::load_or_create(dir.path(), &["localhost".to_owned(), "apps.example.com".to_owned()])?;
    assert_ne!(wider.cert_pem(), ca.cert_pem(), "a CA made for fewer domains is replaced");
    assert!(trusted(&wider, "shop.apps.example.com")? && trusted(&wider, "web.localhost")?);
    assert!(!trusted(&wider, "bank.example.com")?);
    // Loading again for the same domains keeps it.
    let again = LocalCa::load_or_create(dir.path(), &["localhost".to_owned(), "apps.example.com".to_owned()])?;
    assert_eq!(again.cert_pem(), wider.cert_pem());
    Ok(())
}
