//! Specs, signatures and backoff as data; deliveries end to end against a receiver on loopback
//! that refuses, then takes them, with a real store and secret.

use std::sync::Mutex;

use berth_secrets::KeySource;
use berth_store::SqliteStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

type TestResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn spec(name: &str, url: &str) -> WebhookSpec {
    WebhookSpec { name: name.into(), url: url.into(), secret: "hooks/key".into(), events: Vec::new(), services: Vec::new() }
}

#[test]
fn specs_are_checked_field_by_field() {
    assert!(spec("ops", "https://hooks.example.com/berth").validate().is_ok());
    let bad = WebhookSpec { events: vec!["deployed".into(), "exploded".into()], ..spec("o p", "ftp://x") };
    let Err(NotifyError::Invalid(why)) = bad.validate() else { panic!("an invalid spec passed") };
    assert!(why.contains("name: `o p`") && why.contains("url: `ftp://x`") && why.contains("events: `exploded`"), "{why}");
}

#[test]
fn webhooks_take_the_events_and_services_they_ask_for() {
    let event =
        |kind: &str, service: &str| ServiceEvent { id: 1, service: service.into(), at: 0, kind: kind.into(), message: String::new() };
    let all = spec("all", "http://x");
    let some = WebhookSpec { events: vec!["deployed".into()], services: vec!["team-*".into()], ..spec("some", "http://x") };
    assert!(all.wants(&event("scaled", "web")));
    assert!(some.wants(&event("deployed", "team-api")));
    assert!(!some.wants(&event("deployed", "web")));
    assert!(!some.wants(&event("scaled", "team-api")));
}

#[test]
fn signatures_and_backoff() {
    assert_eq!(
        signature(b"key", 1_700_000_000, r#"{"a":1}"#),
        "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
    );
    assert_eq!((1..=7).map(backoff).collect::<Vec<_>>(), [10, 30, 90, 270, 810, 2430, 3600]);
}

/// A receiver on loopback: answers each request with the next status of `answers` (the last
/// one from then on) and keeps what it got (headers, body).
async fn receiver(answers: Vec<u16>) -> std::io::Result<(String, Arc<Mutex<Vec<(String, String)>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then the body its Content-Length gives.
            let (head, body) = loop {
                let Ok(k) = conn.read(&mut chunk).await else { break (String::new(), String::new()) };
                if k == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break (head.to_owned(), body.to_owned());
                    }
                }
            };
            seen.lock().unwrap_or_else(|p| p.into_inner()).push((head, body));
            let status = answers.get(n).or(answers.last()).copied().unwrap_or(200);
            n += 1;
            let _ = conn.write_all(format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).await;
        }
    });
    Ok((url, got))
}

/// Makes every pending delivery due now (instead of waiting out its backoff).
async fn due_now(store: &SharedStore) -> TestResult {
    for mut d in store.due_deliveries(i64::MAX, 100).await? {
        d.next_at = 0;
        store.update_delivery(&d).await?;
    }
    Ok(())
}

#[tokio::test]
async fn deliveries_are_signed_retried_logged_and_given_up() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("state.db"))?);
    let secrets = Arc::new(Secrets::open(store.clone(), &KeySource::File { path: dir.path().join("master.key"), create: true }).await?);
    secrets.create("hooks/key", "", "s3cret", "test", now()).await?;
    // An event before the first start is not posted.
    store.add_service_event("web", now(), "deployed", "before").await?;
    let hooks = Webhooks::new(store.clone(), secrets);
    hooks.round().await?;

    let (flaky, got) = receiver(vec![500, 500, 200]).await?;
    let (dead, _) = receiver(vec![503]).await?;
    hooks.create(spec("flaky", &flaky)).await?;
    hooks.create(WebhookSpec { events: vec!["rollback".into()], ..spec("dead", &dead) }).await?;
    assert!(matches!(hooks.create(spec("flaky", &flaky)).await, Err(NotifyError::Exists(_))));
    store.add_service_event("web", now(), "deployed", "revision web-0002 serves").await?;
    store.add_service_event("web", now(), "rollback", "revision web-0003 failed").await?;

    // The first attempts: the flaky receiver refuses both of its events; the dead one, its one.
    hooks.round().await?;
    let log = hooks.deliveries("flaky", 10).await?;
    assert_eq!(
        log.iter().map(|d| (d.kind.as_str(), d.status.as_str(), d.attempts, d.last_code)).collect::<Vec<_>>(),
        [("rollback", "pending", 1, Some(500)), ("deployed", "pending", 1, Some(500))]
    );
    assert!(log.iter().all(|d| d.next_at > now() + 5), "retried before the backoff");
    // Again (the backoff skipped): both delivered.
    due_now(&store).await?;
    hooks.round().await?;
    let log = hooks.deliveries("flaky", 10).await?;
    assert!(log.iter().all(|d| d.status == "delivered" && d.attempts == 2 && d.last_code == Some(200)), "{log:?}");

    // What arrived is signed with the secret over the body.
    let (head, body) = got.lock().unwrap_or_else(|p| p.into_inner()).last().cloned().unwrap_or_default();
    let header = |name: &str| {
        head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix(&format!("{name}: ")).map(str::to_owned)).unwrap_or_default()
    };
    let sig = header("x-berth-signature");
    let t: i64 = sig.strip_prefix("t=").and_then(|s| s.split(',').next()).and_then(|t| t.parse().ok()).unwrap_or(0);
    assert_eq!(sig, signature(b"s3cret", t, &body));
    let posted: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!((posted["service"].as_str(), posted["type"].as_str()), (Some("web"), Some(header("x-berth-event").as_str())));

    // The dead receiver: given up after the last attempt, with why.
    for _ in 1..MAX_ATTEMPTS {
        due_now(&store).await?;
        hooks.round().await?;
    }
    let log = hooks.deliveries("dead", 10).await?;
    assert_eq!(
        log.iter().map(|d| (d.kind.as_str(), d.status.as_str(), d.attempts)).collect::<Vec<_>>(),
        [("rollback", "failed", MAX_ATTEMPTS)]
    );
    assert_eq!(log[0].last_error.as_deref(), Some("the receiver answered 503 Service Unavailable"));

    // A ping, and a webhook whose secret is gone: the log says why.
    hooks.ping("flaky").await?;
    hooks.create(WebhookSpec { secret: "hooks/missing".into(), ..spec("keyless", &flaky) }).await?;
    store.add_service_event("api", now(), "scaled", "1 → 2").await?;
    hooks.round().await?;
    assert_eq!(hooks.deliveries("flaky", 1).await?[0].kind, "scaled");
    assert!(hooks.deliveries("flaky", 10).await?.iter().any(|d| d.kind == "ping" && d.status == "delivered"));
    let keyless = hooks.deliveries("keyless", 1).await?;
    assert!(keyless[0].last_error.as_deref().is_some_and(|e| e.contains("reading the signing secret `hooks/missing`")), "{keyless:?}");
    hooks.delete("keyless").await?;
    assert!(matches!(hooks.deliveries("keyless", 1).await, Err(NotifyError::NotFound(_))));
    Ok(())
}
