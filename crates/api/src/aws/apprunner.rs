//! App Runner (2020-05-15) over berth's controller: services, their operations, auto scaling
//! configurations (revisioned numbers a service takes on) and VPC connectors (berth networks
//! under an App Runner name), with resource tags. The documents map through
//! [`berth_core::aws`], the same mapping `berth import apprunner` uses; statuses and operations
//! are the controller's own, so `describe-service` says RUNNING when the service really serves.

use berth_controller::{Controller, ControllerError, Operation, ServiceView};
use berth_core::aws::{self as map, Described, Resolve};
use berth_core::{Action, ServiceSpec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::input::Input;
use super::{tags_json, timestamp, AwsError, Call};
use crate::now;

/// What berth keeps of a service beyond its spec: the AWS names it was given.
const SERVICE_KIND: &str = "apprunner-service";
/// Auto scaling configurations, by `<name>/<revision>`.
const ASC_KIND: &str = "apprunner-asc";
/// VPC connectors, by `<name>/<revision>`.
const VPC_KIND: &str = "apprunner-vpc";
const DEFAULT_ASC: &str = map::DEFAULT_AUTOSCALING_NAME;

pub async fn call(c: &Call<'_>, op: &str, v: &Value) -> Option<Result<Value, AwsError>> {
    let i = c.input(v);
    Some(match op {
        "CreateService" => create_service(c, &i).await,
        "UpdateService" => update_service(c, &i).await,
        "DescribeService" => describe_service(c, &i).await,
        "DeleteService" => delete_service(c, &i).await,
        "ListServices" => list_services(c, &i).await,
        "StartDeployment" => start_deployment(c, &i).await,
        "PauseService" => pause_or_resume(c, &i, true).await,
        "ResumeService" => pause_or_resume(c, &i, false).await,
        "ListOperations" => list_operations(c, &i).await,
        "CreateAutoScalingConfiguration" => create_asc(c, &i).await,
        "DescribeAutoScalingConfiguration" => describe_asc(c, &i).await,
        "DeleteAutoScalingConfiguration" => delete_asc(c, &i).await,
        "ListAutoScalingConfigurations" => list_ascs(c, &i).await,
        "CreateVpcConnector" => create_vpc(c, &i).await,
        "DescribeVpcConnector" => describe_vpc(c, &i).await,
        "DeleteVpcConnector" => delete_vpc(c, &i).await,
        "ListVpcConnectors" => list_vpcs(c, &i).await,
        "TagResource" => tag_resource(c, &i).await,
        "UntagResource" => untag_resource(c, &i).await,
        "ListTagsForResource" => list_tags(c, &i).await,
        _ => return None,
    })
}

fn controller<'c>(c: &'c Call<'_>) -> Result<&'c Controller, AwsError> {
    // InvalidRequestException: every operation's model has it (the SDKs that match errors to
    // operations, as the Go SDK does, would not recognise another).
    c.state.controller.as_ref().ok_or_else(|| {
        AwsError::new(
            "InvalidRequestException",
            "services need the embedded runtime, which is off: run `berth server` as root (it needs namespaces, cgroups and mounts)",
        )
    })
}

fn controller_error(c: &Call<'_>, e: ControllerError) -> AwsError {
    match e {
        ControllerError::NotFound(_) | ControllerError::OperationNotFound(_) => AwsError::new("ResourceNotFoundException", e.to_string()),
        ControllerError::Busy { .. } | ControllerError::Conflict(_) => AwsError::new("InvalidStateException", e.to_string()),
        ControllerError::Invalid(_)
        | ControllerError::BadRequest(_)
        | ControllerError::Exists(_)
        | ControllerError::NetworkNotFound(_)
        | ControllerError::NetworkExists(_) => AwsError::new("InvalidRequestException", e.to_string()),
        ControllerError::Store(_) | ControllerError::Corrupt(_) => c.internal(e),
    }
}

fn store_error<'c>(c: &'c Call<'_>) -> impl Fn(berth_store::StoreError) -> AwsError + 'c {
    move |e| c.internal(e)
}

/// What berth keeps of a service's AWS names.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct ServiceDoc {
    image_identifier: Option<String>,
    autoscaling_arn: Option<String>,
    vpc_connector_arn: Option<String>,
}

/// A revision of an auto scaling configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Asc {
    name: String,
    revision: u32,
    id: String,
    max_concurrency: u32,
    min_size: u32,
    max_size: u32,
    created_at: i64,
    deleted_at: Option<i64>,
}

