//! `cargo xtask bench registry`: berth's registry against Debian's docker-registry (CNCF
//! distribution 2.8.2) with the same client (a keep-alive HTTP/1.1 connection from this
//! process): push and pull of a 256 MiB image in 4 incompressible layers, and of 500 blobs of
//! 4 KiB. Alternating rounds; each round uses fresh data, the same for both registries.

use std::time::Instant;

use anyhow::{bail, Context};
use berth_testkit::{noise, BerthProcess, DockerRegistry};
use sha2::{Digest, Sha256};

use super::http::Conn;
use super::{build_berth, peak_rss_kib, print_table, Figure};

const LARGE_LAYERS: usize = 4;
const LARGE_LAYER_BYTES: usize = 64 << 20;
const SMALL_BLOBS: usize = 500;
const SMALL_BLOB_BYTES: usize = 4 << 10;

/// A registry under test: berth or the anchor.
struct Target {
    name: &'static str,
    pid: u32,
    addr: String,
    auth: Option<String>,
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A blob with its digest computed ahead of the timed part.
struct Blob {
    data: Vec<u8>,
    digest: String,
}

impl Blob {
    fn new(data: Vec<u8>) -> Blob {
        let digest = digest(&data);
        Blob { data, digest }
    }
}

fn path_of(location: &str) -> String {
    location.find("/v2/").map(|i| location[i..].to_owned()).unwrap_or_else(|| location.to_owned())
}

/// Monolithic upload: POST for a session, PUT with the whole body.
fn push_blob(c: &mut Conn, repo: &str, b: &Blob) -> anyhow::Result<()> {
    let r = c.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"", true)?;
    if r.status != 202 {
        bail!("upload start answered {}", r.status);
    }
    let loc = path_of(r.header("location").context("no Location")?);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c.request("PUT", &format!("{loc}{sep}digest={}", b.digest), &[("Content-Type", "application/octet-stream")], &b.data, true)?;
    if r.status != 201 {
        bail!("upload finish answered {}: {}", r.status, String::from_utf8_lossy(&r.body));
    }
    Ok(())
}

fn pull_blob(c: &mut Conn, repo: &str, b: &Blob) -> anyhow::Result<()> {
    let r = c.request("GET", &format!("/v2/{repo}/blobs/{}", b.digest), &[], b"", false)?;
    if r.status != 200 {
        bail!("blob GET answered {}", r.status);
    }
    Ok(())
}

fn manifest(config: &Blob, layers: &[Blob]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.digest, "size": l.data.len()}))
        .collect();
    serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.data.len()},
        "layers": layers
    })
    .to_string()
    .into_bytes()
}

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

struct RoundData {
    config: Blob,
    large: Vec<Blob>,
    small: Vec<Blob>,
    manifest: Vec<u8>,
}

/// Measures one round against one target: (push MB/s, pull MB/s, push blobs/s, pull blobs/s).
fn measure(t: &Target, round: usize, d: &RoundData) -> anyhow::Result<[f64; 4]> {
    let mut c = Conn::connect(&t.addr, t.auth.clone())?;
    let repo = format!("bench/large{round}");
    let mb = (LARGE_LAYERS * LARGE_LAYER_BYTES) as f64 / 1e6;

    let start = Instant::now();
    push_blob(&mut c, &repo, &d.config)?;
    for l in &d.large {
        push_blob(&mut c, &repo, l)?;
    }
    let r = c.request("PUT", &format!("/v2/{repo}/manifests/v1"), &[("Content-Type", OCI)], &d.manifest, true)?;
    if r.status != 201 {
        bail!("{}: manifest PUT answered {}: {}", t.name, r.status, String::from_utf8_lossy(&r.body));
    }
    let push_large = mb / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let r = c.request("GET", &format!("/v2/{repo}/manifests/v1"), &[("Accept", OCI)], b"", true)?;
    if r.status != 200 {
        bail!("{}: manifest GET answered {}", t.name, r.status);
    }
    pull_blob(&mut c, &repo, &d.config)?;
    for l in &d.large {
        pull_blob(&mut c, &repo, l)?;
    }
    let pull_large = mb / start.elapsed().as_secs_f64();

    let repo = format!("bench/small{round}");
    let start = Instant::now();
    for b in &d.small {
        push_blob(&mut c, &repo, b)?;
    }
    let push_small = SMALL_BLOBS as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for b in &d.small {
        pull_blob(&mut c, &repo, b)?;
    }
    let pull_small = SMALL_BLOBS as f64 / start.elapsed().as_secs_f64();
    Ok([push_large, pull_large, push_small, pull_small])
}

