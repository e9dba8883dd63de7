//! `cargo xtask bench aws` (as root): the AWS-compatible APIs as a pipeline meets them.
//!
//! - The aws CLI flow, end to end with real containers, each round: push an image with podman
//!   (logged in by `aws ecr get-login-password`), `aws apprunner create-service` with an App
//!   Runner document, `describe-service` until RUNNING (create → RUNNING) and the URL answering
//!   (create → URL answers), a push of the next version (push → the new version serving, by
//!   auto-deploy), `start-deployment`, pause, resume and delete. A step that fails counts in
//!   `cli_flow_failures`. The anchor is App Runner's published behaviour (minutes to create or
//!   deploy); it cannot run here, so its figures are quoted, not measured.
//! - SigV4 verification, as the server does it per request (parse, canonical request, HMAC
//!   with the cached signing key, constant-time compare), beside botocore signing the same
//!   request: the client's own cost of the algorithm.
//! - The differential corpus (over 200 ECR and Secrets Manager calls) against berth and moto's
//!   server: mismatches (the target is none), moto's known departures from AWS, and each side's
//!   median latency per call.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_testkit::aws::{hello_image, podman_ok, AwsCli, Moto, PodmanImages, Verdict};
use serde_json::{json, Value};

use super::http::Conn;
use super::{build_berth, median};

const BRIDGE: &str = "bbaws0";
const CIDR: &str = "10.245.0.0/24";
const CGROUP_PARENT: &str = "berth-bench-aws";
const REGION: &str = "eu-west-1";

/// App Runner's figures (SYSTEM.md): minutes to create a service or deploy an image.
const APP_RUNNER_CREATE_MS: f64 = 300_000.0;
const APP_RUNNER_DEPLOY_MS: f64 = 300_000.0;

fn cleanup_host() {
    berth_testkit::cleanup_runtime_host(BRIDGE, CIDR, CGROUP_PARENT);
}

pub fn run(rounds: usize) -> anyhow::Result<()> {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
        bail!("the aws benchmark runs containers: run it as root");
    }
    let bin = build_berth()?;
    let tmp = tempfile::Builder::new().prefix("berth-bench-aws").tempdir()?;
    let hello = tmp.path().join("hello");
    super::compile_hello(&hello, true)?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| crate::workspace_root().join("target"));
    let venv = target.join("moto-venv");
    cleanup_host();
    let result = measure(&bin, tmp.path(), &hello, &venv, rounds);
    cleanup_host();
    result
}

/// The timings of one round of the CLI flow, in milliseconds.
struct Flow {
    create_to_running: f64,
    create_to_url: f64,
    push_to_serving: f64,
}

