//! `berth import apprunner` and `berth export apprunner`: moving a service from App Runner once,
//! through the same mapping the server's App Runner API uses (`berth_core::aws`), and writing a
//! berth service back as App Runner describes one.

use std::path::PathBuf;

use anyhow::{bail, Context};
use berth_core::aws::{self as map, Described, NoteKind, Resolve};
use berth_core::ServiceSpec;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{segment, Client};
use crate::output::{self, Format};
use crate::services::WaitArg;

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Create a berth service from the JSON of `aws apprunner describe-service`, reporting every
    /// field it mapped, changed or could not honour.
    ///
    /// Example: `aws apprunner describe-service --service-arn $ARN > web.json && berth import apprunner web.json --dry-run`
    Apprunner {
        /// The `describe-service` output (or its `Service` object); `-` reads standard input.
        file: PathBuf,
        /// The `describe-auto-scaling-configuration` output for the configuration the service
        /// names (default: App Runner's default, 100 requests per instance, 1 to 25 instances).
        #[arg(long)]
        autoscaling: Option<PathBuf>,
        /// The berth service's name (default: the App Runner service's).
        #[arg(long)]
        name: Option<String>,
        /// Print the report and the spec; create nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Write a service as `aws apprunner describe-service` shows one (`{"Service": …}`).
    ///
    /// Example: `berth export apprunner web > web.json`
    Apprunner {
        name: String,
        /// The region its ARNs name.
        #[arg(long, default_value = "us-east-1")]
        region: String,
    },
}

fn read_json(path: &PathBuf) -> anyhow::Result<Value> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The host berth's registry is reached at: the API's.
fn registry_host(c: &Client) -> String {
    let base = c.base();
    base.split_once("://").map_or(base, |(_, rest)| rest).trim_end_matches('/').to_owned()
}

pub fn import(c: &Client, fmt: Format, cmd: ImportCommand) -> anyhow::Result<()> {
    let ImportCommand::Apprunner { file, autoscaling, name, dry_run, wait } = cmd;
    let doc = read_json(&file)?;
    let service = doc.get("Service").unwrap_or(&doc);
    let name = match name.as_deref().or_else(|| service["ServiceName"].as_str()) {
        Some(n) => n.to_owned(),
        None => bail!("{} has no ServiceName; is it the output of `aws apprunner describe-service`? (or pass --name)", file.display()),
    };
    let mut spec: ServiceSpec = serde_json::from_value(json!({"name": name, "source": {"image": "unset:unset"}}))?;
    let hosts = [registry_host(c)];
    // A VPC connector stands for the berth network of its name, which must exist.
    let connector = |arn: &str| arn.split('/').nth(1).map(|n| vec![n.to_owned()]);
    let mut notes = map::apply(&mut spec, service, &Resolve { registry_hosts: &hosts, connector_networks: &connector })
        .map_err(|problems| anyhow::anyhow!("cannot import {}:\n  {}", file.display(), problems.join("\n  ")))?;
    if spec.source.image == "unset:unset" {
        bail!("{} has no SourceConfiguration.ImageRepository.ImageIdentifier", file.display());
    }
    let summary = &service["AutoScalingConfigurationSummary"];
    match autoscaling {
        Some(path) => {
            let v = read_json(&path)?;
            let asc = v.get("AutoScalingConfiguration").unwrap_or(&v);
            let num =
                |k: &str| asc[k].as_u64().and_then(|n| u32::try_from(n).ok()).with_context(|| format!("{} has no {k}", path.display()));
            notes.push(map::apply_autoscaling(&mut spec, num("MaxConcurrency")?, num("MinSize")?, num("MaxSize")?));
        }
        None => {
            let named = summary["AutoScalingConfigurationName"].as_str().unwrap_or(map::DEFAULT_AUTOSCALING_NAME);
            let kind = if named == map::DEFAULT_AUTOSCALING_NAME { NoteKind::Mapped } else { NoteKind::Changed };
            let text = if kind == NoteKind::Mapped {
                "App Runner's default: autoscaling max_concurrency 100, min_size 1, max_size 25".to_owned()
            } else {
                format!("`{named}` was not given (pass --autoscaling with `aws apprunner describe-auto-scaling-configuration` output); berth's defaults 100/1/25 apply")
            };
            notes.push(map::Note { field: "AutoScalingConfigurationSummary".into(), kind, text });
        }
    }
    for n in notes.iter().filter(|n| n.field.ends_with("VpcConnectorArn")) {
        eprintln!("note: {}: create the berth network it names first (`berth network create …`, docs/networking.md)", n.field);
    }
    spec.validate().map_err(|e| anyhow::anyhow!("the imported spec is not valid: {e}"))?;
    let report: Vec<Value> = notes.iter().map(|n| json!({"field": n.field, "what": n.kind.as_str(), "result": n.text})).collect();
    match fmt {
        Format::Json if dry_run => println!("{}", serde_json::to_string_pretty(&json!({"report": report, "spec": spec}))?),
        Format::Json => eprintln!("{}", serde_json::to_string_pretty(&json!({ "report": report }))?),
        Format::Table => {
            output::list(Format::Table, &Value::Null, &report, &[("FIELD", "field"), ("WHAT", "what"), ("RESULT", "result")]);
            if dry_run {
                println!("{}", serde_json::to_string_pretty(&spec)?);
            }
        }
    }
    if dry_run {
        return Ok(());
    }
    let body = serde_json::to_value(&spec)?;
    let v = c.send("POST", "/api/v1/services", &body)?;
    let url = c.get(&format!("/api/v1/services/{}", segment(&name))).ok().and_then(|s| s["url"].as_str().map(str::to_owned));
    crate::services::started(c, fmt, &v, &wait, url.as_deref())
}

