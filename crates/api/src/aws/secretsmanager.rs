//! Secrets Manager (2017-10-17) over berth's secret store: the same secrets the CLI, the console
//! and services see. AWS's staging labels `AWSCURRENT`, `AWSPREVIOUS` and `AWSPENDING` are
//! berth's `CURRENT`, `PREVIOUS` and `PENDING`; other labels pass as they are. Values are text
//! (`SecretString`). A `ClientRequestToken` makes a write idempotent: the version it made is
//! remembered, and the same token with another value is refused. RotateSecret runs berth's own
//! rotators, set up with `berth secret rotate`.

use berth_core::Action;
use berth_secrets::{Reference, SecretError, SecretInfo, Selector};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::input::Input;
use super::{tags_json, timestamp, AwsError, Call};
use crate::now;

/// Where the versions made for request tokens are remembered, as `<secret>\0<token>`.
const TOKENS_KIND: &str = "sm-request-token";

pub async fn call(c: &Call<'_>, op: &str, v: &Value) -> Option<Result<Value, AwsError>> {
    let i = c.input(v);
    Some(match op {
        "CreateSecret" => create(c, &i).await,
        "GetSecretValue" => get_value(c, &i).await,
        "PutSecretValue" => put_value(c, &i).await,
        "DescribeSecret" => describe(c, &i).await,
        "ListSecrets" => list(c, &i).await,
        "UpdateSecret" => update(c, &i).await,
        "UpdateSecretVersionStage" => update_stage(c, &i).await,
        "RotateSecret" => rotate(c, &i).await,
        "DeleteSecret" => delete(c, &i).await,
        "RestoreSecret" => restore(c, &i).await,
        "GetRandomPassword" => random_password(&i),
        "TagResource" => tag(c, &i).await,
        "UntagResource" => untag(c, &i).await,
        _ => return None,
    })
}

/// berth's label for an AWS staging label.
fn label_in(aws: &str) -> String {
    aws.strip_prefix("AWS").filter(|l| ["CURRENT", "PREVIOUS", "PENDING"].contains(l)).unwrap_or(aws).to_owned()
}

/// The AWS staging label for one of berth's.
fn label_out(berth: &str) -> String {
    if ["CURRENT", "PREVIOUS", "PENDING"].contains(&berth) {
        format!("AWS{berth}")
    } else {
        berth.to_owned()
    }
}