impl Asc {
    fn default_config() -> Asc {
        Asc {
            name: DEFAULT_ASC.into(),
            revision: 1,
            id: map::DEFAULT_AUTOSCALING_ID.into(),
            max_concurrency: 100,
            min_size: 1,
            max_size: 25,
            created_at: 0,
            deleted_at: None,
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.name, self.revision)
    }

    fn arn(&self, c: &Call<'_>) -> String {
        c.arn(&format!("autoscalingconfiguration/{}/{}/{}", self.name, self.revision, self.id))
    }

    fn is_default(&self) -> bool {
        self.name == DEFAULT_ASC
    }

    fn status(&self) -> &'static str {
        // Lowercase, as the service sends it (Terraform's waiters compare against these).
        if self.deleted_at.is_some() {
            "inactive"
        } else {
            "active"
        }
    }

    fn numbers(&self) -> (u32, u32, u32) {
        (self.max_concurrency, self.min_size, self.max_size)
    }

    fn summary(&self, c: &Call<'_>, latest: bool, associated: bool) -> Value {
        json!({
            "AutoScalingConfigurationArn": self.arn(c),
            "AutoScalingConfigurationName": self.name,
            "AutoScalingConfigurationRevision": self.revision,
            "Status": self.status(),
            "CreatedAt": timestamp(self.created_at),
            "HasAssociatedService": associated,
            "IsDefault": self.is_default() && latest,
        })
    }

    fn json(&self, c: &Call<'_>, latest: bool, associated: bool) -> Value {
        let mut v = self.summary(c, latest, associated);
        v["Latest"] = json!(latest);
        v["MaxConcurrency"] = json!(self.max_concurrency);
        v["MinSize"] = json!(self.min_size);
        v["MaxSize"] = json!(self.max_size);
        if let Some(d) = self.deleted_at {
            v["DeletedAt"] = timestamp(d);
        }
        v
    }
}

/// A revision of a VPC connector: its subnets are berth networks.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Vpc {
    name: String,
    revision: u32,
    id: String,
    subnets: Vec<String>,
    security_groups: Vec<String>,
    created_at: i64,
    deleted_at: Option<i64>,
}

impl Vpc {
    fn arn(&self, c: &Call<'_>) -> String {
        c.arn(&format!("vpcconnector/{}/{}/{}", self.name, self.revision, self.id))
    }

    fn json(&self, c: &Call<'_>) -> Value {
        let mut v = json!({
            "VpcConnectorName": self.name,
            "VpcConnectorArn": self.arn(c),
            "VpcConnectorRevision": self.revision,
            "Subnets": self.subnets,
            "SecurityGroups": self.security_groups,
            "Status": if self.deleted_at.is_some() { "INACTIVE" } else { "ACTIVE" },
            "CreatedAt": timestamp(self.created_at),
        });
        if let Some(d) = self.deleted_at {
            v["DeletedAt"] = timestamp(d);
        }
        v
    }
}

fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

async fn docs<T: serde::de::DeserializeOwned>(c: &Call<'_>, kind: &str) -> Result<Vec<T>, AwsError> {
    let docs = c.state.store.list_aws_resources(kind).await.map_err(store_error(c))?;
    Ok(docs.into_iter().filter_map(|d| serde_json::from_value(d.doc).ok()).collect())
}

async fn put_doc(c: &Call<'_>, kind: &str, key: &str, doc: &impl Serialize) -> Result<(), AwsError> {
    let doc = serde_json::to_value(doc).map_err(|e| c.internal(e))?;
    c.state.store.put_aws_resource(kind, key, &doc, now()).await.map_err(store_error(c))
}

/// The resource part of an App Runner ARN of `kind` (`service`, `autoscalingconfiguration`, …),
/// split at `/`.
fn arn_parts<'a>(arn: &'a str, kind: &str) -> Option<Vec<&'a str>> {
    let rest = arn.strip_prefix("arn:")?;
    let mut fields = rest.splitn(6, ':');
    let (_, service, _, _) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let resource = fields.next()?;
    if service != "apprunner" || fields.next().is_some() {
        return None;
    }
    let parts: Vec<&str> = resource.split('/').collect();
    (parts.first() == Some(&kind) && parts.len() > 1).then(|| parts[1..].to_vec())
}

fn not_found(what: &str, arn: &str) -> AwsError {
    AwsError::new("ResourceNotFoundException", format!("{what} `{arn}` does not exist"))
}