fn measure(bin: &Path, dir: &Path, hello: &Path, venv: &Path, rounds: usize) -> anyhow::Result<()> {
    let data = dir.join("data");
    let server = super::server_with_runtime(bin, &data, BRIDGE, CIDR, CGROUP_PARENT)?;
    let out = Command::new(bin)
        .arg("--data-dir")
        .arg(&data)
        .args(["-o", "json", "token", "create", "bench", "--scope", "admin", "--aws"])
        .output()?;
    if !out.status.success() {
        bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
    }
    let token: Value = serde_json::from_slice(&out.stdout)?;
    let (key_id, secret) =
        (token["aws_access_key_id"].as_str().unwrap_or_default(), token["aws_secret_access_key"].as_str().unwrap_or_default());
    let cli = AwsCli::new(&dir.join("aws-home"), &format!("http://{}", server.addr), key_id, secret, REGION)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let routers = std::fs::read_to_string(data.join("router-address"))?;
    let router = routers.lines().find_map(|l| l.strip_prefix("http://")).context("no router address")?.to_owned();

    let images = PodmanImages(vec!["localhost/berth-bench-aws:v1".into(), "localhost/berth-bench-aws:v2".into()]);
    for (image, version) in images.0.iter().zip(["v1", "v2"]) {
        hello_image(dir, hello, image, version).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // The corpus first, on the fresh server: its listings see only what it made.
    let moto = Moto::start(venv).map_err(|e| anyhow::anyhow!("{e}"))?;
    let diff = differential(&server.addr, &moto.addr, key_id, secret)?;
    drop(moto);
    let setup = Setup { cli: &cli, dir, registry: &server.addr, router: &router, images: &images };
    setup.login()?;

    let (mut flows, mut failures) = (Vec::new(), 0);
    for round in 1..=rounds {
        match setup.flow(round) {
            Ok(f) => {
                eprintln!(
                    "round {round}/{rounds}: create → RUNNING {:.0} ms, create → URL answers {:.0} ms, push → serving {:.0} ms",
                    f.create_to_running, f.create_to_url, f.push_to_serving
                );
                flows.push(f);
            }
            Err(e) => {
                failures += 1;
                eprintln!("round {round}/{rounds}: the CLI flow failed: {e:#}");
            }
        }
    }
    let (verify_us, botocore_us) = sigv4_costs(key_id, secret, venv)?;
    let services: Vec<String> = (1..=rounds).map(|r| format!("bench-aws-{r}")).collect();
    let api = super::http::Api::new(&server.addr, &server.token);
    super::delete_services(&api, &services.iter().map(String::as_str).collect::<Vec<_>>());
    drop(server);

    let pick = |f: fn(&Flow) -> f64| median(flows.iter().map(f).collect());
    let (running, url, serving) = (pick(|f| f.create_to_running), pick(|f| f.create_to_url), pick(|f| f.push_to_serving));
    println!();
    println!("{:<44} {:>12} {:>18} {:>10}", "figure (medians)", "berth", "anchor", "ratio");
    println!(
        "{:<44} {:>12.0} {:>18} {:>10.4}",
        "create-service → RUNNING (ms)",
        running,
        "App Runner 300000",
        running / APP_RUNNER_CREATE_MS
    );
    println!("{:<44} {:>12.0} {:>18} {:>10}", "create-service → URL answers (ms)", url, "-", "-");
    println!(
        "{:<44} {:>12.0} {:>18} {:>10.4}",
        "push → new version serving (ms)",
        serving,
        "App Runner 300000",
        serving / APP_RUNNER_DEPLOY_MS
    );
    println!("{:<44} {:>12} {:>18} {:>10}", "CLI flow rounds failed", format!("{failures} of {rounds}"), "-", "-");
    println!(
        "{:<44} {:>12.2} {:>18.2} {:>10.3}",
        "SigV4: berth verifies / botocore signs (µs)",
        verify_us,
        botocore_us,
        verify_us / botocore_us
    );
    println!(
        "{:<44} {:>12.2} {:>18.2} {:>10.3}",
        "corpus call latency p50: berth / moto (ms)",
        diff.berth_ms,
        diff.moto_ms,
        diff.berth_ms / diff.moto_ms
    );
    println!(
        "{:<44} {:>12} {:>18} {:>10}",
        "corpus: calls / mismatches / moto departs",
        format!("{} / {} / {}", diff.calls, diff.mismatches, diff.deviations),
        "-",
        "-"
    );
    println!("(App Runner's figures are its published behaviour, quoted, not measured here.)");
    let json = json!({
        "bench": "aws",
        "create_to_running_ms": running.round(),
        "push_to_serving_ms": serving.round(),
        "sigv4_verify_us": (verify_us * 100.0).round() / 100.0,
        "moto_mismatches": diff.mismatches,
        "cli_flow_failures": failures,
    });
    println!("{json}");
    Ok(())
}

struct Setup<'a> {
    cli: &'a AwsCli,
    dir: &'a Path,
    registry: &'a str,
    router: &'a str,
    images: &'a PodmanImages,
}

