//! App Runner's service documents and berth's [`ServiceSpec`], both ways: what the AWS facade
//! answers `AppRunner.*` calls with, what `berth import apprunner` reads and `berth export
//! apprunner` writes. Reading reports every field it mapped, changed or could not honour, so a
//! migration says exactly what it did.
//!
//! The ids AWS clients see are derived, never stored: a service's 32-hex `ServiceId` from its
//! name and creation time (a service deleted and made again gets a new one, as on AWS), an
//! operation's UUID from berth's operation id, a secret ARN's six-character suffix from the
//! secret's name and creation time.

use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::network::{Egress, Visibility};
use crate::service::{HealthProtocol, ImageSource, ServiceSpec};

/// The account every ARN berth gives out names.
pub const ACCOUNT: &str = "000000000000";

/// App Runner's default auto scaling configuration (100/1/25): its name, and the id in its ARN
/// (revision 1).
pub const DEFAULT_AUTOSCALING_NAME: &str = "DefaultConfiguration";
pub const DEFAULT_AUTOSCALING_ID: &str = "00000000000000000000000000000001";

/// An ARN of berth's account: `arn:aws:<service>:<region>:000000000000:<resource>`.
pub fn arn(service: &str, region: &str, resource: &str) -> String {
    format!("arn:aws:{service}:{region}:{ACCOUNT}:{resource}")
}

/// A secret's ARN as Secrets Manager gives it: its name and the suffix of [`secret_suffix`].
pub fn secret_arn(region: &str, name: &str, created_at: i64) -> String {
    arn("secretsmanager", region, &format!("secret:{name}-{}", secret_suffix(name, created_at)))
}

/// What reading a field did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// Carried over as it is.
    Mapped,
    /// Carried over as berth's nearest equivalent, which behaves differently.
    Changed,
    /// Not carried over: berth has nothing that does it.
    Ignored,
}

impl NoteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoteKind::Mapped => "mapped",
            NoteKind::Changed => "changed",
            NoteKind::Ignored => "ignored",
        }
    }
}

/// One field read from an App Runner document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The App Runner member, as a path (`SourceConfiguration.ImageRepository.ImageIdentifier`).
    pub field: String,
    pub kind: NoteKind,
    /// What it became, or why it could not.
    pub text: String,
}

/// How references in a document are resolved.
pub struct Resolve<'a> {
    /// Hosts an image identifier may name for berth's registry, besides ECR's
    /// (`<12 digits>.dkr.ecr.<region>.<domain>`), whose repository and tag are taken as berth's.
    pub registry_hosts: &'a [String],
    /// The berth networks a VPC connector ARN stands for; `None` for an unknown connector.
    pub connector_networks: &'a dyn Fn(&str) -> Option<Vec<String>>,
}

/// The berth secret reference (`name` or `name#key`) a `RuntimeEnvironmentSecrets` value names:
/// a Secrets Manager ARN (`…:secret:<name>-<6 chars>`, optionally `:<json key>::` after it, as
/// ECS and App Runner take it) or a berth secret's name.
pub fn secret_reference(value: &str) -> Result<String, String> {
    let Some(rest) = value.strip_prefix("arn:") else {
        return if crate::service::secret_name(value).is_some() {
            Ok(value.to_owned())
        } else {
            Err(format!("`{value}` is neither a Secrets Manager ARN nor a secret's name"))
        };
    };
    let parts: Vec<&str> = rest.splitn(6, ':').collect();
    let (service, resource) = match parts.as_slice() {
        [_, service, _, _, resource, ..] => (*service, *resource),
        _ => return Err(format!("`{value}` is not an ARN")),
    };
    if service == "ssm" {
        return Err(format!(
            "`{value}` is a Systems Manager parameter; berth has secrets only: store the value with `berth secret create` and name it"
        ));
    }
    if service != "secretsmanager" || resource != "secret" || parts.len() < 6 {
        return Err(format!("`{value}` is not a Secrets Manager secret's ARN"));
    }
    // `secret:<name>-XXXXXX[:json-key:stage:version]`
    let mut fields = parts.get(5).map_or("", |s| s).split(':');
    let name = fields.next().unwrap_or_default();
    let key = fields.next().unwrap_or_default();
    if fields.any(|f| !f.is_empty()) {
        return Err(format!("`{value}` pins a version or stage; berth revisions pin the CURRENT version themselves, leave it out"));
    }
    let name = match name.rsplit_once('-') {
        Some((base, sfx)) if sfx.len() == 6 && sfx.bytes().all(|b| b.is_ascii_alphanumeric()) => base,
        _ => name,
    };
    let reference = if key.is_empty() { name.to_owned() } else { format!("{name}#{key}") };
    crate::service::secret_name(&reference).map(|_| reference.clone()).ok_or_else(|| format!("`{value}` names no valid secret"))
}