pub fn run(rounds: usize) -> anyhow::Result<()> {
    crate::test::ensure_tools(&[("docker-registry", "docker-registry")])?;
    let bin = build_berth()?;
    let data = tempfile::Builder::new().prefix("berth-bench").tempdir()?;
    let berth_process = BerthProcess::start(&bin, data.path(), &[]).map_err(|e| anyhow::anyhow!(e))?;
    let anchor_process = DockerRegistry::start().map_err(|e| anyhow::anyhow!(e))?;
    use base64::Engine;
    let berth = Target {
        name: "berth",
        pid: berth_process.child.id(),
        addr: berth_process.addr.clone(),
        auth: Some(base64::engine::general_purpose::STANDARD.encode(format!("bench:{}", berth_process.token))),
    };
    let anchor = Target { name: "docker-registry", pid: anchor_process.child.id(), addr: anchor_process.addr.clone(), auth: None };
    let mut figures = [
        Figure::new("push 256 MiB image", "MB/s"),
        Figure::new("pull 256 MiB image", "MB/s"),
        Figure::new("push 4 KiB blobs", "blobs/s"),
        Figure::new("pull 4 KiB blobs", "blobs/s"),
    ];
    for round in 0..rounds {
        let seed = 1000 * (round as u64 + 1) + rand::random::<u16>() as u64;
        let large: Vec<Blob> = (0..LARGE_LAYERS).map(|i| Blob::new(noise(seed + i as u64, LARGE_LAYER_BYTES))).collect();
        let small: Vec<Blob> = (0..SMALL_BLOBS).map(|i| Blob::new(noise(seed * 7919 + i as u64, SMALL_BLOB_BYTES))).collect();
        let config = Blob::new(format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"round\":{seed}}}").into_bytes());
        let manifest = manifest(&config, &large);
        let data = RoundData { config, large, small, manifest };
        let order: [&Target; 2] = if round % 2 == 0 { [&berth, &anchor] } else { [&anchor, &berth] };
        for t in order {
            let m = measure(t, round, &data)?;
            eprintln!(
                "round {}/{rounds} {:<16} push {:>7.1} MB/s  pull {:>7.1} MB/s  push {:>6.0} blobs/s  pull {:>6.0} blobs/s",
                round + 1,
                t.name,
                m[0],
                m[1],
                m[2],
                m[3]
            );
            for (f, v) in figures.iter_mut().zip(m) {
                if t.name == "berth" {
                    f.berth.push(v);
                } else {
                    f.anchor.push(v);
                }
            }
        }
    }
    let (rss_b, rss_a) = (peak_rss_kib(berth.pid), peak_rss_kib(anchor.pid));
    println!();
    print_table("docker-registry", &figures);
    println!(
        "{:<28} {:>14} {:>14} {:>8.2}",
        "peak RSS (MiB)",
        format!("{:.1}", rss_b as f64 / 1024.0),
        format!("{:.1}", rss_a as f64 / 1024.0),
        rss_b as f64 / rss_a.max(1) as f64
    );
    let json = serde_json::json!({
        "bench": "registry",
        "push_large_ratio": round2(figures[0].ratio()),
        "pull_large_ratio": round2(figures[1].ratio()),
        "push_small_ratio": round2(figures[2].ratio()),
        "pull_small_ratio": round2(figures[3].ratio()),
        "rss_ratio": round2(rss_b as f64 / rss_a.max(1) as f64),
    });
    println!("{json}");
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
