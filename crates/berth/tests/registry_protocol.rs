//! The OCI distribution protocol over real HTTP, endpoint by endpoint: uploads in every form,
//! mounts, ranges, manifests of every format, listing, referrers, deletion, every error code,
//! the auth challenges and the Docker token flow; then lifecycle rules and garbage collection.

mod support;

use serde_json::json;
use support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

struct Reg<'a> {
    s: &'a Server,
    creds: String,
}

impl Reg<'_> {
    fn new(s: &Server) -> Reg<'_> {
        Reg { s, creds: s.creds() }
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Resp> {
        http(method, &self.s.url(path), Some(&self.creds), headers, body)
    }

    fn push_blob(&self, repo: &str, data: &[u8]) -> Result<String> {
        let d = sha256(data);
        let r =
            self.req("POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"), &[("Content-Type", "application/octet-stream")], data)?;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        Ok(d)
    }

    fn image(&self, repo: &str, seed: u64) -> Result<(serde_json::Value, Vec<String>)> {
        let config = self.push_blob(repo, json!({"architecture": "amd64", "os": "linux", "seed": seed}).to_string().as_bytes())?;
        let layer = self.push_blob(repo, &noise(seed, 1000))?;
        let m = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 1000}]
        });
        Ok((m, vec![config, layer]))
    }

    fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, m: &serde_json::Value) -> Result<Resp> {
        self.req("PUT", &format!("/v2/{repo}/manifests/{reference}"), &[("Content-Type", media_type)], m.to_string().as_bytes())
    }
}

#[test]
fn auth_challenges_and_token_flow() -> Result {
    let s = Server::start()?;
    // No credentials: 401 with a Bearer challenge naming the token endpoint and the scope.
    let r = http("GET", &s.url("/v2/"), None, &[], b"")?;
    assert_eq!((r.status, r.code().as_str()), (401, "UNAUTHORIZED"));
    assert_eq!(r.header("www-authenticate"), Some(format!("Bearer realm=\"http://{}/token\",service=\"berth\"", s.addr).as_str()));
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));
    let r = http("POST", &s.url("/v2/web/blobs/uploads/"), None, &[], b"")?;
    assert!(
        r.header("www-authenticate").is_some_and(|h| h.ends_with("scope=\"repository:web:pull,push\"")),
        "{:?}",
        r.header("www-authenticate")
    );
    // A wrong token is no better than none.
    let r = http("GET", &s.url("/v2/"), Some("x:berth_000000000000_00"), &[], b"")?;
    assert_eq!(r.status, 401);
    // Basic with any user name and a token works.
    assert_eq!(http("GET", &s.url("/v2/"), Some(&s.creds()), &[], b"")?.status, 200);

    // A pull-only token: pulls, but pushing is 403 DENIED.
    let created = s.cli_ok(&["-o", "json", "token", "create", "reader", "--scope", "pull:web"])?;
    let reader = serde_json::from_str::<serde_json::Value>(&created)?["token"].as_str().ok_or("no token")?.to_owned();
    let rc = format!("any:{reader}");
    let reg = Reg::new(&s);
    let (m, _) = reg.image("web", 1)?;
    assert_eq!(reg.put_manifest("web", "v1", OCI_MANIFEST, &m)?.status, 201);
    assert_eq!(http("GET", &s.url("/v2/web/manifests/v1"), Some(&rc), &[], b"")?.status, 200);
    let r = http("POST", &s.url("/v2/web/blobs/uploads/"), Some(&rc), &[], b"")?;
    assert_eq!((r.status, r.code().as_str()), (403, "DENIED"));
    assert!(r.json()["errors"][0]["message"].as_str().unwrap_or("").contains("may not push to repository `web`"));
    assert_eq!(http("GET", &s.url("/v2/other/tags/list"), Some(&rc), &[], b"")?.status, 403);

    // The Docker token flow: a bearer token for what was asked, within the token's scopes.
    let t = http("GET", &s.url("/token?service=berth&scope=repository:web:pull,push"), Some(&rc), &[], b"")?;
    assert_eq!(t.status, 200);
    let bearer = t.json()["token"].as_str().ok_or("no token")?.to_owned();
    let auth = format!("Bearer {bearer}");
    assert_eq!(http("GET", &s.url("/v2/web/manifests/v1"), None, &[("Authorization", &auth)], b"")?.status, 200);
    // The grant holds pull only: pushing with it is 403, since the API token cannot push either.
    assert_eq!(http("POST", &s.url("/v2/web/blobs/uploads/"), None, &[("Authorization", &auth)], b"")?.status, 403);
    // An admin's bearer token for pull only: a push asks for a wider token (401, insufficient_scope).
    let t = http("GET", &s.url("/token?service=berth&scope=repository:web:pull"), Some(&s.creds()), &[], b"")?;
    let auth = format!("Bearer {}", t.json()["token"].as_str().unwrap_or(""));
    let r = http("POST", &s.url("/v2/web/blobs/uploads/"), None, &[("Authorization", &auth)], b"")?;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|h| h.contains("error=\"insufficient_scope\"")));
    // The token endpoint itself wants credentials.
    let r = http("GET", &s.url("/token?service=berth"), None, &[], b"")?;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"berth\""));
    // Revoked tokens stop working at once, their bearer tokens too.
    let id = serde_json::from_str::<serde_json::Value>(&created)?["id"].as_str().ok_or("no id")?.to_owned();
    s.cli_ok(&["token", "revoke", &id])?;
    assert_eq!(http("GET", &s.url("/v2/web/manifests/v1"), Some(&rc), &[], b"")?.status, 401);
    Ok(())
}