/// The six characters AWS puts after a secret's name in its ARN, stable for a secret.
pub fn secret_suffix(name: &str, created_at: i64) -> String {
    let h = Sha256::digest(format!("{name}\0{created_at}").as_bytes());
    h.iter().take(6).map(|b| (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[usize::from(*b) % 52]) as char).collect()
}

/// A service's `ServiceId`: 32 hex digits, the same for the service's lifetime.
pub fn service_id(name: &str, created_at: i64) -> String {
    hex::encode(&Sha256::digest(format!("service\0{name}\0{created_at}").as_bytes())[..16])
}

/// An id in the UUID text form derived from `seed` (operations have berth ids of their own).
pub fn uuid_from(seed: &str) -> String {
    let mut b: [u8; 16] = Sha256::digest(seed.as_bytes())[..16].try_into().unwrap_or([0; 16]);
    b[6] = 0x40 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Whether `host` is an ECR registry host: `<12 digits>.dkr.ecr.<region>.<domain>`.
fn is_ecr_host(host: &str) -> bool {
    let mut parts = host.split('.');
    let account = parts.next().unwrap_or_default();
    account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && parts.next() == Some("dkr")
        && parts.next() == Some("ecr")
        && parts.next().is_some_and(|r| !r.is_empty())
}

/// The berth image (`repo:tag` or `repo@digest`) an App Runner image identifier names.
pub fn image_from_identifier(identifier: &str, registry_hosts: &[String]) -> Result<String, String> {
    if identifier.starts_with("public.ecr.aws/") {
        return Err(format!(
            "`{identifier}` is in ECR Public; berth deploys from its own registry: copy the image there (`skopeo copy docker://{identifier} docker://<berth host>/<repo>:<tag>`) and name that"
        ));
    }
    let image = match identifier.split_once('/') {
        Some((host, rest)) if is_ecr_host(host) || registry_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) => rest,
        Some((host, _)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            return Err(format!(
                "`{identifier}` is in registry `{host}`; berth deploys from its own registry: push the image to it and name `<berth host>/<repo>:<tag>` or an ECR-style `<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>`"
            ))
        }
        _ => identifier,
    };
    ImageSource::parse(image).map(|_| image.to_owned())
}

fn cpu_units(text: &str) -> Option<u32> {
    let t = text.trim().to_ascii_lowercase();
    let units = match t.strip_suffix("vcpu").map(str::trim) {
        Some(v) => match v {
            "0.25" => 256,
            "0.5" => 512,
            "1" => 1024,
            "2" => 2048,
            "4" => 4096,
            _ => return None,
        },
        None => t.parse().ok()?,
    };
    [256, 512, 1024, 2048, 4096].contains(&units).then_some(units)
}

fn memory_mb(text: &str) -> Option<u32> {
    let t = text.trim().to_ascii_lowercase();
    match t.strip_suffix("gb").map(str::trim) {
        Some(g) => {
            let gb: f64 = g.parse().ok()?;
            let mb = gb * 1024.0;
            (mb.fract() == 0.0 && (128.0..=12288.0).contains(&mb)).then_some(mb as u32)
        }
        None => t.parse().ok().filter(|mb| (128..=12288).contains(mb)),
    }
}