fn not_found() -> AwsError {
    AwsError::new("ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
}

fn secret_error(c: &Call<'_>, e: SecretError) -> AwsError {
    match e {
        SecretError::NotFound(_) => not_found(),
        SecretError::NoVersion { .. } => AwsError::new(
            "ResourceNotFoundException",
            "Secrets Manager can't find the specified secret value for staging label or version.",
        ),
        SecretError::VersionExists { id, .. } => AwsError::new(
            "ResourceExistsException",
            format!("A version with ClientRequestToken {id} already exists with another value; use a new token for a new version"),
        ),
        SecretError::Exists(n) => {
            AwsError::new("ResourceExistsException", format!("The operation failed because the secret {n} already exists."))
        }
        SecretError::Deleted { .. } => {
            AwsError::new("InvalidRequestException", "You can't perform this operation on the secret because it was marked for deletion.")
        }
        SecretError::NotDeleted(n) => AwsError::new("InvalidRequestException", format!("secret {n} is not scheduled for deletion")),
        SecretError::RotationBusy(m) => AwsError::new("InvalidRequestException", m),
        SecretError::Rotation(m) => AwsError::new("InvalidRequestException", m),
        SecretError::LabelNeeded { .. } => AwsError::new(
            "InvalidParameterException",
            "AWSCURRENT cannot be removed, only moved: give MoveToVersionId and RemoveFromVersionId",
        ),
        e @ (SecretError::InvalidName(_)
        | SecretError::InvalidVersionId(_)
        | SecretError::InvalidLabel(_)
        | SecretError::TooLarge(_)
        | SecretError::Empty
        | SecretError::NotJson { .. }
        | SecretError::NoKey { .. }
        | SecretError::RecoveryWindow(_)) => AwsError::new("InvalidParameterException", e.to_string()),
        e => c.internal(e),
    }
}

/// The stable six-character suffix AWS puts on a secret's ARN.
fn suffix(info: &SecretInfo) -> String {
    berth_core::aws::secret_suffix(&info.name, info.created_at)
}

fn arn(c: &Call<'_>, info: &SecretInfo) -> String {
    berth_core::aws::secret_arn(&c.region, &info.name, info.created_at)
}

/// The secret a `SecretId` names: a name, a full ARN, or an ARN without its suffix.
async fn resolve(c: &Call<'_>, i: &Input<'_>) -> Result<SecretInfo, AwsError> {
    let id = i.str_len("SecretId", 1, 2048)?;
    let name = match id.strip_prefix("arn:aws:secretsmanager:").and_then(|rest| rest.splitn(3, ':').nth(2)) {
        Some(resource) => resource.strip_prefix("secret:").ok_or_else(not_found)?,
        None => id,
    };
    match c.state.secrets.describe(name).await {
        Ok(info) if !id.starts_with("arn:") || name == id || info.name == name => Ok(info),
        Err(SecretError::NotFound(_)) if id.starts_with("arn:") => {
            // A full ARN: the name is before the `-XXXXXX` suffix, which must be the secret's.
            let (base, sfx) = name.rsplit_once('-').ok_or_else(not_found)?;
            let info = c.state.secrets.describe(base).await.map_err(|e| secret_error(c, e))?;
            if suffix(&info) == sfx {
                Ok(info)
            } else {
                Err(not_found())
            }
        }
        Ok(info) => Ok(info),
        Err(e) => Err(secret_error(c, e)),
    }
}

fn stages(info: &SecretInfo) -> Value {
    let mut map = serde_json::Map::new();
    for v in info.versions.iter().filter(|v| !v.labels.is_empty()) {
        map.insert(v.id.clone(), json!(v.labels.iter().map(|l| label_out(l)).collect::<Vec<_>>()));
    }
    Value::Object(map)
}

fn tags_key(name: &str) -> String {
    format!("secretsmanager/secret/{name}")
}

/// The value a write carries: `SecretString` (berth keeps text; `SecretBinary` is refused).
fn value<'a>(i: &Input<'a>, required: bool) -> Result<Option<&'a str>, AwsError> {
    if i.has("SecretBinary") {
        return Err(i.invalid("berth keeps secret values as text: send SecretString (base64 it yourself for binary data)"));
    }
    let v = i.opt_str_len("SecretString", 1, 65536)?;
    if required && v.is_none() {
        return Err(i.invalid("You must provide either SecretString or SecretBinary."));
    }
    Ok(v)
}

/// The version an earlier request with this `ClientRequestToken` made, if one did: refused when
/// it carried another value.
async fn earlier(c: &Call<'_>, name: &str, token: Option<&str>, value: &str) -> Result<Option<String>, AwsError> {
    let Some(token) = token else { return Ok(None) };
    let doc = c.state.store.get_aws_resource(TOKENS_KIND, &format!("{name}\0{token}")).await.map_err(|e| c.internal(e))?;
    let Some(doc) = doc else { return Ok(None) };
    let hash = hex::encode(Sha256::digest(value.as_bytes()));
    if doc.doc["sha256"] != hash.as_str() {
        return Err(AwsError::new(
            "ResourceExistsException",
            "You can't modify an existing version, you can only create a new version: this ClientRequestToken already made a version with another value",
        ));
    }
    Ok(doc.doc["version"].as_str().map(str::to_owned))
}

async fn remember(c: &Call<'_>, name: &str, token: Option<&str>, value: &str, version: &str) -> Result<(), AwsError> {
    let Some(token) = token else { return Ok(()) };
    let doc = json!({"version": version, "sha256": hex::encode(Sha256::digest(value.as_bytes()))});
    c.state.store.put_aws_resource(TOKENS_KIND, &format!("{name}\0{token}"), &doc, now()).await.map_err(|e| c.internal(e))
}

fn request_token<'a>(i: &Input<'a>) -> Result<Option<&'a str>, AwsError> {
    i.opt_str_len("ClientRequestToken", 32, 64)
}

