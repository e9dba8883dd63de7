//! The service resource: its spec (App Runner's fields, meanings, defaults and ranges), its
//! validation, and the status vocabularies of services and operations.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::name::{Reference, RepositoryName};
use crate::network::ServiceNetwork;

/// Everything a user declares about a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub source: Source,
    #[serde(default)]
    pub image_config: ImageConfig,
    #[serde(default)]
    pub instance: InstanceConfig,
    #[serde(default)]
    pub health_check: HealthCheck,
    #[serde(default)]
    pub autoscaling: Autoscaling,
    #[serde(default)]
    pub traffic: Traffic,
    #[serde(default)]
    pub network: ServiceNetwork,
}

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// `repo:tag` or `repo@sha256:…`, in berth's registry.
    pub image: String,
    /// Deploy every new digest pushed to the tag. Default: on for a tag, off for a digest.
    #[serde(default)]
    pub auto_deploy: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// The port the app listens on; `PORT` is set to it. Default 8080.
    pub port: u16,
    pub env: BTreeMap<String, String>,
    /// Replaces the image's entrypoint and command: words split on spaces.
    pub start_command: Option<String>,
    /// Run the app under berth's init as PID 1: signals forwarded to it, orphans reaped (an app
    /// that is PID 1 itself ignores SIGTERM unless it handles it). Default false.
    pub init: bool,
    /// Environment variables from secrets: name → `secret` or `secret#key` (a key of a JSON
    /// value). Each revision pins the secrets' versions that were CURRENT when it was made;
    /// instances get those values when they start.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// Files from secrets: an absolute path in the instance → `secret` or `secret#key`. Each
    /// directory of them is a tmpfs of its own, read-only, each file `0400` owned by the app's
    /// user; the files follow the secret's CURRENT version in place, with no restart.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_files: BTreeMap<String, String>,
}

/// A secret file's path split into its directory and name, or why it cannot be one: absolute,
/// plain components, not in the root directory nor under a directory the runtime provides.
pub fn secret_file_path(path: &str) -> Result<(&str, &str), &'static str> {
    let (dir, name) = path.rsplit_once('/').ok_or("use an absolute path such as /run/secrets/db-password")?;
    if !path.starts_with('/') {
        return Err("use an absolute path such as /run/secrets/db-password");
    }
    if dir.is_empty() {
        return Err("a file needs a directory of its own, such as /run/secrets");
    }
    if path.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with("..")) || path.contains('\0') {
        return Err("use plain path components (no empty, `.` or `..` ones)");
    }
    if ["/proc", "/sys", "/dev", "/etc", "/tmp"].iter().any(|d| dir == *d || dir.starts_with(&format!("{d}/"))) {
        return Err("not under /proc, /sys, /dev, /etc or /tmp, which the runtime provides");
    }
    Ok((dir, name))
}