impl Setup<'_> {
    fn authfile(&self) -> String {
        format!("--authfile={}", self.dir.join("podman-auth.json").display())
    }

    /// The pipeline's set-up: a repository and podman logged in with the ECR password.
    fn login(&self) -> anyhow::Result<()> {
        self.ok(&["ecr", "create-repository", "--repository-name", "web"])?;
        let password = self.cli.run(&["ecr", "get-login-password"]).map_err(|e| anyhow::anyhow!("{e}"))?;
        let password = String::from_utf8(password.stdout)?;
        podman_ok(
            &["login", &self.authfile(), "--tls-verify=false", "--username", "AWS", "--password-stdin", self.registry],
            Some(password.trim()),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<Value> {
        self.cli.ok(args).map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn push(&self, image: usize, tag: &str) -> anyhow::Result<()> {
        let to = format!("{}/web:{tag}", self.registry);
        podman_ok(&["push", &self.authfile(), "--tls-verify=false", &self.images.0[image], &to], None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    /// `describe-service` until `status`; the described service.
    fn wait_status(&self, arn: &str, status: &str) -> anyhow::Result<Value> {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.ok(&["apprunner", "describe-service", "--service-arn", arn])?;
            if v["Service"]["Status"] == status {
                return Ok(v);
            }
            if Instant::now() > end {
                bail!("the service is {}, not {status}, after 120 s", v["Service"]["Status"]);
            }
        }
    }

    /// Waits until the service at `host` answers with `version`; when it first did.
    fn wait_served(&self, host: &str, version: &str) -> anyhow::Result<Instant> {
        let end = Instant::now() + Duration::from_secs(120);
        let mut conn: Option<Conn> = None;
        loop {
            if conn.is_none() {
                conn = Conn::connect_as(self.router, host, None).ok();
            }
            let answer = conn.as_mut().map(|c| c.request("GET", "/", &[], b"", true));
            match answer {
                Some(Ok(r)) if r.status == 200 && String::from_utf8_lossy(&r.body).starts_with(&format!("hello from {version}")) => {
                    return Ok(Instant::now())
                }
                Some(Ok(_)) => {}
                _ => conn = None,
            }
            if Instant::now() > end {
                bail!("{host} never answered with {version}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn flow(&self, round: usize) -> anyhow::Result<Flow> {
        let tag = format!("r{round}");
        self.push(0, &tag)?;
        let name = format!("bench-aws-{round}");
        let doc = json!({
            "ServiceName": name,
            "SourceConfiguration": {
                "ImageRepository": {
                    "ImageIdentifier": format!("123456789012.dkr.ecr.{REGION}.amazonaws.com/web:{tag}"),
                    "ImageRepositoryType": "ECR",
                    "ImageConfiguration": {"Port": "8080"},
                },
                "AutoDeploymentsEnabled": true,
            },
            "InstanceConfiguration": {"Cpu": "0.25 vCPU", "Memory": "0.5 GB"},
            "HealthCheckConfiguration": {"Protocol": "HTTP", "Path": "/healthz", "Interval": 1},
        });
        let file = self.dir.join(format!("{name}.json"));
        std::fs::write(&file, doc.to_string())?;
        let input = format!("file://{}", file.display());
        let created_at = Instant::now();
        let created = self.ok(&["apprunner", "create-service", "--cli-input-json", &input])?;
        let arn = created["Service"]["ServiceArn"].as_str().context("create-service answered without a ServiceArn")?.to_owned();
        let running = self.wait_status(&arn, "RUNNING")?;
        let create_to_running = created_at.elapsed().as_secs_f64() * 1000.0;
        let url = running["Service"]["ServiceUrl"].as_str().unwrap_or_default().to_owned();
        let host = url.split(':').next().unwrap_or_default().to_owned();
        let create_to_url = self.wait_served(&host, "v1")?.duration_since(created_at).as_secs_f64() * 1000.0;

        // The next version, deployed by the push alone.
        self.push(1, &tag)?;
        let pushed = Instant::now();
        let push_to_serving = self.wait_served(&host, "v2")?.duration_since(pushed).as_secs_f64() * 1000.0;
        self.wait_status(&arn, "RUNNING")?;

        let started = self.ok(&["apprunner", "start-deployment", "--service-arn", &arn])?;
        let op = started["OperationId"].as_str().context("start-deployment answered without an OperationId")?.to_owned();
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let ops = self.ok(&["apprunner", "list-operations", "--service-arn", &arn])?;
            let first = &ops["OperationSummaryList"][0];
            if first["Id"] == op.as_str() && first["Status"] == "SUCCEEDED" {
                break;
            }
            if Instant::now() > end || first["Status"] == "FAILED" {
                bail!("start-deployment did not succeed: {ops}");
            }
        }
        self.ok(&["apprunner", "pause-service", "--service-arn", &arn])?;
        self.wait_status(&arn, "PAUSED")?;
        self.ok(&["apprunner", "resume-service", "--service-arn", &arn])?;
        self.wait_status(&arn, "RUNNING")?;
        self.wait_served(&host, "v2")?;
        self.ok(&["apprunner", "delete-service", "--service-arn", &arn])?;
        let end = Instant::now() + Duration::from_secs(120);
        while !self
            .cli
            .error(&["apprunner", "describe-service", "--service-arn", &arn])
            .is_ok_and(|e| e.contains("ResourceNotFoundException"))
        {
            if Instant::now() > end {
                bail!("the deleted service is still described after 120 s");
            }
        }
        Ok(Flow { create_to_running, create_to_url, push_to_serving })
    }
}

/// A request signed as an SDK signs it.
struct SignedCall {
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
    host: String,
}

impl SignedCall {
    fn new(host: &str, key_id: &str, secret: &str, target: &str, service: &str, body: &str) -> anyhow::Result<SignedCall> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
        let t = time_text(now);
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("content-type", "application/x-amz-json-1.1".parse()?);
        headers.insert("x-amz-date", t.parse()?);
        headers.insert("x-amz-target", target.parse()?);
        let req = berth_api::aws::sigv4::Signed { method: "POST", path: "/", query: "", headers: &headers, host, body: body.as_bytes() };
        let auth = berth_api::aws::sigv4::sign(key_id, secret, REGION, service, &req);
        headers.insert("authorization", auth.parse()?);
        Ok(SignedCall { headers, body: body.as_bytes().to_vec(), host: host.to_owned() })
    }

    fn send(&self, addr: &str) -> anyhow::Result<(u16, Value)> {
        let mut conn = Conn::connect_as(addr, &self.host, None)?;
        let headers: Vec<(&str, &str)> = self.headers.iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))).collect();
        let r = conn.request("POST", "/", &headers, &self.body, true)?;
        let v = if r.body.is_empty() { json!({}) } else { serde_json::from_slice(&r.body).unwrap_or(Value::Null) };
        Ok((r.status, v))
    }
}

/// SigV4's `YYYYMMDDTHHMMSSZ`.
fn time_text(unix: i64) -> String {
    berth_core::calendar::utc(unix).replace(['-', ':'], "").replace(' ', "T")
}

/// Microseconds per request: berth verifying a signature, botocore making the same one.
fn sigv4_costs(key_id: &str, secret: &str, venv: &Path) -> anyhow::Result<(f64, f64)> {
    let body = r#"{"repositoryNames":["web"],"maxResults":100}"#;
    let call = SignedCall::new("127.0.0.1:8443", key_id, secret, "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories", "ecr", body)?;
    let value = call.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let verifier = berth_api::aws::sigv4::Verifier::default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let req = berth_api::aws::sigv4::Signed {
        method: "POST",
        path: "/",
        query: "",
        headers: &call.headers,
        host: &call.host,
        body: body.as_bytes(),
    };
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let n = 20_000;
        let start = Instant::now();
        for _ in 0..n {
            let auth = berth_api::aws::sigv4::Authorization::parse(std::hint::black_box(&value)).map_err(|r| anyhow::anyhow!(r.message))?;
            verifier.verify(&auth, &req, secret, now).map_err(|r| anyhow::anyhow!(r.message))?;
        }
        rounds.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    let verify = median(rounds);
    // botocore is in the moto environment, made by the time this runs.
    let script = format!(
        r#"
import time
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
creds = Credentials({key_id:?}, {secret:?})
def one():
    r = AWSRequest(method="POST", url="http://127.0.0.1:8443/", data={body:?}.encode(),
                   headers={{"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories"}})
    SigV4Auth(creds, "ecr", "{REGION}").add_auth(r)
rounds = []
for _ in range(5):
    n = 3000
    t = time.perf_counter()
    for _ in range(n):
        one()
    rounds.append((time.perf_counter() - t) / n * 1e6)
rounds.sort()
print(rounds[2])
"#
    );
    let out = Command::new(venv.join("bin/python")).arg("-c").arg(&script).output()?;
    if !out.status.success() {
        bail!("botocore signing: {}", String::from_utf8_lossy(&out.stderr));
    }
    let botocore: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("botocore's timing")?;
    Ok((verify, botocore))
}

struct Differential {
    calls: usize,
    mismatches: usize,
    deviations: usize,
    berth_ms: f64,
    moto_ms: f64,
}

/// The corpus against both servers: the mismatches, and each side's median latency per call.
fn differential(berth: &str, moto: &str, key_id: &str, secret: &str) -> anyhow::Result<Differential> {
    let corpus = berth_testkit::aws::corpus(REGION);
    let (mut mismatches, mut deviations, mut ours, mut theirs) = (0, 0, Vec::new(), Vec::new());
    for call in &corpus {
        let ask = |addr: &str, account: &str, times: &mut Vec<f64>| -> anyhow::Result<(u16, Value)> {
            let signed = SignedCall::new(addr, key_id, secret, &call.target, call.service, &call.body.replace("{account}", account))?;
            let start = Instant::now();
            let answer = signed.send(addr)?;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            Ok(answer)
        };
        let (a, b) = (ask(berth, berth_core::aws::ACCOUNT, &mut ours)?, ask(moto, "123456789012", &mut theirs)?);
        match berth_testkit::aws::compare(call, &a, &b) {
            Verdict::Same => {}
            Verdict::MotoDeviates(_) => deviations += 1,
            Verdict::Differs(d) => {
                mismatches += 1;
                eprintln!("differs from moto: {} {}: {d}", call.target, call.body);
            }
        }
    }
    Ok(Differential { calls: corpus.len(), mismatches, deviations, berth_ms: median(ours), moto_ms: median(theirs) })
}