/// The service a `ServiceArn` names (the id must be the service's: one deleted and made again
/// under the same name is another service).
async fn service<'v>(c: &Call<'_>, i: &Input<'v>) -> Result<(ServiceView, &'v str), AwsError> {
    let arn = i.str_len("ServiceArn", 1, 1011)?;
    let gone = || not_found("service", arn);
    let parts = arn_parts(arn, "service").ok_or_else(|| i.invalid(format!("`{arn}` is not a service's ARN")))?;
    let [name, id] = parts[..] else { return Err(gone()) };
    let view = controller(c)?.get(name).await.map_err(|e| match e {
        ControllerError::NotFound(_) => gone(),
        e => controller_error(c, e),
    })?;
    if map::service_id(&view.name, view.created_at) != id {
        return Err(gone());
    }
    Ok((view, arn))
}

fn service_arn(c: &Call<'_>, view: &ServiceView) -> String {
    c.arn(&format!("service/{}/{}", view.name, map::service_id(&view.name, view.created_at)))
}

/// Every auto scaling configuration revision, the default one first.
async fn ascs(c: &Call<'_>) -> Result<Vec<Asc>, AwsError> {
    let mut all = vec![Asc::default_config()];
    all.extend(docs::<Asc>(c, ASC_KIND).await?);
    Ok(all)
}

fn latest_revision(all: &[Asc], name: &str) -> Option<u32> {
    all.iter().filter(|a| a.name == name && a.deleted_at.is_none()).map(|a| a.revision).max()
}

/// The configuration an ARN names: `…/<name>` (its latest active revision), `…/<name>/<rev>` or
/// the full ARN.
fn find_asc<'a>(all: &'a [Asc], arn: &str) -> Option<&'a Asc> {
    let parts = arn_parts(arn, "autoscalingconfiguration")?;
    let name = parts[0];
    let revision = match parts.get(1) {
        Some(r) => r.parse().ok()?,
        None => latest_revision(all, name)?,
    };
    all.iter().find(|a| a.name == name && a.revision == revision && parts.get(2).is_none_or(|id| *id == a.id))
}

async fn service_docs(c: &Call<'_>) -> Result<Vec<(String, ServiceDoc)>, AwsError> {
    let docs = c.state.store.list_aws_resources(SERVICE_KIND).await.map_err(store_error(c))?;
    Ok(docs.into_iter().filter_map(|d| Some((d.key, serde_json::from_value::<ServiceDoc>(d.doc).ok()?))).collect())
}

/// The service's AWS document (empty for a service made through berth's own API).
async fn service_doc(c: &Call<'_>, name: &str) -> Result<ServiceDoc, AwsError> {
    let doc = c.state.store.get_aws_resource(SERVICE_KIND, name).await.map_err(store_error(c))?;
    Ok(doc.and_then(|d| serde_json::from_value(d.doc).ok()).unwrap_or_default())
}

/// The bare host (and port, when not the scheme's) a service is reached at.
fn bare_url(url: &str) -> String {
    url.split_once("://").map_or(url, |(_, rest)| rest).to_owned()
}

async fn secret_arns(c: &Call<'_>, spec: &ServiceSpec) -> Result<std::collections::BTreeMap<String, String>, AwsError> {
    let mut out = std::collections::BTreeMap::new();
    for reference in spec.image_config.secret_env.values() {
        let name = reference.split_once('#').map_or(reference.as_str(), |(n, _)| n);
        if out.contains_key(name) {
            continue;
        }
        let arn = match c.state.secrets.describe(name).await {
            Ok(info) => map::secret_arn(&c.region, &info.name, info.created_at),
            Err(_) => map::arn("secretsmanager", &c.region, &format!("secret:{name}-000000")),
        };
        out.insert(name.to_owned(), arn);
    }
    Ok(out)
}

/// When the service last changed: its newest operation's start, or its creation.
async fn updated_at(c: &Call<'_>, view: &ServiceView) -> Result<i64, AwsError> {
    let ops = controller(c)?.operations(&view.name, None, 1).await.map_err(|e| controller_error(c, e))?;
    Ok(ops.first().map_or(view.created_at, |o| o.started_at).max(view.created_at))
}

/// A service's status as App Runner tells it: OPERATION_IN_PROGRESS while any operation runs
/// (berth's own API says RUNNING while an update rolls out, since the service serves on).
fn status(view: &ServiceView) -> &'static str {
    use berth_core::ServiceStatus as S;
    match view.status {
        S::Running | S::Paused if view.operation_in_progress.is_some() => "OPERATION_IN_PROGRESS",
        S::CreateFailed => "CREATE_FAILED",
        S::Running => "RUNNING",
        S::OperationInProgress => "OPERATION_IN_PROGRESS",
        S::Paused => "PAUSED",
        S::Deleted => "DELETED",
        S::DeleteFailed => "DELETE_FAILED",
    }
}