/// The secret a reference (`name` or `name#key`) names, if it is well formed.
pub fn secret_name(reference: &str) -> Option<&str> {
    let (name, key) = match reference.split_once('#') {
        Some((n, k)) => (n, Some(k)),
        None => (reference, None),
    };
    let ok = (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
        && key.is_none_or(|k| !k.is_empty());
    ok.then_some(name)
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            port: 8080,
            env: BTreeMap::new(),
            start_command: None,
            init: false,
            secret_env: BTreeMap::new(),
            secret_files: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceConfig {
    /// CPU units, 1024 = one vCPU: 256, 512, 1024 (default), 2048 or 4096 — App Runner's sizes.
    pub cpu: u32,
    /// Memory in MB: 128 to 12288; default 2048.
    pub memory: u32,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig { cpu: 1024, memory: 2048 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthProtocol {
    Tcp,
    Http,
}

impl HealthProtocol {
    /// The protocol's name as App Runner and the spec write it.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthProtocol::Tcp => "TCP",
            HealthProtocol::Http => "HTTP",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    pub protocol: HealthProtocol,
    /// For HTTP: the path answered with 2xx or 3xx when healthy.
    pub path: String,
    /// Seconds between checks, 1–20; default 5.
    pub interval: u32,
    /// Seconds to wait for an answer, 1–20; default 2.
    pub timeout: u32,
    /// Consecutive passes before an instance gets traffic, 1–20; default 1.
    pub healthy_threshold: u32,
    /// Consecutive failures before it is replaced, 1–20; default 5.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            protocol: HealthProtocol::Tcp,
            path: "/".into(),
            interval: 5,
            timeout: 2,
            healthy_threshold: 1,
            unhealthy_threshold: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Autoscaling {
    /// Requests one instance works on at once, 1–1000; default 100.
    pub max_concurrency: u32,
    /// 0 scales to zero when idle; default 1.
    pub min_size: u32,
    /// Up to 25; default 25.
    pub max_size: u32,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Autoscaling { max_concurrency: 100, min_size: 1, max_size: 25 }
    }
}

/// How the router treats the service's requests (beyond App Runner: it has a fixed 120 s).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    /// Seconds a request may take in all, 1–3600; default 120.
    pub request_timeout: u32,
    /// Largest request body in MB, 1–1024; default 64.
    pub max_body_mb: u32,
    /// Speak HTTP/2 without TLS (h2c) to the instances, as gRPC servers need.
    pub h2c: bool,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic { request_timeout: 120, max_body_mb: 64, h2c: false }
    }
}

/// What is wrong with a spec: every problem, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service spec: {}", .0.join("; "))]
pub struct SpecError(pub Vec<String>);

/// An image source, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    pub repository: RepositoryName,
    pub reference: Reference,
}

impl ImageSource {
    pub fn parse(image: &str) -> Result<ImageSource, String> {
        let (repo, reference) = match image.split_once('@') {
            Some((r, d)) => (r, d.to_owned()),
            None => match image.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t.to_owned()),
                _ => return Err(format!("source.image `{image}` needs a tag or a digest: `repo:tag` or `repo@sha256:…`")),
            },
        };
        let repository: RepositoryName = repo.parse().map_err(|e| format!("source.image `{image}`: {e}"))?;
        let reference: Reference = reference.parse().map_err(|e| format!("source.image `{image}`: {e}"))?;
        Ok(ImageSource { repository, reference })
    }

    pub fn tag(&self) -> Option<&str> {
        match &self.reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        }
    }
}

fn in_range(errors: &mut Vec<String>, field: &str, value: u32, lo: u32, hi: u32, unit: &str) {
    if !(lo..=hi).contains(&value) {
        errors.push(format!("{field} must be {lo}–{hi}{unit} (got {value})"));
    }
}

/// A service name: 4–40 letters, digits, `-` and `_`, starting with a letter or digit and not
/// ending with `-` or `_`.
pub fn is_service_name(n: &str) -> bool {
    (4..=40).contains(&n.len())
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !n.ends_with(['-', '_'])
}