/// Reads members of one structure, noting what each did; problems are collected.
struct Reader<'n> {
    notes: &'n mut Vec<Note>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn note(&mut self, field: &str, kind: NoteKind, text: impl Into<String>) {
        self.notes.push(Note { field: field.to_owned(), kind, text: text.into() });
    }

    fn problem(&mut self, field: &str, text: impl std::fmt::Display) {
        self.problems.push(format!("{field}: {text}"));
    }

    /// The structure `key` of `m` (at `path`), when present.
    fn object<'v>(&mut self, m: &'v Map<String, Value>, path: &str, key: &str) -> Option<&'v Map<String, Value>> {
        let field = if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                self.problem(&field, "must be a structure");
                None
            }
        }
    }

    fn string<'v>(&mut self, m: &'v Map<String, Value>, path: &str, key: &str) -> Option<&'v str> {
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.problem(&format!("{path}.{key}"), "must be a string");
                None
            }
        }
    }

    fn int(&mut self, m: &Map<String, Value>, path: &str, key: &str, lo: u32, hi: u32) -> Option<u32> {
        let v = m.get(key).filter(|v| !v.is_null())?;
        match v.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| (lo..=hi).contains(n)) {
            Some(n) => Some(n),
            None => {
                self.problem(&format!("{path}.{key}"), format!("must be {lo}–{hi} (got {v})"));
                None
            }
        }
    }

    fn string_map(&mut self, m: &Map<String, Value>, path: &str, key: &str) -> Vec<(String, String)> {
        match m.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(map)) => map
                .iter()
                .filter_map(|(k, v)| match v.as_str() {
                    Some(s) => Some((k.clone(), s.to_owned())),
                    None => {
                        self.problem(&format!("{path}.{key}.{k}"), "must be a string");
                        None
                    }
                })
                .collect(),
            Some(_) => {
                self.problem(&format!("{path}.{key}"), "must be a map of strings");
                Vec::new()
            }
        }
    }
}