/// The `Service` structure for a service, as App Runner describes it.
async fn service_json(c: &Call<'_>, view: &ServiceView) -> Result<Value, AwsError> {
    let doc = service_doc(c, &view.name).await?;
    let spec = &view.spec;
    let hosts = [c.host.clone()];
    let image_identifier = doc
        .image_identifier
        .filter(|id| map::image_from_identifier(id, &hosts).is_ok_and(|img| img == spec.source.image))
        .unwrap_or_else(|| format!("{}/{}", c.host, spec.source.image));
    let all = ascs(c).await?;
    let a = &spec.autoscaling;
    let numbers = (a.max_concurrency, a.min_size, a.max_size);
    let named = doc.autoscaling_arn.as_deref().and_then(|arn| find_asc(&all, arn)).filter(|asc| asc.numbers() == numbers);
    let autoscaling = match named.or_else(|| (all[0].numbers() == numbers).then_some(&all[0])) {
        Some(asc) => asc.summary(c, latest_revision(&all, &asc.name) == Some(asc.revision), true),
        // Numbers set through berth's own API: a configuration of the service's own.
        None => Asc {
            name: view.name.clone(),
            revision: 1,
            id: map::service_id(&view.name, view.created_at),
            max_concurrency: a.max_concurrency,
            min_size: a.min_size,
            max_size: a.max_size,
            created_at: view.created_at,
            deleted_at: None,
        }
        .summary(c, true, true),
    };
    let vpcs: Vec<Vpc> = docs(c, VPC_KIND).await?;
    let vpc_connector_arn = if spec.network.networks.is_empty() {
        None
    } else {
        let matching = |v: &&Vpc| v.subnets == spec.network.networks;
        let named = doc.vpc_connector_arn.as_deref().and_then(|arn| vpcs.iter().find(|v| v.arn(c) == arn)).filter(matching);
        named.or_else(|| vpcs.iter().filter(|v| v.deleted_at.is_none()).find(matching)).map(|v| v.arn(c))
    };
    let arns = secret_arns(c, spec).await?;
    let secret_arn = |name: &str| arns.get(name).cloned().unwrap_or_default();
    let url = controller(c)?.url(&view.name);
    Ok(map::service_json(&Described {
        spec,
        arn: service_arn(c, view),
        service_id: map::service_id(&view.name, view.created_at),
        url: bare_url(&url),
        status: status(view),
        created_at: view.created_at,
        updated_at: updated_at(c, view).await?,
        image_identifier,
        autoscaling,
        vpc_connector_arn,
        secret_arn: &secret_arn,
    }))
}

/// Reads the App Runner blocks of a create or update into `spec`, with the configuration and
/// connector they name; returns the AWS document to keep.
async fn read_spec(c: &Call<'_>, i: &Input<'_>, v: &Value, spec: &mut ServiceSpec, doc: &mut ServiceDoc) -> Result<(), AwsError> {
    let vpcs: Vec<Vpc> = docs(c, VPC_KIND).await?;
    let connector = |arn: &str| vpcs.iter().find(|v| v.deleted_at.is_none() && v.arn(c) == arn).map(|v| v.subnets.clone());
    let hosts = [c.host.clone()];
    map::apply(spec, v, &Resolve { registry_hosts: &hosts, connector_networks: &connector })
        .map_err(|problems| i.invalid(format!("{} validation error(s): {}", problems.len(), problems.join("; "))))?;
    if let Some(id) = i.nested("SourceConfiguration")?.and_then(|s| s.nested("ImageRepository").ok().flatten()) {
        doc.image_identifier = id.opt_str("ImageIdentifier")?.map(str::to_owned);
    }
    if let Some(net) = i.nested("NetworkConfiguration")? {
        if let Some(eg) = net.nested("EgressConfiguration")? {
            doc.vpc_connector_arn = eg.opt_str("VpcConnectorArn")?.map(str::to_owned);
        }
    }
    if let Some(arn) = i.opt_str_len("AutoScalingConfigurationArn", 1, 1011)? {
        let all = ascs(c).await?;
        let asc = find_asc(&all, arn).filter(|a| a.deleted_at.is_none()).ok_or_else(|| not_found("auto scaling configuration", arn))?;
        map::apply_autoscaling(spec, asc.max_concurrency, asc.min_size, asc.max_size);
        doc.autoscaling_arn = Some(asc.arn(c));
    }
    Ok(())
}

fn operation_id(op: &Operation) -> String {
    map::uuid_from(&op.id)
}

async fn answer(c: &Call<'_>, name: &str, op: &Operation) -> Result<Value, AwsError> {
    let view = controller(c)?.get(name).await.map_err(|e| controller_error(c, e))?;
    Ok(json!({ "Service": service_json(c, &view).await?, "OperationId": operation_id(op) }))
}