/// The DNS label a service name is served under: lowercase, `_` as `-`.
pub fn host_label(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

impl ServiceSpec {
    /// Whether pushes to the source tag deploy automatically.
    pub fn auto_deploy(&self) -> bool {
        self.source.auto_deploy.unwrap_or_else(|| ImageSource::parse(&self.source.image).is_ok_and(|s| s.tag().is_some()))
    }

    /// Checks every field against App Runner's ranges, collecting all problems.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut e = Vec::new();
        let n = &self.name;
        if !is_service_name(n) {
            e.push(format!(
                "name `{n}` must be 4–40 characters of letters, digits, `-` and `_`, starting with a letter or digit and not ending with `-` or `_`"
            ));
        }
        match ImageSource::parse(&self.source.image) {
            Ok(src) => {
                if src.tag().is_none() && self.source.auto_deploy == Some(true) {
                    e.push("source.auto_deploy needs a tag to watch; a digest never changes".into());
                }
            }
            Err(msg) => e.push(msg),
        }
        let ic = &self.image_config;
        if ic.port == 0 {
            e.push("image_config.port must be 1–65535".into());
        }
        for (field, k) in ic.env.keys().map(|k| ("env", k)).chain(ic.secret_env.keys().map(|k| ("secret_env", k))) {
            let valid = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !k.as_bytes()[0].is_ascii_digit();
            if !valid {
                e.push(format!("image_config.{field}: `{k}` is not a variable name (letters, digits, `_`, not starting with a digit)"));
            } else if k == "PORT" || k.starts_with("BERTH_") {
                e.push(format!("image_config.{field}: `{k}` is set by berth (PORT comes from image_config.port)"));
            }
        }
        for (path, reference) in &ic.secret_files {
            if let Err(why) = secret_file_path(path) {
                e.push(format!("image_config.secret_files: `{path}`: {why}"));
            }
            if secret_name(reference).is_none() {
                e.push(format!(
                    "image_config.secret_files: `{path}={reference}`: a secret reference is `name` or `name#key` (a name is 1–128 letters, digits and `/_+=.@-`)"
                ));
            }
        }
        for (k, reference) in &ic.secret_env {
            if ic.env.contains_key(k) {
                e.push(format!("image_config.secret_env: `{k}` is also in image_config.env; set it in one of them"));
            }
            if secret_name(reference).is_none() {
                e.push(format!(
                    "image_config.secret_env: `{k}={reference}`: a secret reference is `name` or `name#key` (a name is 1–128 letters, digits and `/_+=.@-`)"
                ));
            }
        }
        if ic.start_command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            e.push("image_config.start_command is empty; leave it out to use the image's".into());
        }
        if ![256, 512, 1024, 2048, 4096].contains(&self.instance.cpu) {
            e.push(format!("instance.cpu must be 256, 512, 1024, 2048 or 4096 (CPU units, 1024 = one vCPU; got {})", self.instance.cpu));
        }
        in_range(&mut e, "instance.memory", self.instance.memory, 128, 12288, " MB");
        let hc = &self.health_check;
        in_range(&mut e, "health_check.interval", hc.interval, 1, 20, " s");
        in_range(&mut e, "health_check.timeout", hc.timeout, 1, 20, " s");
        in_range(&mut e, "health_check.healthy_threshold", hc.healthy_threshold, 1, 20, "");
        in_range(&mut e, "health_check.unhealthy_threshold", hc.unhealthy_threshold, 1, 20, "");
        if hc.protocol == HealthProtocol::Http && !hc.path.starts_with('/') {
            e.push(format!("health_check.path `{}` must start with `/`", hc.path));
        }
        let a = &self.autoscaling;
        in_range(&mut e, "autoscaling.max_concurrency", a.max_concurrency, 1, 1000, "");
        in_range(&mut e, "autoscaling.max_size", a.max_size, 1, 25, "");
        if a.min_size > a.max_size {
            e.push(format!("autoscaling.min_size ({}) must not exceed autoscaling.max_size ({})", a.min_size, a.max_size));
        }
        in_range(&mut e, "traffic.request_timeout", self.traffic.request_timeout, 1, 3600, " s");
        in_range(&mut e, "traffic.max_body_mb", self.traffic.max_body_mb, 1, 1024, " MB");
        self.network.check(&mut e);
        if e.is_empty() {
            Ok(())
        } else {
            Err(SpecError(e))
        }
    }
}

macro_rules! status_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant,)*
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($name::$variant => $text,)* })
            }
        }
    };
}

status_enum!(
    /// A service's status, as App Runner names them.
    ServiceStatus {
        CreateFailed = "CREATE_FAILED",
        Running = "RUNNING",
        OperationInProgress = "OPERATION_IN_PROGRESS",
        Paused = "PAUSED",
        Deleted = "DELETED",
        DeleteFailed = "DELETE_FAILED",
    }
);

status_enum!(
    OperationType {
        CreateService = "CREATE_SERVICE",
        UpdateService = "UPDATE_SERVICE",
        StartDeployment = "START_DEPLOYMENT",
        PauseService = "PAUSE_SERVICE",
        ResumeService = "RESUME_SERVICE",
        DeleteService = "DELETE_SERVICE",
    }
);