async fn create(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = i.str_len("Name", 1, 512)?;
    c.require(Action::WriteSecret(name))?;
    let description = i.opt_str_len("Description", 0, 2048)?.unwrap_or_default();
    let token = request_token(i)?;
    let value = value(i, false)?.ok_or_else(|| i.invalid("berth keeps a secret with a value: give SecretString"))?;
    let tags = c.read_tags(i, "Tags", "Key", "Value")?;
    if let Some(version) = earlier(c, name, token, value).await? {
        let info = c.state.secrets.describe(name).await.map_err(|e| secret_error(c, e))?;
        return Ok(json!({"ARN": arn(c, &info), "Name": name, "VersionId": version}));
    }
    let who = &c.principal.token_name;
    // The request token becomes the version's id, as on AWS.
    let version = c.state.secrets.create_version(name, description, value, token, who, now()).await.map_err(|e| secret_error(c, e))?;
    remember(c, name, token, value, &version.id).await?;
    c.add_tags(&tags_key(name), &tags).await?;
    let info = c.state.secrets.describe(name).await.map_err(|e| secret_error(c, e))?;
    Ok(json!({"ARN": arn(c, &info), "Name": name, "VersionId": version.id}))
}

async fn get_value(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let info = resolve(c, i).await?;
    c.require(Action::ReadSecret(&info.name))?;
    let selector = match (i.opt_str_len("VersionId", 32, 64)?, i.opt_str_len("VersionStage", 1, 256)?) {
        (Some(v), _) => Selector::Version(v.to_owned()),
        (None, Some(stage)) => Selector::Label(label_in(stage)),
        (None, None) => Selector::default(),
    };
    let reference: Reference = info.name.parse().map_err(|e| secret_error(c, e))?;
    let (plain, version) =
        c.state.secrets.read(&reference, &selector, &c.principal.token_name, now()).await.map_err(|e| secret_error(c, e))?;
    if let (Some(stage), Selector::Version(_)) = (i.opt_str("VersionStage")?, &selector) {
        let v = info.versions.iter().find(|v| v.id == version);
        if !v.is_some_and(|v| v.labels.contains(&label_in(stage))) {
            return Err(AwsError::new(
                "ResourceNotFoundException",
                "Secrets Manager can't find the specified secret value for staging label or version.",
            ));
        }
    }
    let v = info.versions.iter().find(|v| v.id == version);
    Ok(json!({
        "ARN": arn(c, &info),
        "Name": info.name,
        "VersionId": version,
        "SecretString": plain.expose(),
        "VersionStages": v.map(|v| v.labels.iter().map(|l| label_out(l)).collect::<Vec<_>>()).unwrap_or_default(),
        "CreatedDate": timestamp(v.map_or(info.created_at, |v| v.created_at)),
    }))
}

async fn put_value(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let info = resolve(c, i).await?;
    c.require(Action::WriteSecret(&info.name))?;
    let token = request_token(i)?;
    let value = value(i, true)?.unwrap_or_default();
    let labels: Vec<String> = i.opt_strings("VersionStages", 1, 20)?.unwrap_or_default().iter().map(|l| label_in(l)).collect();
    let version = match earlier(c, &info.name, token, value).await? {
        Some(v) => v,
        None => {
            let who = &c.principal.token_name;
            let made = c.state.secrets.put_version(&info.name, value, &labels, token, who, now()).await.map_err(|e| secret_error(c, e))?;
            remember(c, &info.name, token, value, &made.id).await?;
            made.id
        }
    };
    let now_info = c.state.secrets.describe(&info.name).await.map_err(|e| secret_error(c, e))?;
    let v = now_info.versions.iter().find(|v| v.id == version);
    Ok(json!({
        "ARN": arn(c, &info),
        "Name": info.name,
        "VersionId": version,
        "VersionStages": v.map(|v| v.labels.iter().map(|l| label_out(l)).collect::<Vec<_>>()).unwrap_or_default(),
    }))
}