async fn create_service(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let name = i.str_len("ServiceName", 4, 40)?;
    if !berth_core::service::is_service_name(name) {
        return Err(i.violation(
            "ServiceName",
            &Value::from(name),
            "Member must satisfy regular expression pattern: [A-Za-z0-9][A-Za-z0-9-_]{3,39}",
        ));
    }
    i.nested("SourceConfiguration")?.ok_or_else(|| {
        i.invalid("1 validation error detected: Value null at 'sourceConfiguration' failed to satisfy constraint: Member must not be null")
    })?;
    let tags = c.read_tags(i, "Tags", "Key", "Value")?;
    let mut spec: ServiceSpec =
        serde_json::from_value(json!({"name": name, "source": {"image": "unset:unset"}})).map_err(|e| c.internal(e))?;
    let mut doc = ServiceDoc::default();
    read_spec(c, i, i.raw(), &mut spec, &mut doc).await?;
    let ctl = controller(c)?.acting_as(&c.principal.token_name);
    let op = ctl.create(spec).await.map_err(|e| match e {
        ControllerError::Exists(_) => {
            AwsError::new("InvalidRequestException", format!("Service with the provided name already exists: {name}"))
        }
        e => controller_error(c, e),
    })?;
    put_doc(c, SERVICE_KIND, name, &doc).await?;
    let key = tags_key_service(name);
    c.state.store.delete_aws_resource("tags", &key).await.map_err(store_error(c))?;
    c.add_tags(&key, &tags).await?;
    answer(c, name, &op).await
}

async fn update_service(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let (view, _) = service(c, i).await?;
    let mut doc = service_doc(c, &view.name).await?;
    let mut spec = view.spec.clone();
    read_spec(c, i, i.raw(), &mut spec, &mut doc).await?;
    let op = controller(c)?.acting_as(&c.principal.token_name).update(spec).await.map_err(|e| controller_error(c, e))?;
    put_doc(c, SERVICE_KIND, &view.name, &doc).await?;
    answer(c, &view.name, &op).await
}

async fn describe_service(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Read)?;
    let (view, _) = service(c, i).await?;
    Ok(json!({ "Service": service_json(c, &view).await? }))
}

async fn delete_service(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let (view, _) = service(c, i).await?;
    let mut described = service_json(c, &view).await?;
    let op = controller(c)?.acting_as(&c.principal.token_name).delete(&view.name).await.map_err(|e| controller_error(c, e))?;
    described["Status"] = json!("OPERATION_IN_PROGRESS");
    let store = &c.state.store;
    store.delete_aws_resource(SERVICE_KIND, &view.name).await.map_err(store_error(c))?;
    store.delete_aws_resource("tags", &tags_key_service(&view.name)).await.map_err(store_error(c))?;
    Ok(json!({ "Service": described, "OperationId": operation_id(&op) }))
}

async fn list_services(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Read)?;
    let max = i.opt_int("MaxResults", 1, 20)?.unwrap_or(20) as usize;
    let after = i.opt_str_len("NextToken", 1, 1024)?;
    let mut views = controller(c)?.list(after, max + 1).await.map_err(|e| controller_error(c, e))?;
    let next = (views.len() > max).then(|| views[max - 1].name.clone());
    views.truncate(max);
    let url = |v: &ServiceView| c.state.controller.as_ref().map(|ctl| bare_url(&ctl.url(&v.name))).unwrap_or_default();
    let mut updated = std::collections::HashMap::new();
    for v in &views {
        updated.insert(v.name.clone(), updated_at(c, v).await?);
    }
    let summaries: Vec<Value> = views
        .iter()
        .map(|v| {
            json!({
                "ServiceName": v.name,
                "ServiceId": map::service_id(&v.name, v.created_at),
                "ServiceArn": service_arn(c, v),
                "ServiceUrl": url(v),
                "CreatedAt": timestamp(v.created_at),
                "UpdatedAt": timestamp(updated.get(&v.name).copied().unwrap_or(v.created_at)),
                "Status": status(v),
            })
        })
        .collect();
    let mut out = json!({ "ServiceSummaryList": summaries });
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    Ok(out)
}

async fn start_deployment(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let (view, _) = service(c, i).await?;
    // StartDeployment's model has no InvalidStateException: an operation in progress is an
    // invalid request here.
    let op =
        controller(c)?.acting_as(&c.principal.token_name).deploy(&view.name, None).await.map_err(|e| match controller_error(c, e) {
            AwsError { kind: "InvalidStateException", message, .. } => AwsError::new("InvalidRequestException", message),
            other => other,
        })?;
    Ok(json!({ "OperationId": operation_id(&op) }))
}