/// Applies the App Runner blocks present in `doc` (a `CreateService`/`UpdateService` input or a
/// `describe-service` `Service`) to `spec`; a block present replaces what it covers, as on App
/// Runner. Returns the notes, or every problem found.
pub fn apply(spec: &mut ServiceSpec, doc: &Value, resolve: &Resolve<'_>) -> Result<Vec<Note>, Vec<String>> {
    let mut notes = Vec::new();
    let mut r = Reader { notes: &mut notes, problems: Vec::new() };
    let Some(doc) = doc.as_object() else {
        return Err(vec!["the document must be a JSON object".into()]);
    };
    if let Some(src) = r.object(doc, "", "SourceConfiguration") {
        source(&mut r, spec, src, resolve);
    }
    if let Some(ic) = r.object(doc, "", "InstanceConfiguration") {
        let p = "InstanceConfiguration";
        if let Some(cpu) = r.string(ic, p, "Cpu") {
            match cpu_units(cpu) {
                Some(u) => {
                    spec.instance.cpu = u;
                    r.note("InstanceConfiguration.Cpu", NoteKind::Mapped, format!("instance.cpu = {u}"));
                }
                None => r.problem("InstanceConfiguration.Cpu", format!("`{cpu}` is not 256, 512, 1024, 2048, 4096 or 0.25–4 vCPU")),
            }
        }
        if let Some(mem) = r.string(ic, p, "Memory") {
            match memory_mb(mem) {
                Some(mb) => {
                    spec.instance.memory = mb;
                    r.note("InstanceConfiguration.Memory", NoteKind::Mapped, format!("instance.memory = {mb}"));
                }
                None => r.problem("InstanceConfiguration.Memory", format!("`{mem}` is not 128–12288 (MB) or `<n> GB`")),
            }
        }
        if r.string(ic, p, "InstanceRoleArn").is_some() {
            r.note(
                "InstanceConfiguration.InstanceRoleArn",
                NoteKind::Ignored,
                "berth has no IAM roles; give the app credentials as secrets (image_config.secret_env)",
            );
        }
    }
    if let Some(hc) = r.object(doc, "", "HealthCheckConfiguration") {
        let p = "HealthCheckConfiguration";
        let h = &mut spec.health_check;
        *h = Default::default();
        match r.string(hc, p, "Protocol") {
            Some("HTTP") => h.protocol = HealthProtocol::Http,
            Some("TCP") | None => h.protocol = HealthProtocol::Tcp,
            Some(other) => r.problem("HealthCheckConfiguration.Protocol", format!("`{other}` is not TCP or HTTP")),
        }
        if let Some(path) = r.string(hc, p, "Path") {
            h.path = path.to_owned();
        }
        let fields = [("Interval", 20), ("Timeout", 20), ("HealthyThreshold", 20), ("UnhealthyThreshold", 20)];
        let values: Vec<Option<u32>> = fields.iter().map(|(k, hi)| r.int(hc, p, k, 1, *hi)).collect();
        let h = &mut spec.health_check;
        if let [i, t, ht, ut] = values[..] {
            h.interval = i.unwrap_or(h.interval);
            h.timeout = t.unwrap_or(h.timeout);
            h.healthy_threshold = ht.unwrap_or(h.healthy_threshold);
            h.unhealthy_threshold = ut.unwrap_or(h.unhealthy_threshold);
        }
        let text = format!(
            "health_check: {} {}every {} s, timeout {} s, healthy after {}, unhealthy after {}",
            h.protocol.as_str(),
            if h.protocol == HealthProtocol::Http { format!("{} ", h.path) } else { String::new() },
            h.interval,
            h.timeout,
            h.healthy_threshold,
            h.unhealthy_threshold
        );
        r.note(p, NoteKind::Mapped, text);
    }
    if let Some(net) = r.object(doc, "", "NetworkConfiguration") {
        network(&mut r, spec, net, resolve);
    }
    if r.object(doc, "", "EncryptionConfiguration").is_some() {
        r.note(
            "EncryptionConfiguration",
            NoteKind::Ignored,
            "berth encrypts secrets at rest with its own key; there is no KMS key to name",
        );
    }
    if let Some(o) = r.object(doc, "", "ObservabilityConfiguration") {
        if o.get("ObservabilityEnabled").and_then(Value::as_bool) == Some(true) {
            r.note(
                "ObservabilityConfiguration",
                NoteKind::Changed,
                "berth has no X-Ray tracing; its metrics history, logs and access log are always on",
            );
        }
    }
    let problems = std::mem::take(&mut r.problems);
    if problems.is_empty() {
        Ok(notes)
    } else {
        Err(problems)
    }
}

fn source(r: &mut Reader<'_>, spec: &mut ServiceSpec, src: &Map<String, Value>, resolve: &Resolve<'_>) {
    let p = "SourceConfiguration";
    if src.get("CodeRepository").is_some_and(|v| !v.is_null()) {
        r.problem(
            "SourceConfiguration.CodeRepository",
            "berth deploys container images, not source code: build the image in CI, push it to berth's registry and use ImageRepository",
        );
    }
    if let Some(image) = src.get("ImageRepository").and_then(Value::as_object) {
        let p = "SourceConfiguration.ImageRepository";
        match r.string(image, p, "ImageRepositoryType") {
            Some("ECR") | None => {}
            Some("ECR_PUBLIC") => r.problem(
                "SourceConfiguration.ImageRepository.ImageRepositoryType",
                "ECR_PUBLIC images are not in berth's registry: copy the image there and use ECR",
            ),
            Some(other) => r.problem("SourceConfiguration.ImageRepository.ImageRepositoryType", format!("`{other}` is not ECR")),
        }
        match r.string(image, p, "ImageIdentifier") {
            Some(id) => match image_from_identifier(id, resolve.registry_hosts) {
                Ok(img) => {
                    r.note("SourceConfiguration.ImageRepository.ImageIdentifier", NoteKind::Mapped, format!("source.image = {img}"));
                    spec.source.image = img;
                }
                Err(e) => r.problem("SourceConfiguration.ImageRepository.ImageIdentifier", e),
            },
            None => r.problem("SourceConfiguration.ImageRepository.ImageIdentifier", "is required"),
        }
        // The block replaces App Runner's part of the image configuration; berth's own
        // (init, secret files) stays.
        let ic = &mut spec.image_config;
        ic.port = 8080;
        ic.env.clear();
        ic.secret_env.clear();
        ic.start_command = None;
        if let Some(cfg) = r.object(image, p, "ImageConfiguration") {
            image_configuration(r, spec, cfg);
        }
    } else if src.get("ImageRepository").is_some_and(|v| !v.is_null()) {
        r.problem("SourceConfiguration.ImageRepository", "must be a structure");
    }
    if let Some(v) = src.get("AutoDeploymentsEnabled").filter(|v| !v.is_null()) {
        match v.as_bool() {
            Some(b) => {
                spec.source.auto_deploy = Some(b);
                r.note("SourceConfiguration.AutoDeploymentsEnabled", NoteKind::Mapped, format!("source.auto_deploy = {b}"));
            }
            None => r.problem("SourceConfiguration.AutoDeploymentsEnabled", "must be a boolean"),
        }
    }
    if r.object(src, p, "AuthenticationConfiguration").is_some() {
        r.note(
            &format!("{p}.AuthenticationConfiguration"),
            NoteKind::Ignored,
            "berth deploys from its own registry and needs no access role",
        );
    }
}

