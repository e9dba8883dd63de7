//! The registry with real clients: skopeo pushes and pulls images as a CI would, under the
//! story's "immutable except latest" policy, concurrently, and across a server crash.

mod support;

use support::*;

#[test]
fn skopeo_round_trip_keeps_bytes_and_digests() -> Result {
    let s = Server::start()?;
    let img = Layout::new("v1", &[(1, 300_000), (2, 200_000), (3, 50_000), (4, 10)], "1")?;
    ok(&skopeo_copy(&img.reference("v1"), &format!("docker://{}/team/web:v1", s.addr), &s.creds())?)?;

    let back = tempfile::tempdir()?;
    let dst = format!("oci:{}:v1", back.path().display());
    ok(&skopeo_copy(&format!("docker://{}/team/web:v1", s.addr), &dst, &s.creds())?)?;
    assert_eq!(layout_blobs(back.path())?, layout_blobs(img.dir.path())?);
    for d in &img.blobs {
        let name = d.trim_start_matches("sha256:");
        assert_eq!(
            std::fs::read(back.path().join("blobs/sha256").join(name))?,
            std::fs::read(img.dir.path().join("blobs/sha256").join(name))?
        );
    }
    let head = http(
        "HEAD",
        &s.url("/v2/team/web/manifests/v1"),
        Some(&s.creds()),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    )?;
    assert_eq!(head.header("docker-content-digest"), Some(img.manifest_digest.as_str()));
    Ok(())
}