async fn pause_or_resume(c: &Call<'_>, i: &Input<'_>, pause: bool) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let (view, _) = service(c, i).await?;
    let ctl = controller(c)?.acting_as(&c.principal.token_name);
    let op = if pause { ctl.pause(&view.name).await } else { ctl.resume(&view.name).await };
    answer(c, &view.name, &op.map_err(|e| controller_error(c, e))?).await
}

async fn list_operations(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Read)?;
    let (view, arn) = service(c, i).await?;
    let max = i.opt_int("MaxResults", 1, 20)?.unwrap_or(20) as usize;
    let after = i.opt_str_len("NextToken", 1, 1024)?;
    let mut ops = controller(c)?.operations(&view.name, after, max + 1).await.map_err(|e| controller_error(c, e))?;
    let next = (ops.len() > max).then(|| ops[max - 1].id.clone());
    ops.truncate(max);
    let list: Vec<Value> = ops
        .iter()
        .map(|o| {
            let mut v = json!({
                "Id": operation_id(o),
                "Type": o.kind.to_string(),
                "Status": o.status.to_string(),
                "TargetArn": arn,
                "StartedAt": timestamp(o.started_at),
                "UpdatedAt": timestamp(o.ended_at.unwrap_or(o.started_at)),
            });
            if let Some(end) = o.ended_at {
                v["EndedAt"] = timestamp(end);
            }
            v
        })
        .collect();
    let mut out = json!({ "OperationSummaryList": list });
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    Ok(out)
}

/// Names of configurations and connectors: 4–32 (or 40) letters, digits, `-` and `_`.
fn resource_name<'v>(i: &Input<'v>, member: &str, max: usize) -> Result<&'v str, AwsError> {
    let name = i.str_len(member, 4, max)?;
    let ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(i.violation(
            member,
            &Value::from(name),
            &format!("Member must satisfy regular expression pattern: [A-Za-z0-9][A-Za-z0-9\\-_]{{3,{}}}", max - 1),
        ));
    }
    Ok(name)
}

/// Which configuration revisions services are on.
async fn associated(c: &Call<'_>) -> Result<Vec<String>, AwsError> {
    Ok(service_docs(c).await?.into_iter().filter_map(|(_, d)| d.autoscaling_arn).collect())
}

async fn create_asc(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let name = resource_name(i, "AutoScalingConfigurationName", 32)?;
    if name == DEFAULT_ASC {
        return Err(i.invalid(format!("`{DEFAULT_ASC}` is App Runner's default configuration's name; choose another")));
    }
    let max_concurrency = i.opt_int("MaxConcurrency", 1, 200)?.unwrap_or(100) as u32;
    let min_size = i.opt_int("MinSize", 1, 25)?.unwrap_or(1) as u32;
    let max_size = i.opt_int("MaxSize", 1, 25)?.unwrap_or(25) as u32;
    if min_size > max_size {
        return Err(i.invalid(format!("MinSize ({min_size}) must not exceed MaxSize ({max_size})")));
    }
    let tags = c.read_tags(i, "Tags", "Key", "Value")?;
    let all = ascs(c).await?;
    let revision = all.iter().filter(|a| a.name == name).map(|a| a.revision).max().unwrap_or(0) + 1;
    if all.iter().filter(|a| a.name == name && a.deleted_at.is_none()).count() >= 5 {
        return Err(AwsError::new(
            "ServiceQuotaExceededException",
            format!("`{name}` has 5 active revisions, the most it may have; delete one"),
        ));
    }
    let asc =
        Asc { name: name.to_owned(), revision, id: random_id(), max_concurrency, min_size, max_size, created_at: now(), deleted_at: None };
    put_doc(c, ASC_KIND, &asc.key(), &asc).await?;
    c.add_tags(&asc.arn(c), &tags).await?;
    Ok(json!({ "AutoScalingConfiguration": asc.json(c, true, false) }))
}

async fn asc_named(c: &Call<'_>, i: &Input<'_>) -> Result<(Vec<Asc>, Asc), AwsError> {
    let arn = i.str_len("AutoScalingConfigurationArn", 1, 1011)?;
    let all = ascs(c).await?;
    let asc = find_asc(&all, arn).cloned().ok_or_else(|| not_found("auto scaling configuration", arn))?;
    Ok((all, asc))
}

async fn asc_json(c: &Call<'_>, all: &[Asc], asc: &Asc) -> Result<Value, AwsError> {
    let used = associated(c).await?.contains(&asc.arn(c));
    Ok(asc.json(c, latest_revision(all, &asc.name) == Some(asc.revision), used))
}