async fn described(c: &Call<'_>, info: &SecretInfo) -> Result<Value, AwsError> {
    let mut v = json!({
        "ARN": arn(c, info),
        "Name": info.name,
        "LastChangedDate": timestamp(info.updated_at),
        "CreatedDate": timestamp(info.created_at),
    });
    // As on AWS: told only for a secret that has had rotation set up.
    if let Some(r) = &info.rotation {
        v["RotationEnabled"] = r.enabled.into();
    }
    if !info.description.is_empty() {
        v["Description"] = info.description.clone().into();
    }
    if let Some(at) = info.deleted_at {
        v["DeletedDate"] = timestamp(at);
    }
    if let Some(r) = &info.rotation {
        if let Some(at) = r.status.last_rotated_at {
            v["LastRotatedDate"] = timestamp(at);
        }
        if let Some(at) = r.status.next_at.filter(|_| r.enabled) {
            v["NextRotationDate"] = timestamp(at);
        }
    }
    let tags = c.tags(&tags_key(&info.name)).await?;
    if !tags.is_empty() {
        v["Tags"] = tags_json(&tags, "Key", "Value");
    }
    Ok(v)
}

async fn describe(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let info = resolve(c, i).await?;
    c.require(Action::Read)?;
    let mut v = described(c, &info).await?;
    v["VersionIdsToStages"] = stages(&info);
    Ok(v)
}

async fn list(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    c.require(Action::Read)?;
    let max = i.opt_int("MaxResults", 1, 100)?.unwrap_or(100) as usize;
    let start = i.page_start("NextToken")?;
    let planned = i.opt_bool("IncludePlannedDeletion")?.unwrap_or(false);
    let mut filters = Vec::new();
    for f in i.structures("Filters", 0, 10)? {
        let key = f.opt_enum("Key", &["description", "name", "tag-key", "tag-value", "primary-region", "owning-service", "all"])?;
        let values: Vec<String> = f.opt_strings("Values", 1, 10)?.unwrap_or_default().into_iter().map(str::to_owned).collect();
        filters.push((key.unwrap_or("all").to_owned(), values));
    }
    let sort_desc = i.opt_enum("SortOrder", &["asc", "desc"])? == Some("desc");
    let mut chosen = Vec::new();
    for info in c.state.secrets.list().await.map_err(|e| secret_error(c, e))? {
        if info.deleted_at.is_some() && !planned {
            continue;
        }
        let tags = c.tags(&tags_key(&info.name)).await?;
        let matches = |key: &str, value: &str| {
            // A leading `!` negates; matching is by prefix, as AWS does.
            let (negate, value) = value.strip_prefix('!').map_or((false, value), |v| (true, v));
            let hit = |s: &str| s.starts_with(value);
            let found = match key {
                "name" => hit(&info.name),
                "description" => hit(&info.description),
                "tag-key" => tags.iter().any(|(k, _)| hit(k)),
                "tag-value" => tags.iter().any(|(_, v)| hit(v)),
                "all" => hit(&info.name) || hit(&info.description) || tags.iter().any(|(k, v)| hit(k) || hit(v)),
                _ => false,
            };
            found != negate
        };
        if filters.iter().all(|(k, values)| values.iter().any(|v| matches(k, v))) {
            chosen.push(info);
        }
    }
    if sort_desc {
        chosen.reverse();
    }
    let more = chosen.len() > start + max;
    let mut list = Vec::new();
    for info in chosen.iter().skip(start).take(max) {
        let mut v = described(c, info).await?;
        v["SecretVersionsToStages"] = stages(info);
        list.push(v);
    }
    let mut out = json!({ "SecretList": list });
    if more {
        out["NextToken"] = (start + max).to_string().into();
    }
    Ok(out)
}

async fn update(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let info = resolve(c, i).await?;
    c.require(Action::WriteSecret(&info.name))?;
    let who = &c.principal.token_name;
    if let Some(d) = i.opt_str_len("Description", 0, 2048)? {
        c.state.secrets.set_description(&info.name, d, who, now()).await.map_err(|e| secret_error(c, e))?;
    }
    let mut out = json!({"ARN": arn(c, &info), "Name": info.name});
    if let Some(value) = value(i, false)? {
        let token = request_token(i)?;
        let version = match earlier(c, &info.name, token, value).await? {
            Some(v) => v,
            None => {
                let made = c.state.secrets.put_version(&info.name, value, &[], token, who, now()).await.map_err(|e| secret_error(c, e))?;
                remember(c, &info.name, token, value, &made.id).await?;
                made.id
            }
        };
        out["VersionId"] = version.into();
    }
    Ok(out)
}