fn image_configuration(r: &mut Reader<'_>, spec: &mut ServiceSpec, cfg: &Map<String, Value>) {
    let p = "SourceConfiguration.ImageRepository.ImageConfiguration";
    if let Some(port) = r.string(cfg, p, "Port") {
        match port.parse::<u16>() {
            Ok(n) if n > 0 => {
                spec.image_config.port = n;
                r.note(&format!("{p}.Port"), NoteKind::Mapped, format!("image_config.port = {n}"));
            }
            _ => r.problem(&format!("{p}.Port"), format!("`{port}` is not a port (1–65535)")),
        }
    }
    let env = r.string_map(cfg, p, "RuntimeEnvironmentVariables");
    if !env.is_empty() {
        r.note(&format!("{p}.RuntimeEnvironmentVariables"), NoteKind::Mapped, format!("image_config.env: {} variables", env.len()));
    }
    spec.image_config.env = env.into_iter().collect();
    let secrets = r.string_map(cfg, p, "RuntimeEnvironmentSecrets");
    for (var, value) in secrets {
        match secret_reference(&value) {
            Ok(reference) => {
                r.note(
                    &format!("{p}.RuntimeEnvironmentSecrets.{var}"),
                    NoteKind::Mapped,
                    format!("image_config.secret_env: {var} = {reference}"),
                );
                spec.image_config.secret_env.insert(var, reference);
            }
            Err(e) => r.problem(&format!("{p}.RuntimeEnvironmentSecrets.{var}"), e),
        }
    }
    if let Some(cmd) = r.string(cfg, p, "StartCommand") {
        spec.image_config.start_command = Some(cmd.to_owned());
        r.note(&format!("{p}.StartCommand"), NoteKind::Changed, "image_config.start_command: split on spaces, run without a shell");
    }
}