#[test]
fn uploads_in_every_form() -> Result {
    let s = Server::start()?;
    let reg = Reg::new(&s);
    let data = noise(3, 300_000);
    let d = sha256(&data);

    // Monolithic: POST, then PUT with the whole body.
    let r = reg.req("POST", "/v2/web/blobs/uploads/", &[], b"")?;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("range"), Some("0-0"));
    assert!(r.header("docker-upload-uuid").is_some());
    let loc = r.header("location").ok_or("no location")?.to_owned();
    let r = reg.req("PUT", &format!("{loc}?digest={d}"), &[("Content-Type", "application/octet-stream")], &data)?;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("location"), Some(format!("/v2/web/blobs/{d}").as_str()));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));

    // Chunked: PATCHes with Content-Range, a status check, an out-of-order chunk, then PUT.
    let data2 = noise(4, 250_000);
    let d2 = sha256(&data2);
    let loc = reg.req("POST", "/v2/web/blobs/uploads/", &[], b"")?.header("location").ok_or("no location")?.to_owned();
    let r = reg.req("PATCH", &loc, &[("Content-Range", "0-99999")], &data2[..100_000])?;
    assert_eq!((r.status, r.header("range")), (202, Some("0-99999")));
    let r = reg.req("PATCH", &loc, &[("Content-Range", "200000-249999")], &data2[200_000..])?;
    assert_eq!((r.status, r.code().as_str(), r.header("range")), (416, "BLOB_UPLOAD_INVALID", Some("0-99999")));
    let r = reg.req("GET", &loc, &[], b"")?;
    assert_eq!((r.status, r.header("range")), (204, Some("0-99999")));
    // A Content-Range whose length disagrees with the body is refused, and nothing is appended.
    let r = reg.req("PATCH", &loc, &[("Content-Range", "100000-100009")], &data2[100_000..100_005])?;
    assert_eq!((r.status, r.code().as_str()), (416, "BLOB_UPLOAD_INVALID"));
    assert_eq!(reg.req("GET", &loc, &[], b"")?.header("range"), Some("0-99999"));
    assert_eq!(reg.req("PATCH", &loc, &[("Content-Range", "100000-199999")], &data2[100_000..200_000])?.status, 202);
    let r = reg.req("PUT", &format!("{loc}?digest={d2}"), &[("Content-Range", "200000-249999")], &data2[200_000..])?;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(sha256(&reg.req("GET", &format!("/v2/web/blobs/{d2}"), &[], b"")?.body), d2);

    // Cancel: the session is gone.
    let loc = reg.req("POST", "/v2/web/blobs/uploads/", &[], b"")?.header("location").ok_or("no location")?.to_owned();
    assert_eq!(reg.req("PATCH", &loc, &[], b"abc")?.status, 202);
    assert_eq!(reg.req("DELETE", &loc, &[], b"")?.status, 204);
    let r = reg.req("GET", &loc, &[], b"")?;
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let r = reg.req("PATCH", "/v2/web/blobs/uploads/00000000000000000000000000000000", &[], b"x")?;
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    // An upload belongs to its repository.
    let loc = reg.req("POST", "/v2/web/blobs/uploads/", &[], b"")?.header("location").ok_or("no location")?.to_owned();
    let other = loc.replace("/v2/web/", "/v2/other/");
    assert_eq!(reg.req("GET", &other, &[], b"")?.code(), "BLOB_UPLOAD_UNKNOWN");

    // Wrong digest: DIGEST_INVALID and no blob; a declared size that does not match: SIZE_INVALID.
    let wrong = sha256(b"something else");
    let r = reg.req("POST", &format!("/v2/web/blobs/uploads/?digest={wrong}"), &[], b"content")?;
    assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"));
    assert_eq!(reg.req("HEAD", &format!("/v2/web/blobs/{wrong}"), &[], b"")?.status, 404);
    let r = reg.req("PUT", &format!("{loc}?digest=sha256:123"), &[], b"")?;
    assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"));
    let r = reg.req("PUT", &loc, &[], b"")?;
    assert_eq!(r.code(), "DIGEST_INVALID");

    // sha512 digests are verified too.
    let mut h = <sha2::Sha512 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, b"sha512 content");
    let d512 = format!("sha512:{}", hex::encode(sha2::Digest::finalize(h)));
    assert_eq!(reg.req("POST", &format!("/v2/web/blobs/uploads/?digest={d512}"), &[], b"sha512 content")?.status, 201);
    assert_eq!(reg.req("GET", &format!("/v2/web/blobs/{d512}"), &[], b"")?.body, b"sha512 content");
    Ok(())
}

