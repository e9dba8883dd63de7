//! A hostile image, made by hand (no tool would make it): one layer whose entries try to write
//! outside the root — through a symlink to `/tmp`, and by a `../` path — pushed with the
//! registry's HTTP API like any client would.

use anyhow::bail;
use sha2::Digest as _;

use crate::bench::http::Conn;

/// One tar header block and its data, padded to 512 bytes.
fn entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{:011o}\0", data.len()).as_bytes());
    put(&mut h, 136, b"00000000000\0");
    put(&mut h, 148, b"        ");
    h[156] = kind;
    put(&mut h, 157, link.as_bytes());
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// The layer: a symlink to `/tmp` and a file written through it, then a file named with `../`.
fn layer() -> Vec<u8> {
    let mut tar = Vec::new();
    entry(&mut tar, "escape", b'2', "/tmp", b"");
    entry(&mut tar, "escape/berth-chaos-escape", b'0', "", b"written outside the root\n");
    entry(&mut tar, "../../../../../../tmp/berth-chaos-escape-2", b'0', "", b"written outside the root\n");
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Pushes the hostile image to `<repo>:<tag>` of the registry at `addr`.
pub fn push(addr: &str, auth: &str, repo: &str, tag: &str) -> anyhow::Result<String> {
    let layer = layer();
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/hello"], "ExposedPorts": {"8080/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))?;
    let config_digest = digest(&config);
    let mut c = Conn::connect(addr, Some(auth.to_owned()))?;
    for (blob, d) in [(&layer, &layer_digest), (&config, &config_digest)] {
        let r = c.request(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[("Content-Type", "application/octet-stream")],
            blob,
            true,
        )?;
        if r.status != 201 {
            bail!("pushing blob {d}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        }
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))?;
    let r = c.request(
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
        true,
    )?;
    if r.status != 201 {
        bail!("pushing the manifest: {} {}", r.status, String::from_utf8_lossy(&r.body));
    }
    Ok(digest(&manifest))
}