fn network(r: &mut Reader<'_>, spec: &mut ServiceSpec, net: &Map<String, Value>, resolve: &Resolve<'_>) {
    let p = "NetworkConfiguration";
    if let Some(eg) = r.object(net, p, "EgressConfiguration") {
        let p = "NetworkConfiguration.EgressConfiguration";
        match r.string(eg, p, "EgressType") {
            Some("DEFAULT") | None => {
                spec.network.networks.clear();
                spec.network.egress = Egress::Public;
            }
            Some("VPC") => match r.string(eg, p, "VpcConnectorArn") {
                Some(arn) => match (resolve.connector_networks)(arn) {
                    Some(networks) => {
                        r.note(
                            &format!("{p}.VpcConnectorArn"),
                            NoteKind::Changed,
                            format!(
                                "network.networks = {}, network.egress = networks (the connector's networks only, as VPC egress)",
                                networks.join(", ")
                            ),
                        );
                        spec.network.networks = networks;
                        spec.network.egress = Egress::Networks;
                    }
                    None => r.problem(&format!("{p}.VpcConnectorArn"), format!("`{arn}` names no VPC connector")),
                },
                None => r.problem(&format!("{p}.VpcConnectorArn"), "is required with EgressType VPC"),
            },
            Some(other) => r.problem(&format!("{p}.EgressType"), format!("`{other}` is not DEFAULT or VPC")),
        }
    }
    if let Some(ing) = r.object(net, p, "IngressConfiguration") {
        match ing.get("IsPubliclyAccessible").and_then(Value::as_bool) {
            Some(false) => {
                spec.network.visibility = Visibility::Private;
                r.note(
                    &format!("{p}.IngressConfiguration.IsPubliclyAccessible"),
                    NoteKind::Changed,
                    "network.visibility = private: reached at <name>.internal by the services in network.allow_from",
                );
            }
            _ => spec.network.visibility = Visibility::Public,
        }
    }
    if r.string(net, p, "IpAddressType") == Some("DUAL_STACK") {
        r.note(&format!("{p}.IpAddressType"), NoteKind::Ignored, "berth's listeners are what its configuration binds");
    }
}

/// Applies an auto scaling configuration's numbers.
pub fn apply_autoscaling(spec: &mut ServiceSpec, max_concurrency: u32, min_size: u32, max_size: u32) -> Note {
    let a = &mut spec.autoscaling;
    (a.max_concurrency, a.min_size, a.max_size) = (max_concurrency, min_size, max_size);
    Note {
        field: "AutoScalingConfiguration".into(),
        kind: NoteKind::Mapped,
        text: format!("autoscaling: max_concurrency {max_concurrency}, min_size {min_size}, max_size {max_size}"),
    }
}

/// Where a described service comes from: what berth has, and the AWS names of what it refers to.
pub struct Described<'a> {
    pub spec: &'a ServiceSpec,
    pub arn: String,
    pub service_id: String,
    /// The host (and port, when not the scheme's) the service is reached at.
    pub url: String,
    pub status: &'a str,
    pub created_at: i64,
    pub updated_at: i64,
    /// The image identifier as the client gave it, when it still names the source.
    pub image_identifier: String,
    pub autoscaling: Value,
    pub vpc_connector_arn: Option<String>,
    /// A secret reference's ARN.
    pub secret_arn: &'a dyn Fn(&str) -> String,
}