#[test]
fn blobs_ranges_mounts_and_deletes() -> Result {
    let s = Server::start()?;
    let reg = Reg::new(&s);
    let data = noise(5, 10_000);
    let d = reg.push_blob("src", &data)?;

    let r = reg.req("HEAD", &format!("/v2/src/blobs/{d}"), &[], b"")?;
    assert_eq!((r.status, r.header("content-length"), r.header("docker-content-digest")), (200, Some("10000"), Some(d.as_str())));
    assert!(r.body.is_empty());
    let r = reg.req("GET", &format!("/v2/src/blobs/{d}"), &[("Range", "bytes=100-199")], b"")?;
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 100-199/10000")));
    assert_eq!(r.body, &data[100..200]);
    let r = reg.req("GET", &format!("/v2/src/blobs/{d}"), &[("Range", "bytes=-10")], b"")?;
    assert_eq!(r.body, &data[9990..]);
    let r = reg.req("GET", &format!("/v2/src/blobs/{d}"), &[("Range", "bytes=20000-")], b"")?;
    assert_eq!((r.status, r.header("content-range")), (416, Some("bytes */10000")));

    // A blob is visible only in repositories it was pushed or mounted to.
    let r = reg.req("GET", &format!("/v2/dst/blobs/{d}"), &[], b"")?;
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UNKNOWN"));
    let r = reg.req("POST", &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"), &[], b"")?;
    assert_eq!((r.status, r.header("location")), (201, Some(format!("/v2/dst/blobs/{d}").as_str())));
    assert_eq!(reg.req("GET", &format!("/v2/dst/blobs/{d}"), &[], b"")?.body, data);
    // Mounting what the source does not have falls back to a new upload.
    let missing = sha256(b"nope");
    let r = reg.req("POST", &format!("/v2/dst/blobs/uploads/?mount={missing}&from=src"), &[], b"")?;
    assert_eq!(r.status, 202);
    // A token that cannot pull the source cannot mount from it.
    let t: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "token", "create", "dst-only", "--scope", "push:dst2"])?)?;
    let dc = format!("u:{}", t["token"].as_str().unwrap_or(""));
    let r = http("POST", &s.url(&format!("/v2/dst2/blobs/uploads/?mount={d}&from=src")), Some(&dc), &[], b"")?;
    assert_eq!(r.status, 202);

    // Delete unlinks from one repository only.
    assert_eq!(reg.req("DELETE", &format!("/v2/dst/blobs/{d}"), &[], b"")?.status, 202);
    assert_eq!(reg.req("HEAD", &format!("/v2/dst/blobs/{d}"), &[], b"")?.status, 404);
    assert_eq!(reg.req("DELETE", &format!("/v2/dst/blobs/{d}"), &[], b"")?.code(), "BLOB_UNKNOWN");
    assert_eq!(reg.req("HEAD", &format!("/v2/src/blobs/{d}"), &[], b"")?.status, 200);
    let r = reg.req("GET", "/v2/src/blobs/sha256:xyz", &[], b"")?;
    assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"));
    Ok(())
}