pub fn export(c: &Client, cmd: ExportCommand) -> anyhow::Result<()> {
    let ExportCommand::Apprunner { name, region } = cmd;
    let v = c.get(&format!("/api/v1/services/{}", segment(&name)))?;
    let spec: ServiceSpec = serde_json::from_value(v["spec"].clone()).context("the server sent a service without its spec")?;
    let created_at = v["created_at"].as_i64().unwrap_or(0);
    let arn = |resource: String| map::arn("apprunner", &region, &resource);
    let mut secrets = std::collections::BTreeMap::new();
    for reference in spec.image_config.secret_env.values() {
        let secret = reference.split_once('#').map_or(reference.as_str(), |(n, _)| n);
        let info = c.get(&format!("/api/v1/secrets/{}", segment(secret)))?;
        secrets.insert(secret.to_owned(), map::secret_arn(&region, secret, info["created_at"].as_i64().unwrap_or(0)));
    }
    let secret_arn = |n: &str| secrets.get(n).cloned().unwrap_or_default();
    let a = &spec.autoscaling;
    let (asc_name, asc_id) = if (a.max_concurrency, a.min_size, a.max_size) == (100, 1, 25) {
        (map::DEFAULT_AUTOSCALING_NAME.to_owned(), map::DEFAULT_AUTOSCALING_ID.to_owned())
    } else {
        (name.clone(), map::service_id(&name, created_at))
    };
    let autoscaling = json!({
        "AutoScalingConfigurationArn": arn(format!("autoscalingconfiguration/{asc_name}/1/{asc_id}")),
        "AutoScalingConfigurationName": asc_name,
        "AutoScalingConfigurationRevision": 1,
    });
    let url = v["url"].as_str().unwrap_or_default();
    let service_id = map::service_id(&name, created_at);
    let described = map::service_json(&Described {
        spec: &spec,
        arn: arn(format!("service/{name}/{service_id}")),
        service_id,
        url: url.split_once("://").map_or(url, |(_, h)| h).to_owned(),
        status: v["status"].as_str().unwrap_or("RUNNING"),
        created_at,
        updated_at: created_at,
        image_identifier: format!("{}/{}", registry_host(c), spec.source.image),
        autoscaling,
        vpc_connector_arn: spec.network.networks.first().map(|n| arn(format!("vpcconnector/{n}/1/{}", map::service_id(n, 0)))),
        secret_arn: &secret_arn,
    });
    println!("{}", serde_json::to_string_pretty(&json!({ "Service": described }))?);
    if a.min_size == 0 {
        eprintln!("note: min_size 0 (scale to zero) has no App Runner equivalent; App Runner keeps at least 1 instance");
    }
    if spec.network.networks.len() > 1 {
        eprintln!("note: the service is on {} networks; App Runner takes one VPC connector", spec.network.networks.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_host_is_the_apis() {
        assert_eq!(registry_host(&Client::new("https://berth.example.com:8443/", None)), "berth.example.com:8443");
        assert_eq!(registry_host(&Client::new("http://127.0.0.1:7070", None)), "127.0.0.1:7070");
    }
}