/// The `Service` structure App Runner describes a service with.
pub fn service_json(d: &Described<'_>) -> Value {
    let s = d.spec;
    let ic = &s.image_config;
    let mut image_cfg = json!({ "Port": ic.port.to_string() });
    if !ic.env.is_empty() {
        image_cfg["RuntimeEnvironmentVariables"] = json!(ic.env);
    }
    if !ic.secret_env.is_empty() {
        let secrets: Map<String, Value> = ic
            .secret_env
            .iter()
            .map(|(k, reference)| {
                let arn = match reference.split_once('#') {
                    Some((name, key)) => format!("{}:{key}::", (d.secret_arn)(name)),
                    None => (d.secret_arn)(reference),
                };
                (k.clone(), Value::from(arn))
            })
            .collect();
        image_cfg["RuntimeEnvironmentSecrets"] = Value::Object(secrets);
    }
    if let Some(cmd) = &ic.start_command {
        image_cfg["StartCommand"] = json!(cmd);
    }
    let hc = &s.health_check;
    let egress = match &d.vpc_connector_arn {
        Some(arn) => json!({"EgressType": "VPC", "VpcConnectorArn": arn}),
        None => json!({"EgressType": "DEFAULT"}),
    };
    json!({
        "ServiceName": s.name,
        "ServiceId": d.service_id,
        "ServiceArn": d.arn,
        "ServiceUrl": d.url,
        "CreatedAt": d.created_at,
        "UpdatedAt": d.updated_at,
        "Status": d.status,
        "SourceConfiguration": {
            "ImageRepository": {
                "ImageIdentifier": d.image_identifier,
                "ImageConfiguration": image_cfg,
                "ImageRepositoryType": "ECR",
            },
            "AutoDeploymentsEnabled": s.auto_deploy(),
        },
        "InstanceConfiguration": { "Cpu": s.instance.cpu.to_string(), "Memory": s.instance.memory.to_string() },
        "HealthCheckConfiguration": {
            "Protocol": hc.protocol.as_str(),
            "Path": hc.path,
            "Interval": hc.interval,
            "Timeout": hc.timeout,
            "HealthyThreshold": hc.healthy_threshold,
            "UnhealthyThreshold": hc.unhealthy_threshold,
        },
        "AutoScalingConfigurationSummary": d.autoscaling,
        "NetworkConfiguration": {
            "EgressConfiguration": egress,
            "IngressConfiguration": { "IsPubliclyAccessible": s.network.visibility == Visibility::Public },
            "IpAddressType": "IPV4",
        },
        "ObservabilityConfiguration": { "ObservabilityEnabled": false },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_connectors(_: &str) -> Option<Vec<String>> {
        None
    }

    fn spec() -> ServiceSpec {
        serde_json::from_value(json!({"name": "web-app", "source": {"image": "x:1"}})).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn image_identifiers_resolve_to_berths_registry() {
        let hosts = vec!["berth.example:8443".to_owned()];
        let ok = |id: &str| image_from_identifier(id, &hosts);
        assert_eq!(ok("123456789012.dkr.ecr.us-east-1.amazonaws.com/web:latest"), Ok("web:latest".into()));
        assert_eq!(ok("123456789012.dkr.ecr.eu-west-3.amazonaws.com/team/api@sha256:0000000000000000000000000000000000000000000000000000000000000000").map(|s| s.len()), Ok(80));
        assert_eq!(ok("berth.example:8443/team/web:v2"), Ok("team/web:v2".into()));
        assert_eq!(ok("team/web:v2"), Ok("team/web:v2".into()));
        assert!(ok("docker.io/library/nginx:latest").is_err_and(|e| e.contains("push the image")));
        assert!(ok("public.ecr.aws/nginx/nginx:latest").is_err_and(|e| e.contains("ECR Public")));
        assert!(ok("123456789012.dkr.ecr.us-east-1.amazonaws.com/web").is_err_and(|e| e.contains("needs a tag")));
    }

    #[test]
    fn secret_references_come_from_arns_or_names() {
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-password-AbC123";
        assert_eq!(secret_reference(arn), Ok("prod/db-password".into()));
        assert_eq!(secret_reference(&format!("{arn}:password::")), Ok("prod/db-password#password".into()));
        assert_eq!(secret_reference("db-password"), Ok("db-password".into()));
        assert!(secret_reference(&format!("{arn}:password:AWSPREVIOUS:")).is_err_and(|e| e.contains("pins")));
        assert!(secret_reference("arn:aws:ssm:us-east-1:123456789012:parameter/db").is_err_and(|e| e.contains("Systems Manager")));
        assert!(secret_reference("arn:aws:s3:::bucket").is_err());
    }

    #[test]
    fn sizes_read_as_units_or_words() {
        assert_eq!(
            ["256", "0.25 vCPU", "1 vCPU", "4 vcpu", "3 vCPU", "100"].map(cpu_units),
            [Some(256), Some(256), Some(1024), Some(4096), None, None]
        );
        assert_eq!(
            ["2048", "2 GB", "0.5 GB", "12 GB", "13 GB", "1.3 GB"].map(memory_mb),
            [Some(2048), Some(2048), Some(512), Some(12288), None, None]
        );
    }

    #[test]
    fn a_described_service_reads_back_to_the_same_spec_with_notes() {
        let doc = json!({
            "ServiceName": "web-app",
            "SourceConfiguration": {
                "ImageRepository": {
                    "ImageIdentifier": "123456789012.dkr.ecr.us-east-1.amazonaws.com/web:latest",
                    "ImageRepositoryType": "ECR",
                    "ImageConfiguration": {
                        "Port": "3000",
                        "RuntimeEnvironmentVariables": {"MODE": "prod"},
                        "RuntimeEnvironmentSecrets": {"DB_PASSWORD": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-XyZ987"},
                        "StartCommand": "node server.js",
                    },
                },
                "AutoDeploymentsEnabled": false,
                "AuthenticationConfiguration": {"AccessRoleArn": "arn:aws:iam::123456789012:role/ecr"},
            },
            "InstanceConfiguration": {"Cpu": "0.5 vCPU", "Memory": "1 GB", "InstanceRoleArn": "arn:aws:iam::123456789012:role/app"},
            "HealthCheckConfiguration": {"Protocol": "HTTP", "Path": "/healthz", "Interval": 10, "HealthyThreshold": 2},
            "NetworkConfiguration": {
                "EgressConfiguration": {"EgressType": "VPC", "VpcConnectorArn": "arn:aws:apprunner:us-east-1:123456789012:vpcconnector/db/1/0123"},
                "IngressConfiguration": {"IsPubliclyAccessible": true},
            },
        });
        let connectors = |arn: &str| arn.contains("vpcconnector/db/").then(|| vec!["db".to_owned()]);
        let mut s = spec();
        let notes =
            apply(&mut s, &doc, &Resolve { registry_hosts: &[], connector_networks: &connectors }).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.source.image, "web:latest");
        assert_eq!((s.image_config.port, s.instance.cpu, s.instance.memory), (3000, 512, 1024));
        assert_eq!(s.image_config.secret_env.get("DB_PASSWORD").map(String::as_str), Some("db"));
        assert_eq!((s.health_check.protocol, s.health_check.interval, s.health_check.timeout), (HealthProtocol::Http, 10, 2));
        assert_eq!((s.network.networks.clone(), s.network.egress), (vec!["db".to_owned()], Egress::Networks));
        let ignored: Vec<&str> = notes.iter().filter(|n| n.kind == NoteKind::Ignored).map(|n| n.field.as_str()).collect();
        assert_eq!(ignored, ["SourceConfiguration.AuthenticationConfiguration", "InstanceConfiguration.InstanceRoleArn"]);

        let secret_arn = |name: &str| format!("arn:aws:secretsmanager:us-east-1:000000000000:secret:{name}-{}", secret_suffix(name, 1));
        let described = service_json(&Described {
            spec: &s,
            arn: "arn".into(),
            service_id: service_id("web-app", 1),
            url: "web-app.localhost".into(),
            status: "RUNNING",
            created_at: 1,
            updated_at: 2,
            image_identifier: "123456789012.dkr.ecr.us-east-1.amazonaws.com/web:latest".into(),
            autoscaling: json!({}),
            vpc_connector_arn: Some("arn:aws:apprunner:us-east-1:123456789012:vpcconnector/db/1/0123".into()),
            secret_arn: &secret_arn,
        });
        let mut again = spec();
        apply(&mut again, &described, &Resolve { registry_hosts: &[], connector_networks: &connectors })
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(again, s);
        assert_eq!(described["InstanceConfiguration"], json!({"Cpu": "512", "Memory": "1024"}));
        assert_eq!(service_id("web-app", 1).len(), 32);
    }

    #[test]
    fn what_berth_cannot_do_is_refused_with_every_reason() {
        let doc = json!({
            "SourceConfiguration": {"CodeRepository": {"RepositoryUrl": "https://github.com/x/y"}},
            "InstanceConfiguration": {"Cpu": "3 vCPU"},
            "HealthCheckConfiguration": {"Interval": 50},
            "NetworkConfiguration": {"EgressConfiguration": {"EgressType": "VPC", "VpcConnectorArn": "arn:x"}},
        });
        let problems =
            apply(&mut spec(), &doc, &Resolve { registry_hosts: &[], connector_networks: &no_connectors }).err().unwrap_or_default();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("build the image in CI"), "{problems:?}");
    }

    #[test]
    fn operation_ids_are_stable_uuids() {
        let id = uuid_from("op-0123456789ab");
        assert_eq!(id, uuid_from("op-0123456789ab"));
        assert_eq!(id.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert_eq!(&id[14..15], "4");
    }
}
