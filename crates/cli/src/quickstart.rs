//! `berth up`'s second half: once the server answers, build the demo app into an image, push it
//! to a repository whose tags are immutable except `latest`, create the `hello` service with an
//! HTTP health check, wait until it serves, and say how to reach it and what to try next.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::client::Client;
use crate::commands::push_image;
use crate::GlobalArgs;

const SERVICE: &str = "hello";
const REPOSITORY: &str = "hello";

/// Waits for the server behind `g`, then sets up the demo service from the `hello` binary.
pub fn quick_start(g: &GlobalArgs, hello: &Path) -> anyhow::Result<()> {
    let client = wait_for_server(g)?;
    if client.exists(&format!("/api/v1/services/{SERVICE}"))? {
        let mut svc = client.get(&format!("/api/v1/services/{SERVICE}"))?;
        if svc["status"] == "CREATE_FAILED" {
            eprintln!("the demo service failed before; deploying it again…");
            let op = client.send("POST", &format!("/api/v1/services/{SERVICE}/deployments"), &json!({}))?;
            let id = op["operation"]["id"].as_str().context("no operation in the answer")?.to_owned();
            crate::services::follow(&client, &id, true)?;
            svc = client.get(&format!("/api/v1/services/{SERVICE}"))?;
        }
        explain(&client, svc["url"].as_str().unwrap_or(""), svc["status"].as_str().unwrap_or(""));
        return Ok(());
    }
    if !client.exists(&format!("/api/v1/repositories/{REPOSITORY}"))? {
        client.send(
            "POST",
            "/api/v1/repositories",
            &json!({"name": REPOSITORY, "tag_mutability": "IMMUTABLE_WITH_EXCLUSION", "exclusions": ["latest"]}),
        )?;
    }
    let settings = berth_image::build::ImageSettings { env: vec!["HELLO_VERSION=v1".into()], port: Some(8080), ..Default::default() };
    let image = berth_image::build::build_from_binary(hello, false, &settings).context("building the demo image")?;
    let short = image.manifest.digest.hex().get(..12).unwrap_or_default().to_owned();
    push_image(&client, &image, &[(REPOSITORY.into(), format!("v1-{short}")), (REPOSITORY.into(), "latest".into())])?;
    let spec = json!({
        "name": SERVICE,
        "source": {"image": format!("{REPOSITORY}:latest"), "auto_deploy": true},
        "image_config": {"port": 8080},
        "instance": {"cpu": 256, "memory": 256},
        "health_check": {"protocol": "HTTP", "path": "/healthz", "interval": 2, "unhealthy_threshold": 3},
        "autoscaling": {"min_size": 1, "max_size": 3},
    });
    let op = client.send("POST", "/api/v1/services", &spec)?;
    let id = op["operation"]["id"].as_str().context("no operation in the answer")?.to_owned();
    eprintln!("creating service `{SERVICE}` ({id})…");
    let end = crate::services::follow(&client, &id, true)?;
    let svc = client.get(&format!("/api/v1/services/{SERVICE}"))?;
    if end["status"] != "SUCCEEDED" {
        anyhow::bail!("creating the demo service ended {}; see `berth service events {SERVICE}`", end["status"]);
    }
    explain(&client, svc["url"].as_str().unwrap_or(""), "RUNNING");
    Ok(())
}

fn wait_for_server(g: &GlobalArgs) -> anyhow::Result<Client> {
    let mut last = None;
    for _ in 0..200 {
        match Client::from_args(g).and_then(|c| c.get("/api/v1/services").map(|_| c)) {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")).context("the server did not come up"))
}

/// Saves a login for this server when there is none yet, so `berth` works from any directory.
fn remember(client: &Client) {
    let Some(token) = client.token() else { return };
    if crate::client::login_file().is_some_and(|f| f.exists()) {
        return;
    }
    match crate::commands::save_login(client.base(), token) {
        Ok(file) => println!("Saved a login for {} to {}: berth commands work from any directory.", client.base(), file.display()),
        Err(e) => eprintln!("note: could not save a login ({e:#}); run berth commands from this directory or pass --server and --token"),
    }
}

fn explain(client: &Client, url: &str, status: &str) {
    remember(client);
    let data = client.base().to_owned();
    println!();
    println!("The demo service `{SERVICE}` is {status}: {url}");
    println!();
    println!("Try it (the router's certificates come from berth's local CA):");
    println!("  berth ca export > berth-ca.pem");
    println!("  curl --cacert berth-ca.pem {url}/");
    println!();
    println!("Then:");
    println!("  berth service show {SERVICE}          status, serving revision, instances");
    println!("  berth service revisions {SERVICE}     every deployment: digest and tags");
    println!("  berth service logs {SERVICE} -f       the instances' logs");
    println!("  berth image build --binary ./app --port 8080 -t {REPOSITORY}:latest   pushes deploy automatically");
    println!("  berth service rollback {SERVICE} {SERVICE}-0001 --wait");
    println!("  berth service metrics {SERVICE}       requests, latency, CPU and memory");
    println!();
    println!("The web console: {data}/console (log in with the admin token, in .berth/admin-token)");
    println!();
    println!("The API is at {data}; press Ctrl-C to stop berth (instances keep running and are re-adopted).");
}