#[test]
fn manifests_of_every_format() -> Result {
    let s = Server::start()?;
    let reg = Reg::new(&s);
    let (m, blobs) = reg.image("app", 1)?;

    // A manifest whose blobs are missing is refused.
    let mut broken = m.clone();
    broken["layers"][0]["digest"] = sha256(b"never pushed").into();
    let r = reg.put_manifest("app", "broken", OCI_MANIFEST, &broken)?;
    assert_eq!((r.status, r.code().as_str()), (400, "MANIFEST_BLOB_UNKNOWN"));
    assert_eq!(reg.put_manifest("app", "bad", OCI_MANIFEST, &json!({"schemaVersion": 2}))?.code(), "MANIFEST_INVALID");
    let r = reg.req("PUT", "/v2/app/manifests/bad", &[("Content-Type", OCI_MANIFEST)], b"{not json")?;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    assert_eq!(reg.put_manifest("app", "bad", DOCKER_MANIFEST, &m)?.code(), "MANIFEST_INVALID");
    // Over 4 MiB: 413. curl, because it reads the early answer while still sending.
    let huge = tempfile::NamedTempFile::new()?;
    std::fs::write(huge.path(), vec![b' '; (4 << 20) + 1])?;
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "-u",
            &s.creds(),
            "-H",
            &format!("Content-Type: {OCI_MANIFEST}"),
        ])
        .arg("--data-binary")
        .arg(format!("@{}", huge.path().display()))
        .arg(s.url("/v2/app/manifests/huge"))
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    assert_eq!(reg.put_manifest("app", "-bad", OCI_MANIFEST, &m)?.code(), "TAG_INVALID");
    assert_eq!(reg.put_manifest("App", "v1", OCI_MANIFEST, &m)?.code(), "NAME_INVALID");
    let wrong = sha256(b"x");
    assert_eq!(reg.put_manifest("app", &wrong, OCI_MANIFEST, &m)?.code(), "DIGEST_INVALID");

    // OCI image manifest by tag and by digest.
    let body = m.to_string();
    let digest = sha256(body.as_bytes());
    let r = reg.put_manifest("app", "v1", OCI_MANIFEST, &m)?;
    assert_eq!((r.status, r.header("docker-content-digest")), (201, Some(digest.as_str())));
    assert_eq!(r.header("location"), Some(format!("/v2/app/manifests/{digest}").as_str()));
    assert_eq!(reg.put_manifest("app", &digest, OCI_MANIFEST, &m)?.status, 201);
    for reference in ["v1", digest.as_str()] {
        let r = reg.req("GET", &format!("/v2/app/manifests/{reference}"), &[("Accept", OCI_MANIFEST)], b"")?;
        assert_eq!(
            (r.status, r.header("content-type"), r.header("docker-content-digest")),
            (200, Some(OCI_MANIFEST), Some(digest.as_str()))
        );
        assert_eq!(r.body, body.as_bytes());
    }
    // Content negotiation: a client that accepts only Docker schema2 does not get an OCI manifest by tag.
    let r = reg.req("GET", "/v2/app/manifests/v1", &[("Accept", DOCKER_MANIFEST)], b"")?;
    assert_eq!((r.status, r.code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = reg.req("HEAD", "/v2/app/manifests/v1", &[], b"")?;
    assert_eq!((r.status, r.header("content-length")), (200, Some(body.len().to_string().as_str())));

    // Docker schema2 and a manifest list; an index needs its children first.
    let mut dm = m.clone();
    dm["mediaType"] = DOCKER_MANIFEST.into();
    dm["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json".into();
    dm["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip".into();
    let dd = sha256(dm.to_string().as_bytes());
    let list = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": dd, "size": dm.to_string().len(), "platform": {"architecture": "amd64", "os": "linux"}}]});
    assert_eq!(reg.put_manifest("app", "multi", DOCKER_LIST, &list)?.code(), "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(reg.put_manifest("app", "docker", DOCKER_MANIFEST, &dm)?.status, 201);
    assert_eq!(reg.put_manifest("app", "multi", DOCKER_LIST, &list)?.status, 201);
    let r = reg.req("GET", "/v2/app/manifests/multi", &[("Accept", &format!("{DOCKER_LIST}, {DOCKER_MANIFEST}"))], b"")?;
    assert_eq!(r.header("content-type"), Some(DOCKER_LIST));
    // A client that does not take lists gets this platform's image.
    let r = reg.req("GET", "/v2/app/manifests/multi", &[("Accept", DOCKER_MANIFEST)], b"")?;
    assert_eq!((r.status, r.header("docker-content-digest")), (200, Some(dd.as_str())));
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": body.len()}]});
    assert_eq!(reg.put_manifest("app", "index", OCI_INDEX, &index)?.status, 201);

    // Referrers: artifacts whose subject is the image, with the artifactType filter.
    let empty = reg.push_blob("app", b"{}")?;
    for (i, at) in ["application/vnd.example.sbom", "application/vnd.example.sig"].iter().enumerate() {
        let a = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": at,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blobs[1], "size": 1000}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": body.len()},
            "annotations": {"n": i.to_string()}});
        let ad = sha256(a.to_string().as_bytes());
        let r = reg.put_manifest("app", &ad, OCI_MANIFEST, &a)?;
        assert_eq!((r.status, r.header("oci-subject")), (201, Some(digest.as_str())));
    }
    let r = reg.req("GET", &format!("/v2/app/referrers/{digest}"), &[], b"")?;
    assert_eq!((r.status, r.header("content-type")), (200, Some(OCI_INDEX)));
    assert_eq!(r.json()["manifests"].as_array().map(Vec::len), Some(2));
    let r = reg.req("GET", &format!("/v2/app/referrers/{digest}?artifactType=application/vnd.example.sig"), &[], b"")?;
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let list = r.json()["manifests"].clone();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["artifactType"], "application/vnd.example.sig");
    assert_eq!(list[0]["annotations"]["n"], "1");
    let r = reg.req("GET", &format!("/v2/app/referrers/{}", sha256(b"none")), &[], b"")?;
    assert_eq!(r.json()["manifests"], json!([]));

    // Delete a tag, then the manifest by digest with the tags still on it.
    assert_eq!(reg.req("DELETE", "/v2/app/manifests/docker", &[], b"")?.status, 202);
    assert_eq!(reg.req("GET", "/v2/app/manifests/docker", &[], b"")?.code(), "MANIFEST_UNKNOWN");
    assert_eq!(reg.req("GET", &format!("/v2/app/manifests/{dd}"), &[], b"")?.status, 200);
    assert_eq!(reg.req("DELETE", &format!("/v2/app/manifests/{digest}"), &[], b"")?.status, 202);
    assert_eq!(reg.req("GET", "/v2/app/manifests/v1", &[], b"")?.code(), "MANIFEST_UNKNOWN");
    assert_eq!(reg.req("DELETE", &format!("/v2/app/manifests/{digest}"), &[], b"")?.code(), "MANIFEST_UNKNOWN");
    Ok(())
}