async fn describe_asc(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Read)?;
    let (all, asc) = asc_named(c, i).await?;
    Ok(json!({ "AutoScalingConfiguration": asc_json(c, &all, &asc).await? }))
}

async fn delete_asc(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let (all, asc) = asc_named(c, i).await?;
    if asc.is_default() {
        return Err(i.invalid("the default configuration cannot be deleted"));
    }
    let every = i.opt_bool("DeleteAllRevisions")?.unwrap_or(false);
    let used = associated(c).await?;
    let mut out = asc.clone();
    for mut a in all.into_iter().filter(|a| a.name == asc.name && (every || a.revision == asc.revision) && a.deleted_at.is_none()) {
        if used.contains(&a.arn(c)) {
            return Err(AwsError::new(
                "InvalidRequestException",
                format!("`{}` revision {} is used by a service; move the service off it first", a.name, a.revision),
            ));
        }
        a.deleted_at = Some(now());
        put_doc(c, ASC_KIND, &a.key(), &a).await?;
        if a.revision == asc.revision {
            out = a;
        }
    }
    Ok(json!({ "AutoScalingConfiguration": out.json(c, false, false) }))
}

async fn list_ascs(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Read)?;
    let name = i.opt_str_len("AutoScalingConfigurationName", 4, 32)?;
    let latest_only = i.opt_bool("LatestOnly")?.unwrap_or(true);
    let max = i.opt_int("MaxResults", 1, 100)?.unwrap_or(100) as usize;
    let start = i.page_start("NextToken")?;
    let all = ascs(c).await?;
    let used = associated(c).await?;
    let items: Vec<Value> = all
        .iter()
        .filter(|a| a.deleted_at.is_none() && name.is_none_or(|n| n == a.name))
        .filter(|a| !latest_only || latest_revision(&all, &a.name) == Some(a.revision))
        .map(|a| a.summary(c, latest_revision(&all, &a.name) == Some(a.revision), used.contains(&a.arn(c))))
        .collect();
    let (page, next) = super::page(items, start, max);
    Ok(with_next(json!({ "AutoScalingConfigurationSummaryList": page }), next))
}

fn with_next(mut v: Value, next: Option<String>) -> Value {
    if let Some(n) = next {
        v["NextToken"] = json!(n);
    }
    v
}

async fn create_vpc(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let name = resource_name(i, "VpcConnectorName", 40)?;
    let subnets = i.opt_strings("Subnets", 1, 16)?.ok_or_else(|| {
        i.invalid("1 validation error detected: Value null at 'subnets' failed to satisfy constraint: Member must not be null")
    })?;
    let ctl = controller(c)?;
    for s in &subnets {
        if let Err(e) = ctl.get_network(s).await {
            return Err(match e {
                ControllerError::NetworkNotFound(_) => i.invalid(format!(
                    "subnet `{s}` is not a berth network: a VPC connector's subnets are berth networks (`berth network create {s} --cidr …` makes one)"
                )),
                e => controller_error(c, e),
            });
        }
    }
    let groups = i.opt_strings("SecurityGroups", 0, 5)?.unwrap_or_default();
    let tags = c.read_tags(i, "Tags", "Key", "Value")?;
    let existing: Vec<Vpc> = docs(c, VPC_KIND).await?;
    let revision = existing.iter().filter(|v| v.name == name).map(|v| v.revision).max().unwrap_or(0) + 1;
    let vpc = Vpc {
        name: name.to_owned(),
        revision,
        id: random_id(),
        subnets: subnets.iter().map(|s| s.to_string()).collect(),
        security_groups: groups.iter().map(|s| s.to_string()).collect(),
        created_at: now(),
        deleted_at: None,
    };
    put_doc(c, VPC_KIND, &format!("{name}/{revision}"), &vpc).await?;
    c.add_tags(&vpc.arn(c), &tags).await?;
    Ok(json!({ "VpcConnector": vpc.json(c) }))
}

async fn vpc_named(c: &Call<'_>, i: &Input<'_>) -> Result<Vpc, AwsError> {
    let arn = i.str_len("VpcConnectorArn", 1, 1011)?;
    let all: Vec<Vpc> = docs(c, VPC_KIND).await?;
    let parts = arn_parts(arn, "vpcconnector").unwrap_or_default();
    let found = all.into_iter().find(|v| {
        parts.first() == Some(&v.name.as_str())
            && parts.get(1).is_none_or(|r| *r == v.revision.to_string())
            && parts.get(2).is_none_or(|id| *id == v.id)
    });
    found.ok_or_else(|| not_found("VPC connector", arn))
}