async fn update_stage(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let info = resolve(c, i).await?;
    c.require(Action::WriteSecret(&info.name))?;
    let stage = i.str_len("VersionStage", 1, 256)?;
    let label = label_in(stage);
    let holder = info.versions.iter().find(|v| v.labels.contains(&label)).map(|v| v.id.clone());
    let remove = i.opt_str_len("RemoveFromVersionId", 32, 64)?;
    let move_to = i.opt_str_len("MoveToVersionId", 32, 64)?;
    if let (Some(h), Some(m)) = (&holder, move_to) {
        if remove != Some(h.as_str()) && h != m {
            return Err(AwsError::new(
                "InvalidParameterException",
                format!("The parameter RemoveFromVersionId can't be empty. Staging label {stage} is currently attached to version {h}, so you must explicitly reference that version in RemoveFromVersionId."),
            ));
        }
    }
    if let Some(r) = remove {
        if holder.as_deref() != Some(r) {
            return Err(AwsError::new("InvalidParameterException", format!("Version {r} does not have the staging label {stage}.")));
        }
    }
    let who = &c.principal.token_name;
    let done = match move_to {
        Some(m) => c.state.secrets.label(&info.name, &label, m, who, now()).await,
        None if remove.is_some() => c.state.secrets.unlabel(&info.name, &label, who, now()).await,
        None => return Err(i.invalid("give MoveToVersionId, RemoveFromVersionId or both")),
    };
    done.map_err(|e| secret_error(c, e))?;
    Ok(json!({"ARN": arn(c, &info), "Name": info.name}))
}

async fn rotate(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let info = resolve(c, i).await?;
    c.require(Action::WriteSecret(&info.name))?;
    if i.has("RotationLambdaARN") {
        return Err(AwsError::new(
            "InvalidRequestException",
            format!(
                "berth runs no Lambda functions: it rotates with its own rotators (mysql, postgresql or a command); set one up with `berth secret rotate {} --rotator …`, then RotateSecret runs it",
                info.name
            ),
        ));
    }
    if i.has("RotationRules") {
        return Err(AwsError::new(
            "InvalidRequestException",
            format!("set the schedule of berth's rotation with `berth secret rotate {} --schedule …`", info.name),
        ));
    }
    if info.rotation.is_none() {
        return Err(AwsError::new(
            "InvalidRequestException",
            format!(
                "secret {} has no rotation set up: berth rotates with its own rotators; set one up with `berth secret rotate {} --rotator mysql|postgresql|command …`",
                info.name, info.name
            ),
        ));
    }
    let now_too = i.opt_bool("RotateImmediately")?.unwrap_or(true);
    let rotation =
        c.state.secrets.rotate(&info.name, None, now_too, &c.principal.token_name, now()).await.map_err(|e| secret_error(c, e))?;
    let mut out = json!({"ARN": arn(c, &info), "Name": info.name});
    if let Some(v) = rotation.status.version {
        out["VersionId"] = v.into();
    }
    Ok(out)
}

async fn delete(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let info = resolve(c, i).await?;
    c.require(Action::WriteSecret(&info.name))?;
    let days = i.opt_int("RecoveryWindowInDays", 7, 30)?;
    let force = i.opt_bool("ForceDeleteWithoutRecovery")?.unwrap_or(false);
    let who = &c.principal.token_name;
    let deletion = if force {
        if days.is_some() {
            return Err(i.invalid("You can't use ForceDeleteWithoutRecovery in conjunction with RecoveryWindowInDays."));
        }
        c.state.secrets.purge(&info.name, who, now()).await.map_err(|e| secret_error(c, e))?;
        c.state.store.delete_aws_resource("tags", &tags_key(&info.name)).await.map_err(|e| c.internal(e))?;
        now()
    } else if let Some(at) = info.purge_at {
        // Already scheduled: AWS answers with the date set then.
        at
    } else {
        let days = u32::try_from(days.unwrap_or(30)).unwrap_or(30);
        c.state.secrets.delete(&info.name, days, who, now()).await.map_err(|e| secret_error(c, e))?
    };
    Ok(json!({"ARN": arn(c, &info), "Name": info.name, "DeletionDate": timestamp(deletion)}))
}