status_enum!(
    OperationStatus {
        Pending = "PENDING",
        InProgress = "IN_PROGRESS",
        Succeeded = "SUCCEEDED",
        Failed = "FAILED",
        RollbackInProgress = "ROLLBACK_IN_PROGRESS",
        RollbackSucceeded = "ROLLBACK_SUCCEEDED",
        RollbackFailed = "ROLLBACK_FAILED",
    }
);

impl OperationStatus {
    /// Whether the operation has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OperationStatus::Succeeded | OperationStatus::Failed | OperationStatus::RollbackSucceeded | OperationStatus::RollbackFailed
        )
    }

    /// Whether it ended the way the user asked.
    pub fn is_success(self) -> bool {
        self == OperationStatus::Succeeded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ServiceSpec {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    #[test]
    fn defaults_are_app_runners() {
        let s = spec(r#"{"name": "web-app", "source": {"image": "web:latest"}}"#);
        assert_eq!(s.validate(), Ok(()));
        assert_eq!((s.image_config.port, s.instance.cpu, s.instance.memory), (8080, 1024, 2048));
        assert_eq!(s.health_check, HealthCheck::default());
        assert_eq!((s.health_check.interval, s.health_check.timeout, s.health_check.unhealthy_threshold), (5, 2, 5));
        assert_eq!((s.autoscaling.max_concurrency, s.autoscaling.min_size, s.autoscaling.max_size), (100, 1, 25));
        assert_eq!(s.traffic.request_timeout, 120);
        assert!(s.auto_deploy(), "a tag source deploys on push by default");
        let pinned = spec(&format!(r#"{{"name": "web-app", "source": {{"image": "web@sha256:{}"}}}}"#, "a".repeat(64)));
        assert!(!pinned.auto_deploy());
    }

    #[test]
    fn every_problem_is_named() {
        let s = spec(
            r#"{"name": "x", "source": {"image": "web", "auto_deploy": true},
                "image_config": {"port": 0, "env": {"PORT": "1", "1BAD": "x"}},
                "instance": {"cpu": 300, "memory": 64},
                "health_check": {"protocol": "HTTP", "path": "healthz", "interval": 30, "timeout": 0, "healthy_threshold": 21, "unhealthy_threshold": 0},
                "autoscaling": {"max_concurrency": 0, "min_size": 5, "max_size": 2},
                "traffic": {"request_timeout": 4000}}"#,
        );
        let Err(SpecError(problems)) = s.validate() else { panic!("accepted") };
        let text = problems.join("\n");
        for needle in [
            "name `x`",
            "source.image `web` needs a tag or a digest",
            "image_config.port",
            "`PORT` is set by berth",
            "`1BAD` is not a variable name",
            "instance.cpu must be 256",
            "instance.memory must be 128–12288 MB (got 64)",
            "health_check.path `healthz`",
            "health_check.interval must be 1–20 s (got 30)",
            "health_check.timeout",
            "health_check.healthy_threshold",
            "health_check.unhealthy_threshold",
            "autoscaling.max_concurrency",
            "autoscaling.min_size (5) must not exceed autoscaling.max_size (2)",
            "traffic.request_timeout must be 1–3600 s (got 4000)",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
        let digest =
            spec(&format!(r#"{{"name": "web-app", "source": {{"image": "web@sha256:{}", "auto_deploy": true}}}}"#, "a".repeat(64)));
        assert!(digest.validate().is_err_and(|e| e.to_string().contains("auto_deploy needs a tag")));
    }

    #[test]
    fn unknown_fields_and_names() {
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"name": "web-app", "source": {"image": "w:1"}, "colour": 1}"#).is_err());
        assert!(spec(r#"{"name": "Web_App1", "source": {"image": "w:1"}}"#).validate().is_ok());
        assert_eq!(host_label("Web_App1"), "web-app1");
        assert!(spec(r#"{"name": "-web", "source": {"image": "w:1"}}"#).validate().is_err());
        assert_eq!(serde_json::to_string(&OperationStatus::RollbackSucceeded).ok().as_deref(), Some("\"ROLLBACK_SUCCEEDED\""));
        assert_eq!(ServiceStatus::OperationInProgress.to_string(), "OPERATION_IN_PROGRESS");
    }
}