async fn describe_vpc(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Read)?;
    Ok(json!({ "VpcConnector": vpc_named(c, i).await?.json(c) }))
}

async fn delete_vpc(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let mut vpc = vpc_named(c, i).await?;
    if vpc.deleted_at.is_none() {
        let arn = vpc.arn(c);
        if let Some((svc, _)) = service_docs(c).await?.into_iter().find(|(_, d)| d.vpc_connector_arn.as_deref() == Some(arn.as_str())) {
            return Err(AwsError::new("InvalidRequestException", format!("service `{svc}` uses this connector; move it off first")));
        }
        vpc.deleted_at = Some(now());
        put_doc(c, VPC_KIND, &format!("{}/{}", vpc.name, vpc.revision), &vpc).await?;
    }
    Ok(json!({ "VpcConnector": vpc.json(c) }))
}

async fn list_vpcs(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Read)?;
    let max = i.opt_int("MaxResults", 1, 100)?.unwrap_or(100) as usize;
    let start = i.page_start("NextToken")?;
    let all: Vec<Vpc> = docs(c, VPC_KIND).await?;
    let items: Vec<Value> = all.iter().filter(|v| v.deleted_at.is_none()).map(|v| v.json(c)).collect();
    let (page, next) = super::page(items, start, max);
    Ok(with_next(json!({ "VpcConnectors": page }), next))
}

fn tags_key_service(name: &str) -> String {
    format!("apprunner/service/{name}")
}

/// The key tags of an App Runner resource are kept under.
async fn tagged(c: &Call<'_>, i: &Input<'_>) -> Result<String, AwsError> {
    let arn = i.str_len("ResourceArn", 1, 1011)?;
    let known = if arn_parts(arn, "service").is_some() {
        let mut probe = serde_json::Map::new();
        probe.insert("ServiceArn".into(), json!(arn));
        let v = Value::Object(probe);
        let (view, _) = service(c, &c.input(&v)).await?;
        return Ok(tags_key_service(&view.name));
    } else if arn_parts(arn, "autoscalingconfiguration").is_some() {
        find_asc(&ascs(c).await?, arn).map(|a| a.arn(c))
    } else if arn_parts(arn, "vpcconnector").is_some() {
        docs::<Vpc>(c, VPC_KIND).await?.into_iter().map(|v| v.arn(c)).find(|a| a == arn)
    } else {
        None
    };
    known.ok_or_else(|| not_found("resource", arn))
}

async fn tag_resource(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let key = tagged(c, i).await?;
    i.list("Tags", 0, 200)?;
    let tags = c.read_tags(i, "Tags", "Key", "Value")?;
    c.add_tags(&key, &tags).await?;
    Ok(json!({}))
}

async fn untag_resource(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Admin)?;
    let key = tagged(c, i).await?;
    let keys = i.opt_strings("TagKeys", 0, 200)?.ok_or_else(|| {
        i.invalid("1 validation error detected: Value null at 'tagKeys' failed to satisfy constraint: Member must not be null")
    })?;
    c.remove_tags(&key, &keys).await?;
    Ok(json!({}))
}

async fn list_tags(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Read)?;
    let key = tagged(c, i).await?;
    Ok(json!({ "Tags": tags_json(&c.tags(&key).await?, "Key", "Value") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_split_into_their_resource_parts() {
        let arn = "arn:aws:apprunner:us-east-1:000000000000:service/web-app/0123456789abcdef0123456789abcdef";
        assert_eq!(arn_parts(arn, "service"), Some(vec!["web-app", "0123456789abcdef0123456789abcdef"]));
        assert_eq!(arn_parts(arn, "vpcconnector"), None);
        assert_eq!(arn_parts("arn:aws:ecr:us-east-1:000000000000:service/web-app/x", "service"), None);
        assert_eq!(arn_parts("service/web-app", "service"), None);
        let all = vec![Asc::default_config()];
        assert!(find_asc(&all, "arn:aws:apprunner:eu-west-1:000000000000:autoscalingconfiguration/DefaultConfiguration").is_some());
        assert!(find_asc(
            &all,
            "arn:aws:apprunner:eu-west-1:000000000000:autoscalingconfiguration/DefaultConfiguration/1/00000000000000000000000000000001"
        )
        .is_some());
        assert!(find_asc(&all, "arn:aws:apprunner:eu-west-1:000000000000:autoscalingconfiguration/DefaultConfiguration/2").is_none());
        assert_eq!(bare_url("http://web.localhost:8080"), "web.localhost:8080");
    }
}