async fn restore(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let info = resolve(c, i).await?;
    c.require(Action::WriteSecret(&info.name))?;
    if info.purge_at.is_some() {
        c.state.secrets.restore(&info.name, &c.principal.token_name, now()).await.map_err(|e| secret_error(c, e))?;
    }
    Ok(json!({"ARN": arn(c, &info), "Name": info.name}))
}

fn random_password(i: &Input<'_>) -> Result<Value, AwsError> {
    let len = i.opt_int("PasswordLength", 1, 4096)?.unwrap_or(32) as usize;
    let exclude = i.opt_str_len("ExcludeCharacters", 0, 4096)?.unwrap_or_default();
    let flag = |n: &str| i.opt_bool(n).map(|b| b.unwrap_or(false));
    let (no_digits, no_punct, no_upper, no_lower, space) =
        (flag("ExcludeNumbers")?, flag("ExcludePunctuation")?, flag("ExcludeUppercase")?, flag("ExcludeLowercase")?, flag("IncludeSpace")?);
    let each = i.opt_bool("RequireEachIncludedType")?.unwrap_or(true);
    let mut classes: Vec<Vec<char>> = Vec::new();
    let keep = |set: &str| set.chars().filter(|ch| !exclude.contains(*ch)).collect::<Vec<_>>();
    if !no_lower {
        classes.push(keep("abcdefghijklmnopqrstuvwxyz"));
    }
    if !no_upper {
        classes.push(keep("ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
    }
    if !no_digits {
        classes.push(keep("0123456789"));
    }
    if !no_punct {
        classes.push(keep("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"));
    }
    if space {
        classes.push(keep(" "));
    }
    classes.retain(|c| !c.is_empty());
    if classes.is_empty() || (each && classes.len() > len) {
        return Err(
            i.invalid("no password can be made: every character class is excluded, or there are more required classes than characters")
        );
    }
    let all: Vec<char> = classes.concat();
    let pick = |set: &[char]| set[usize::from(rand::random::<u16>()) % set.len()];
    loop {
        let password: Vec<char> = (0..len).map(|_| pick(&all)).collect();
        if !each || classes.iter().all(|c| password.iter().any(|p| c.contains(p))) {
            return Ok(json!({"RandomPassword": password.into_iter().collect::<String>()}));
        }
    }
}

async fn tag(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let info = resolve(c, i).await?;
    c.require(Action::WriteSecret(&info.name))?;
    i.list("Tags", 0, 200)?;
    let tags = c.read_tags(i, "Tags", "Key", "Value")?;
    c.add_tags(&tags_key(&info.name), &tags).await?;
    Ok(json!({}))
}

async fn untag(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let info = resolve(c, i).await?;
    c.require(Action::WriteSecret(&info.name))?;
    let keys = i.opt_strings("TagKeys", 0, 200)?.ok_or_else(|| {
        i.invalid("1 validation error detected: Value null at 'TagKeys' failed to satisfy constraint: Member must not be null")
    })?;
    c.remove_tags(&tags_key(&info.name), &keys).await?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_labels_are_aws_ones_outside() {
        for (aws, berth) in
            [("AWSCURRENT", "CURRENT"), ("AWSPREVIOUS", "PREVIOUS"), ("AWSPENDING", "PENDING"), ("blue", "blue"), ("AWSOTHER", "AWSOTHER")]
        {
            assert_eq!(label_in(aws), berth);
            assert_eq!(label_out(berth), aws);
        }
    }

    #[test]
    fn random_passwords_follow_the_request() {
        let v = json!({"PasswordLength": 40, "ExcludePunctuation": true, "ExcludeCharacters": "aeiou"});
        for _ in 0..50 {
            let out = random_password(&Input::new(&v, "InvalidParameterException")).unwrap_or_default();
            let p = out["RandomPassword"].as_str().unwrap_or_default();
            assert_eq!(p.len(), 40);
            assert!(p.chars().all(|ch| ch.is_ascii_alphanumeric() && !"aeiou".contains(ch)), "{p}");
            assert!(p.chars().any(|ch| ch.is_ascii_digit()) && p.chars().any(|ch| ch.is_ascii_uppercase()), "{p}");
        }
        let none = json!({"ExcludeNumbers": true, "ExcludePunctuation": true, "ExcludeUppercase": true, "ExcludeLowercase": true});
        assert!(random_password(&Input::new(&none, "InvalidParameterException")).is_err());
    }
}
