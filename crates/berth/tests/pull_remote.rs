//! Pulling images from other registries over HTTP with oci-client: from Debian's
//! docker-registry anonymously, and from a berth server through the Docker token flow.

mod support;

use berth_image::build::{build_from_dir, BuiltImage, ImageSettings};
use berth_image::{LayerCache, RemoteRegistry};
use berth_testkit::DockerRegistry;
use support::*;

fn image() -> Result<(tempfile::TempDir, BuiltImage)> {
    let src = tempfile::tempdir()?;
    std::fs::create_dir_all(src.path().join("srv"))?;
    std::fs::write(src.path().join("srv/index.html"), b"<h1>remote</h1>")?;
    let img = build_from_dir(src.path(), &ImageSettings { entrypoint: vec!["/srv/run".into()], port: Some(9000), ..Default::default() })?;
    Ok((src, img))
}

/// Writes the image as an OCI layout, for skopeo.
fn layout(img: &BuiltImage, tag: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for b in std::iter::once(&img.config).chain(&img.layers).chain(std::iter::once(&img.manifest)) {
        std::fs::write(blobs.join(b.digest.hex()), &b.data)?;
    }
    std::fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": img.manifest.media_type, "digest": img.manifest.digest.to_string(), "size": img.manifest.data.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.path().join("index.json"), index.to_string())?;
    Ok(dir)
}

#[tokio::test]
async fn pulls_from_docker_registry_anonymously() -> Result {
    let anchor = DockerRegistry::start()?;
    let (_src, img) = image()?;
    let l = layout(&img, "v1")?;
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", l.path().display()),
        &format!("docker://{}/web:v1", anchor.addr),
    ])?;
    ok(&out)?;
    let dir = tempfile::tempdir()?;
    let cache = LayerCache::open(&dir.path().join("cache"))?;
    let source = RemoteRegistry::new(&anchor.addr, true, None);
    let pulled = berth_image::pull(&source, &cache, "web", "v1", &dir.path().join("tmp"), Default::default()).await?;
    assert_eq!(pulled.digest, img.manifest.digest);
    assert_eq!(pulled.config.exposed_ports, [9000]);
    assert_eq!(std::fs::read(pulled.layer_dirs[0].join("srv/index.html"))?, b"<h1>remote</h1>");
    let err = berth_image::pull(&source, &cache, "web", "nope", &dir.path().join("tmp"), Default::default())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(!err.is_empty());
    Ok(())
}

#[tokio::test]
async fn pulls_from_berth_through_the_token_flow() -> Result {
    let s = Server::start()?;
    let (src, img) = image()?;
    s.cli_ok(&["image", "build", &src.path().display().to_string(), "--entrypoint", "/srv/run", "--port", "9000", "-t", "team/web:v1"])?;
    let dir = tempfile::tempdir()?;
    let cache = LayerCache::open(&dir.path().join("cache"))?;
    let reader: serde_json::Value =
        serde_json::from_str(&s.cli_ok(&["-o", "json", "token", "create", "puller", "--scope", "pull:team/*"])?)?;
    let token = reader["token"].as_str().ok_or("no token")?.to_owned();
    let source = RemoteRegistry::new(&s.addr, true, Some(("puller".into(), token)));
    let pulled = berth_image::pull(&source, &cache, "team/web", "v1", &dir.path().join("tmp"), Default::default()).await?;
    assert_eq!(pulled.digest, img.manifest.digest);
    assert_eq!(std::fs::read(pulled.layer_dirs[0].join("srv/index.html"))?, b"<h1>remote</h1>");
    // Without credentials berth refuses.
    let anonymous = RemoteRegistry::new(&s.addr, true, None);
    let other = LayerCache::open(&dir.path().join("cache2"))?;
    assert!(berth_image::pull(&anonymous, &other, "team/web", "v1", &dir.path().join("tmp"), Default::default()).await.is_err());
    Ok(())
}