#[test]
fn listing_with_pagination() -> Result {
    let s = Server::start()?;
    let reg = Reg::new(&s);
    let (m, _) = reg.image("lib/a", 1)?;
    for t in ["v3", "v1", "latest", "v2"] {
        assert_eq!(reg.put_manifest("lib/a", t, OCI_MANIFEST, &m)?.status, 201);
    }
    let r = reg.req("GET", "/v2/lib/a/tags/list", &[], b"")?;
    assert_eq!(r.json(), json!({"name": "lib/a", "tags": ["latest", "v1", "v2", "v3"]}));
    assert_eq!(r.header("link"), None);
    let r = reg.req("GET", "/v2/lib/a/tags/list?n=2", &[], b"")?;
    assert_eq!(r.json()["tags"], json!(["latest", "v1"]));
    assert_eq!(r.header("link"), Some("</v2/lib/a/tags/list?n=2&last=v1>; rel=\"next\""));
    let r = reg.req("GET", "/v2/lib/a/tags/list?n=2&last=v1", &[], b"")?;
    assert_eq!(r.json()["tags"], json!(["v2", "v3"]));
    assert_eq!(r.header("link"), None);
    let r = reg.req("GET", "/v2/lib/a/tags/list?n=0", &[], b"")?;
    assert_eq!(r.json()["tags"], json!([]));
    let r = reg.req("GET", "/v2/nothing/tags/list", &[], b"")?;
    assert_eq!((r.status, r.code().as_str()), (404, "NAME_UNKNOWN"));

    for repo in ["lib/b", "c"] {
        reg.push_blob(repo, b"x")?;
    }
    let r = reg.req("GET", "/v2/_catalog", &[], b"")?;
    assert_eq!(r.json(), json!({"repositories": ["c", "lib/a", "lib/b"]}));
    let r = reg.req("GET", "/v2/_catalog?n=1", &[], b"")?;
    assert_eq!((r.json()["repositories"].clone(), r.header("link")), (json!(["c"]), Some("</v2/_catalog?n=1&last=c>; rel=\"next\"")));
    let r = reg.req("GET", "/v2/_catalog?n=5&last=c", &[], b"")?;
    assert_eq!(r.json()["repositories"], json!(["lib/a", "lib/b"]));
    // The catalog shows only what the caller may pull.
    let t: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "token", "create", "libs", "--scope", "pull:lib/*"])?)?;
    let r = http("GET", &s.url("/v2/_catalog"), Some(&format!("u:{}", t["token"].as_str().unwrap_or(""))), &[], b"")?;
    assert_eq!(r.json()["repositories"], json!(["lib/a", "lib/b"]));

    let r = reg.req("PATCH", "/v2/_catalog", &[], b"")?;
    assert_eq!((r.status, r.code().as_str()), (405, "UNSUPPORTED"));
    Ok(())
}