#[test]
fn ci_story_immutable_except_latest() -> Result {
    let s = Server::start()?;
    s.cli_ok(&["repo", "create", "web", "--mutability", "IMMUTABLE_WITH_EXCLUSION", "--exclude", "latest"])?;
    let v1 = Layout::new("x", &[(10, 100_000), (11, 1000)], "1")?;
    let v2 = Layout::new("x", &[(10, 100_000), (12, 1000)], "2")?;
    let push = |img: &Layout, tag: &str| skopeo_copy(&img.reference("x"), &format!("docker://{}/web:{tag}", s.addr), &s.creds());

    // CI pushes <sha>-<timestamp> and latest.
    ok(&push(&v1, "3f2a9c1-20261126")?)?;
    ok(&push(&v1, "latest")?)?;
    // A CI retry of the same image is idempotent, even on the immutable tag.
    ok(&push(&v1, "3f2a9c1-20261126")?)?;
    // The next build moves latest...
    ok(&push(&v2, "latest")?)?;
    // ...but cannot move an immutable tag.
    let denied = push(&v2, "3f2a9c1-20261126")?;
    assert!(!denied.status.success());
    let msg = String::from_utf8_lossy(&denied.stderr);
    assert!(msg.contains("tag `3f2a9c1-20261126` is immutable in repository `web`") && msg.contains("IMMUTABLE_WITH_EXCLUSION"), "{msg}");

    let tags = s.cli_ok(&["-o", "json", "repo", "tags", "web"])?;
    let tags: serde_json::Value = serde_json::from_str(&tags)?;
    let digest_of = |t: &str| {
        tags["tags"].as_array().and_then(|a| a.iter().find(|x| x["tag"] == t)).map(|x| x["digest"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(digest_of("3f2a9c1-20261126"), Some(v1.manifest_digest.clone()));
    assert_eq!(digest_of("latest"), Some(v2.manifest_digest.clone()));

    // The push history names each move with the digest it replaced.
    let events: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "repo", "events", "web"])?)?;
    let ev: Vec<(String, String, String)> = events["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["tag"].as_str().unwrap_or("").into(),
                        e["digest"].as_str().unwrap_or("").into(),
                        e["previous_digest"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        ev,
        vec![
            ("3f2a9c1-20261126".into(), v1.manifest_digest.clone(), String::new()),
            ("latest".into(), v1.manifest_digest.clone(), String::new()),
            ("latest".into(), v2.manifest_digest.clone(), v1.manifest_digest.clone()),
        ]
    );
    Ok(())
}

#[test]
fn concurrent_pushes_of_overlapping_blobs() -> Result {
    let s = Server::start()?;
    // Four images sharing two big layers, each with one of its own.
    let images: Vec<Layout> =
        (0..4).map(|i| Layout::new("x", &[(100, 400_000), (101, 300_000), (200 + i, 50_000)], &i.to_string())).collect::<Result<_>>()?;
    std::thread::scope(|scope| -> Result {
        let handles: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let (addr, creds) = (s.addr.clone(), s.creds());
                scope.spawn(move || skopeo_copy(&img.reference("x"), &format!("docker://{addr}/app{}:v1", i % 2), &creds).map(|o| (i, o)))
            })
            .collect();
        for h in handles {
            let (i, out) = h.join().map_err(|_| "push thread panicked")??;
            // Two images race for each tag; with a mutable policy both pushes succeed.
            assert!(out.status.success(), "push {i}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    })?;
    // Every image's blobs are readable from its repository, and shared layers are stored once.
    for (i, img) in images.iter().enumerate() {
        for b in &img.blobs[..3] {
            let r = http("HEAD", &s.url(&format!("/v2/app{}/blobs/{b}", i % 2)), Some(&s.creds()), &[], b"")?;
            assert_eq!(r.status, 200, "blob {b} of image {i}");
        }
    }
    let shared = images[0].blobs[0].trim_start_matches("sha256:").to_owned();
    let count = walk(&s.dir.join("registry/blobs"))?.into_iter().filter(|p| p.ends_with(&shared)).count();
    assert_eq!(count, 1);
    Ok(())
}

fn walk(dir: &std::path::Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.extend(walk(&e.path())?);
        } else {
            out.push(e.path().display().to_string());
        }
    }
    Ok(out)
}

#[test]
fn kill9_during_upload_leaves_nothing_corrupt() -> Result {
    use std::io::Write;
    let mut s = Server::start()?;
    let start = http("POST", &s.url("/v2/web/blobs/uploads/"), Some(&s.creds()), &[], b"")?;
    assert_eq!(start.status, 202);
    let location = start.header("location").ok_or("no Location")?.to_owned();
    let data = noise(7, 4 << 20);
    let digest = sha256(&data);

    // Send half of a PATCH body, then kill the server mid-request.
    let mut conn = std::net::TcpStream::connect(&s.addr)?;
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(s.creds());
    write!(conn, "PATCH {location} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", s.addr, data.len())?;
    conn.write_all(&data[..data.len() / 2])?;
    conn.flush()?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.restart()?;
    drop(conn);

    // No blob appeared, the upload can be inspected and resumed from what was stored.
    let head = http("HEAD", &s.url(&format!("/v2/web/blobs/{digest}")), Some(&s.creds()), &[], b"")?;
    assert_eq!(head.status, 404);
    let status = http("GET", &s.url(&location), Some(&s.creds()), &[], b"")?;
    assert_eq!(status.status, 204);
    let have: usize =
        status.header("range").and_then(|r| r.split('-').nth(1)).and_then(|n| n.parse::<usize>().ok()).map(|n| n + 1).ok_or("no Range")?;
    assert!(have <= data.len() / 2);
    let range = format!("{have}-{}", data.len() - 1);
    let patch = http("PATCH", &s.url(&location), Some(&s.creds()), &[("Content-Range", &range)], &data[have..])?;
    assert_eq!(patch.status, 202, "{}", String::from_utf8_lossy(&patch.body));
    let put = http("PUT", &s.url(&format!("{location}?digest={digest}")), Some(&s.creds()), &[], b"")?;
    assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
    let get = http("GET", &s.url(&format!("/v2/web/blobs/{digest}")), Some(&s.creds()), &[], b"")?;
    assert_eq!(sha256(&get.body), digest);

    // A whole push after the crash simply works.
    let img = Layout::new("x", &[(8, 1 << 20)], "1")?;
    ok(&skopeo_copy(&img.reference("x"), &format!("docker://{}/web:after-crash", s.addr), &s.creds())?)?;
    Ok(())
}

#[test]
fn graceful_shutdown_on_sigterm() -> Result {
    let mut s = Server::start()?;
    let status = s.terminate()?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// From the moment berth says where it listens, SIGTERM stops it gracefully: sent the instant
/// the address appears, round after round, it never kills it.
#[test]
fn sigterm_as_soon_as_berth_listens_is_graceful() -> Result {
    for round in 1..=10 {
        let tmp = tempfile::tempdir()?;
        let mut child = berth_testkit::BerthProcess::spawn(std::path::Path::new(BIN), tmp.path(), &[])?;
        let said = tmp.path().join("api-address");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !said.exists() {
            if let Some(status) = child.try_wait()? {
                return Err(format!("round {round}: berth exited before it listened: {status}").into());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("round {round}: berth did not listen within 20 s").into());
            }
            std::thread::yield_now();
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = child.wait()?;
        assert!(status.success(), "round {round}: SIGTERM right after berth said it listens: {status}");
    }
    Ok(())
}