#[test]
fn lifecycle_and_garbage_collection() -> Result {
    let s = Server::start_with_env(&[("BERTH_REGISTRY_GC_GRACE_SECS", "0")])?;
    let reg = Reg::new(&s);
    let mut digests = Vec::new();
    let mut layers = Vec::new();
    for i in 0..3u64 {
        let (m, blobs) = reg.image("svc", 10 + i)?;
        assert_eq!(reg.put_manifest("svc", &format!("build-{i}"), OCI_MANIFEST, &m)?.status, 201);
        digests.push(sha256(m.to_string().as_bytes()));
        layers.push(blobs[1].clone());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // An orphan blob (uploaded, never referenced) and a blob shared with another repository.
    let orphan = reg.push_blob("svc", b"orphan")?;
    let (keep, keep_blobs) = reg.image("other", 10)?;
    assert_eq!(reg.put_manifest("other", "v1", OCI_MANIFEST, &keep)?.status, 201);

    s.cli_ok(&["repo", "set-lifecycle", "svc", "--keep-newest", "1", "--pattern", "build-*"])?;
    let dry = s.cli_ok(&["registry", "gc", "--dry-run"])?;
    assert!(dry.contains("would delete tag build-0 in svc") && dry.contains("would delete tag build-1 in svc"), "{dry}");
    assert!(dry.contains(&format!("would delete blob {orphan}")), "{dry}");
    assert!(dry.contains(&format!("would delete blob {}", layers[1])), "{dry}");
    // Layer 0 is shared with `other`: never a candidate.
    assert!(!dry.contains(&layers[0]), "{dry}");
    assert_eq!(reg.req("GET", "/v2/svc/manifests/build-0", &[], b"")?.status, 200, "dry run deleted something");

    let report: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "registry", "gc"])?)?;
    assert_eq!(report["lifecycle"].as_array().map(Vec::len), Some(4), "{report}");
    assert_eq!(reg.req("GET", "/v2/svc/manifests/build-0", &[], b"")?.status, 404);
    assert_eq!(reg.req("GET", "/v2/svc/manifests/build-2", &[], b"")?.status, 200);
    assert_eq!(reg.req("GET", &format!("/v2/svc/manifests/{}", digests[0]), &[], b"")?.status, 404);
    assert_eq!(reg.req("HEAD", &format!("/v2/svc/blobs/{orphan}"), &[], b"")?.status, 404);
    assert_eq!(reg.req("HEAD", &format!("/v2/svc/blobs/{}", layers[1]), &[], b"")?.status, 404);
    for b in &keep_blobs {
        assert_eq!(reg.req("GET", &format!("/v2/other/blobs/{b}"), &[], b"")?.status, 200);
    }
    assert_eq!(reg.req("HEAD", &format!("/v2/svc/blobs/{}", layers[2]), &[], b"")?.status, 200);
    // A second run finds nothing more.
    let again: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "registry", "gc"])?)?;
    assert_eq!((again["blobs"].as_array().map(Vec::len), again["lifecycle"].as_array().map(Vec::len)), (Some(0), Some(0)));
    Ok(())
}

#[test]
fn grace_period_protects_fresh_uploads() -> Result {
    let s = Server::start()?;
    let reg = Reg::new(&s);
    let fresh = reg.push_blob("web", b"in flight")?;
    let report: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "registry", "gc"])?)?;
    assert_eq!(report["blobs"], json!([]));
    assert_eq!(reg.req("HEAD", &format!("/v2/web/blobs/{fresh}"), &[], b"")?.status, 200);
    Ok(())
}
