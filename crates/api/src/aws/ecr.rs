//! ECR (2015-09-21) over berth's registry: repositories with ECR's four tag mutability modes,
//! images, lifecycle policies mapped onto berth's rules, tags, and GetAuthorizationToken, whose
//! password logs in to berth's registry (`aws ecr get-login-password | podman login …`).

use berth_core::{Action, Digest, LifecycleRule, Pattern, Reference, TagMutability, TagPolicy};
use berth_registry::{Code, RegistryError};
use berth_store::{ManifestRecord, RepositoryRecord};
use serde_json::{json, Value};

use super::input::Input;
use super::{page, tags_json, timestamp, AwsError, Call};
use crate::auth::REGISTRY_LOGIN_TTL_SECS;
use crate::now;

/// Where each repository's lifecycle policy text is kept (GetLifecyclePolicy answers it as put).
const POLICY_KIND: &str = "ecr-lifecycle";

/// Answers ECR operation `op`; `None` for an operation berth does not know.
pub async fn call(c: &Call<'_>, op: &str, v: &Value) -> Option<Result<Value, AwsError>> {
    let i = c.input(v);
    Some(match op {
        "GetAuthorizationToken" => authorization_token(c, &i),
        "CreateRepository" => create_repository(c, &i).await,
        "DescribeRepositories" => describe_repositories(c, &i).await,
        "DeleteRepository" => delete_repository(c, &i).await,
        "PutImageTagMutability" => put_tag_mutability(c, &i).await,
        "DescribeImages" => describe_images(c, &i).await,
        "ListImages" => list_images(c, &i).await,
        "BatchGetImage" => batch_get_image(c, &i).await,
        "BatchDeleteImage" => batch_delete_image(c, &i).await,
        "PutLifecyclePolicy" => put_lifecycle_policy(c, &i).await,
        "GetLifecyclePolicy" => get_lifecycle_policy(c, &i).await,
        "DeleteLifecyclePolicy" => delete_lifecycle_policy(c, &i).await,
        "TagResource" => tag_resource(c, &i).await,
        "UntagResource" => untag_resource(c, &i).await,
        "ListTagsForResource" => list_tags(c, &i).await,
        _ => return None,
    })
}

fn registry_error(c: &Call<'_>, name: &str, e: RegistryError) -> AwsError {
    if e.status.is_server_error() {
        return c.internal(e.message);
    }
    match e.code {
        Code::NameUnknown => not_found(name),
        Code::NameInvalid if e.status == axum::http::StatusCode::CONFLICT => AwsError::new(
            "RepositoryAlreadyExistsException",
            format!("The repository with name '{name}' already exists in the registry with id '{}'", super::ACCOUNT),
        ),
        _ => AwsError::new("InvalidParameterException", e.message),
    }
}

fn not_found(name: &str) -> AwsError {
    AwsError::new(
        "RepositoryNotFoundException",
        format!("The repository with name '{name}' does not exist in the registry with id '{}'", super::ACCOUNT),
    )
}

/// ECR's repository name rule, which is the distribution spec's: lower-case components
/// separated by `.`, `_`, `__`, `-`s and `/`.
fn valid_name(name: &str) -> bool {
    name.parse::<berth_core::RepositoryName>().is_ok()
}

fn repository_name<'a>(i: &Input<'a>) -> Result<&'a str, AwsError> {
    let name = i.str_len("repositoryName", 2, 256)?;
    if !valid_name(name) {
        return Err(i.violation(
            "repositoryName",
            &Value::from(name),
            "Member must satisfy regular expression pattern: (?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*",
        ));
    }
    Ok(name)
}

/// The tag policy a request asks for (`imageTagMutability` and its exclusion filters).
fn tag_policy(i: &Input<'_>) -> Result<Option<TagPolicy>, AwsError> {
    let modes = ["MUTABLE", "IMMUTABLE", "IMMUTABLE_WITH_EXCLUSION", "MUTABLE_WITH_EXCLUSION"];
    let mode = i.opt_enum("imageTagMutability", &modes)?;
    let mut exclusions = Vec::new();
    for f in i.structures("imageTagMutabilityExclusionFilters", 1, 5)? {
        f.opt_enum("filterType", &["WILDCARD"])?.ok_or_else(|| f.invalid("an exclusion filter needs filterType WILDCARD"))?;
        let filter = f.str_len("filter", 1, 128)?;
        if !filter.bytes().all(|b| b.is_ascii_alphanumeric() || b"._*-".contains(&b)) {
            return Err(f.violation(
                "filter",
                &Value::from(filter),
                "Member must satisfy regular expression pattern: ^[0-9a-zA-Z._*-]{1,128}",
            ));
        }
        exclusions.push(Pattern::new(filter));
    }
    let Some(mode) = mode else {
        return if exclusions.is_empty() {
            Ok(None)
        } else {
            Err(i.invalid("imageTagMutabilityExclusionFilters need an imageTagMutability *_WITH_EXCLUSION"))
        };
    };
    let m: TagMutability = mode.parse().map_err(|e: berth_core::PolicyError| i.invalid(e.to_string()))?;
    TagPolicy::new(m, exclusions).map(Some).map_err(|e| i.invalid(e.to_string()))
}

fn exclusions_json(p: &TagPolicy) -> Value {
    Value::Array(p.exclusions.iter().map(|e| json!({"filterType": "WILDCARD", "filter": e.as_str()})).collect())
}

fn repository_json(c: &Call<'_>, r: &RepositoryRecord) -> Value {
    let mut v = json!({
        "repositoryArn": c.arn(&format!("repository/{}", r.name)),
        "registryId": super::ACCOUNT,
        "repositoryName": r.name,
        "repositoryUri": format!("{}/{}", c.host, r.name),
        "createdAt": timestamp(r.created_at),
        "imageTagMutability": r.tag_policy.mutability.as_str(),
        "imageScanningConfiguration": {"scanOnPush": false},
        "encryptionConfiguration": {"encryptionType": "AES256"},
    });
    if !r.tag_policy.exclusions.is_empty() {
        v["imageTagMutabilityExclusionFilters"] = exclusions_json(&r.tag_policy);
    }
    v
}

fn tags_key(name: &str) -> String {
    format!("ecr/repository/{name}")
}

fn authorization_token(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let ids = i.opt_strings("registryIds", 1, 10)?.unwrap_or_else(|| vec![super::ACCOUNT]);
    let expires = now() + REGISTRY_LOGIN_TTL_SECS;
    let password = c.state.auth.registry_login(&c.principal.token_id, expires);
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
    let scheme = if c.https { "https" } else { "http" };
    let data: Vec<Value> = ids
        .iter()
        .map(|_| json!({"authorizationToken": token, "expiresAt": timestamp(expires), "proxyEndpoint": format!("{scheme}://{}", c.host)}))
        .collect();
    Ok(json!({ "authorizationData": data }))
}

async fn create_repository(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = repository_name(i)?;
    c.require(Action::Push(name))?;
    let policy = tag_policy(i)?.unwrap_or_default();
    if let Some(enc) = i.nested("encryptionConfiguration")? {
        match enc.opt_enum("encryptionType", &["AES256", "KMS", "KMS_DSSE"])? {
            Some("AES256") | None => {}
            Some(other) => {
                return Err(
                    i.invalid(format!("encryptionType {other} needs AWS KMS, which berth does not have; use AES256 (berth's storage)"))
                )
            }
        }
    }
    let tags = c.read_tags(i, "tags", "Key", "Value")?;
    let rec = c.state.registry.create_repository(name, policy).await.map_err(|e| registry_error(c, name, e))?;
    c.add_tags(&tags_key(name), &tags).await?;
    Ok(json!({ "repository": repository_json(c, &rec) }))
}

async fn describe_repositories(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let names = i.opt_strings("repositoryNames", 1, 100)?;
    let max = i.opt_int("maxResults", 1, 1000)?.unwrap_or(100) as usize;
    if names.is_some() && (i.has("maxResults") || i.has("nextToken")) {
        return Err(i.invalid("maxResults and nextToken cannot be used with repositoryNames"));
    }
    let repos = match names {
        Some(names) => {
            let mut out = Vec::new();
            for n in names {
                c.require(Action::Pull(n))?;
                out.push(c.state.registry.repository(n).await.map_err(|e| registry_error(c, n, e))?);
            }
            out
        }
        None => {
            let all = c.state.registry.repositories(None, usize::MAX).await.map_err(|e| registry_error(c, "", e))?;
            all.into_iter().filter(|r| c.principal.allows(Action::Pull(&r.name))).collect()
        }
    };
    let (repos, next) = page(repos, i.page_start("nextToken")?, max);
    Ok(with_next(json!({ "repositories": repos.iter().map(|r| repository_json(c, r)).collect::<Vec<_>>() }), next))
}

async fn delete_repository(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = repository_name(i)?;
    c.require(Action::Admin)?;
    let rec = c.state.registry.repository(name).await.map_err(|e| registry_error(c, name, e))?;
    let force = i.opt_bool("force")?.unwrap_or(false);
    let images = c.state.store.list_manifests(name).await.map_err(|e| c.internal(e))?;
    if !force && !images.is_empty() {
        return Err(AwsError::new(
            "RepositoryNotEmptyException",
            format!(
                "The repository with name '{name}' in registry with id '{}' cannot be deleted because it still contains images",
                super::ACCOUNT
            ),
        ));
    }
    c.state.registry.delete_repository(name).await.map_err(|e| registry_error(c, name, e))?;
    for (kind, key) in [("tags", tags_key(name)), (POLICY_KIND, name.to_owned())] {
        c.state.store.delete_aws_resource(kind, &key).await.map_err(|e| c.internal(e))?;
    }
    Ok(json!({ "repository": repository_json(c, &rec) }))
}

async fn put_tag_mutability(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = repository_name(i)?;
    c.require(Action::Admin)?;
    i.str("imageTagMutability")?;
    let policy = tag_policy(i)?.unwrap_or_default();
    c.state.registry.set_tag_policy(name, &policy).await.map_err(|e| registry_error(c, name, e))?;
    let mut v = json!({
        "registryId": super::ACCOUNT,
        "repositoryName": name,
        "imageTagMutability": policy.mutability.as_str(),
    });
    if !policy.exclusions.is_empty() {
        v["imageTagMutabilityExclusionFilters"] = exclusions_json(&policy);
    }
    Ok(v)
}

/// One image of a repository: its manifest and the tags on it.
struct Image {
    manifest: ManifestRecord,
    tags: Vec<String>,
}

/// The repository's images, newest first, after checking it exists and may be read.
async fn images(c: &Call<'_>, name: &str) -> Result<Vec<Image>, AwsError> {
    c.require(Action::Pull(name))?;
    c.state.registry.repository(name).await.map_err(|e| registry_error(c, name, e))?;
    let manifests = c.state.store.list_manifests(name).await.map_err(|e| c.internal(e))?;
    let tags = c.state.store.list_tags(name).await.map_err(|e| c.internal(e))?;
    let mut out: Vec<Image> = manifests
        .into_iter()
        .map(|m| {
            let mut t: Vec<String> = tags.iter().filter(|t| t.digest == m.digest).map(|t| t.tag.clone()).collect();
            t.sort();
            Image { manifest: m, tags: t }
        })
        .collect();
    out.sort_by(|a, b| {
        b.manifest.created_at.cmp(&a.manifest.created_at).then_with(|| a.manifest.digest.to_string().cmp(&b.manifest.digest.to_string()))
    });
    Ok(out)
}

/// The `filter.tagStatus` a request asks for.
fn tag_status(i: &Input<'_>) -> Result<&'static str, AwsError> {
    let Some(f) = i.nested("filter")? else { return Ok("ANY") };
    Ok(match f.opt_enum("tagStatus", &["TAGGED", "UNTAGGED", "ANY"])? {
        Some("TAGGED") => "TAGGED",
        Some("UNTAGGED") => "UNTAGGED",
        _ => "ANY",
    })
}

fn status_matches(status: &str, img: &Image) -> bool {
    match status {
        "TAGGED" => !img.tags.is_empty(),
        "UNTAGGED" => img.tags.is_empty(),
        _ => true,
    }
}

/// An `imageId`: a digest, a tag, or both (which must agree).
struct ImageId {
    digest: Option<String>,
    tag: Option<String>,
}

impl ImageId {
    fn json(&self) -> Value {
        let mut v = json!({});
        if let Some(d) = &self.digest {
            v["imageDigest"] = d.clone().into();
        }
        if let Some(t) = &self.tag {
            v["imageTag"] = t.clone().into();
        }
        v
    }

    fn shown(&self) -> String {
        format!("{{imageDigest:'{}', imageTag:'{}'}}", self.digest.as_deref().unwrap_or("null"), self.tag.as_deref().unwrap_or("null"))
    }

    fn matches(&self, img: &Image) -> bool {
        self.digest.as_ref().is_none_or(|d| *d == img.manifest.digest.to_string()) && self.tag.as_ref().is_none_or(|t| img.tags.contains(t))
    }
}

fn image_ids(i: &Input<'_>, min: usize) -> Result<Option<Vec<ImageId>>, AwsError> {
    if !i.has("imageIds") {
        return Ok(None);
    }
    let mut out = Vec::new();
    for id in i.structures("imageIds", min, 100)? {
        let digest = id.opt_str("imageDigest")?.map(str::to_owned);
        let tag = id.opt_str_len("imageTag", 1, 300)?.map(str::to_owned);
        out.push(ImageId { digest, tag });
    }
    Ok(Some(out))
}

async fn image_size(c: &Call<'_>, m: &ManifestRecord) -> Result<u64, AwsError> {
    let mut size = 0;
    for d in &m.references {
        size += c.state.store.linked_blob(&m.repository, d).await.map_err(|e| c.internal(e))?.unwrap_or(0);
    }
    Ok(size)
}

/// A listing request's repository, tag status filter, page size and the repository's images.
async fn listing<'a>(c: &Call<'_>, i: &Input<'a>) -> Result<(&'a str, &'static str, usize, Vec<Image>), AwsError> {
    let name = repository_name(i)?;
    let status = tag_status(i)?;
    let max = i.opt_int("maxResults", 1, 1000)?.unwrap_or(100) as usize;
    Ok((name, status, max, images(c, name).await?))
}

/// `out` with the next page's token, when there is one.
fn with_next(mut out: Value, next: Option<String>) -> Value {
    if let Some(n) = next {
        out["nextToken"] = n.into();
    }
    out
}

async fn describe_images(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let (name, status, max, all) = listing(c, i).await?;
    let chosen: Vec<&Image> = match image_ids(i, 1)? {
        Some(ids) => {
            if i.has("maxResults") || i.has("nextToken") {
                return Err(i.invalid("maxResults and nextToken cannot be used with imageIds"));
            }
            let mut out = Vec::new();
            for id in ids {
                if id.digest.is_none() && id.tag.is_none() {
                    return Err(i.invalid("an imageId needs an imageDigest or an imageTag"));
                }
                let found = all.iter().find(|img| id.matches(img)).ok_or_else(|| {
                    AwsError::new(
                        "ImageNotFoundException",
                        format!(
                            "The image with imageId {} does not exist within the repository with name '{name}' in the registry with id '{}'",
                            id.shown(),
                            super::ACCOUNT
                        ),
                    )
                })?;
                if !out.iter().any(|o: &&Image| o.manifest.digest == found.manifest.digest) {
                    out.push(found);
                }
            }
            out
        }
        None => all.iter().filter(|img| status_matches(status, img)).collect(),
    };
    let (chosen, next) = page(chosen, i.page_start("nextToken")?, max);
    let mut details = Vec::new();
    for img in chosen {
        let mut d = json!({
            "registryId": super::ACCOUNT,
            "repositoryName": name,
            "imageDigest": img.manifest.digest.to_string(),
            "imageSizeInBytes": image_size(c, &img.manifest).await?,
            "imagePushedAt": timestamp(img.manifest.created_at),
            "imageManifestMediaType": img.manifest.media_type,
        });
        if !img.tags.is_empty() {
            d["imageTags"] = json!(img.tags);
        }
        if let Some(t) = &img.manifest.artifact_type {
            d["artifactMediaType"] = t.clone().into();
        }
        details.push(d);
    }
    Ok(with_next(json!({ "imageDetails": details }), next))
}

async fn list_images(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let (_, status, max, all) = listing(c, i).await?;
    // One id per tag, and one with no tag for each untagged image.
    let mut ids = Vec::new();
    for img in all.iter().filter(|img| status_matches(status, img)) {
        let digest = img.manifest.digest.to_string();
        if img.tags.is_empty() {
            ids.push(json!({"imageDigest": digest}));
        }
        for t in &img.tags {
            ids.push(json!({"imageDigest": digest, "imageTag": t}));
        }
    }
    let (ids, next) = page(ids, i.page_start("nextToken")?, max);
    Ok(with_next(json!({ "imageIds": ids }), next))
}

fn failure(id: &ImageId, code: &str, reason: &str) -> Value {
    json!({"imageId": id.json(), "failureCode": code, "failureReason": reason})
}

async fn batch_get_image(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = repository_name(i)?;
    let ids = image_ids(i, 1)?.ok_or_else(|| {
        i.invalid("1 validation error detected: Value null at 'imageIds' failed to satisfy constraint: Member must not be null")
    })?;
    let accepted = i.opt_strings("acceptedMediaTypes", 1, 100)?;
    let all = images(c, name).await?;
    let (mut images_out, mut failures) = (Vec::new(), Vec::new());
    for id in &ids {
        if id.digest.is_none() && id.tag.is_none() {
            failures.push(failure(id, "MissingDigestAndTag", "Missing digest and tag"));
            continue;
        }
        let Some(img) = all.iter().find(|img| id.matches(img)) else {
            let (code, reason) = match (&id.digest, &id.tag) {
                (Some(_), Some(t)) if all.iter().any(|img| img.tags.contains(t)) => {
                    ("ImageTagDoesNotMatchDigest", "Image tag does not match digest")
                }
                (Some(d), _) if d.parse::<Digest>().is_err() => ("InvalidImageDigest", "Invalid image digest"),
                _ => ("ImageNotFound", "Requested image not found"),
            };
            failures.push(failure(id, code, reason));
            continue;
        };
        if accepted.as_ref().is_some_and(|a| !a.contains(&img.manifest.media_type.as_str())) {
            failures.push(failure(id, "UnsupportedImageType", "The image's media type is not among acceptedMediaTypes"));
            continue;
        }
        let stored = c
            .state
            .registry
            .manifest(name, &Reference::Digest(img.manifest.digest.clone()))
            .await
            .map_err(|e| registry_error(c, name, e))?;
        let mut image_id = json!({"imageDigest": img.manifest.digest.to_string()});
        if let Some(t) = id.tag.as_ref().or(img.tags.first()) {
            image_id["imageTag"] = t.clone().into();
        }
        images_out.push(json!({
            "registryId": super::ACCOUNT,
            "repositoryName": name,
            "imageId": image_id,
            "imageManifest": String::from_utf8_lossy(&stored.content),
            "imageManifestMediaType": img.manifest.media_type,
        }));
    }
    Ok(json!({ "images": images_out, "failures": failures }))
}

async fn batch_delete_image(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = repository_name(i)?;
    c.require(Action::Push(name))?;
    let ids = image_ids(i, 1)?.ok_or_else(|| {
        i.invalid("1 validation error detected: Value null at 'imageIds' failed to satisfy constraint: Member must not be null")
    })?;
    let all = images(c, name).await?;
    let (mut deleted, mut failures) = (Vec::new(), Vec::new());
    let registry = &c.state.registry;
    for id in &ids {
        if id.digest.is_none() && id.tag.is_none() {
            failures.push(failure(id, "MissingDigestAndTag", "Missing digest and tag"));
            continue;
        }
        if let Some(d) = id.digest.as_deref().filter(|d| d.parse::<Digest>().is_err()) {
            failures.push(failure(
                id,
                "InvalidImageDigest",
                &format!("Invalid request parameters: image digest should satisfy the regex '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+' ({d})"),
            ));
            continue;
        }
        let Some(img) = all.iter().find(|img| id.matches(img)) else {
            let code = match (&id.digest, &id.tag) {
                (Some(_), Some(t)) if all.iter().any(|img| img.tags.contains(t)) => "ImageTagDoesNotMatchDigest",
                _ => "ImageNotFound",
            };
            failures.push(failure(id, code, "Requested image not found"));
            continue;
        };
        let digest = img.manifest.digest.to_string();
        match &id.tag {
            // A tag alone untags; the image goes with its last tag.
            Some(t) if id.digest.is_none() => {
                let tag = Reference::Tag(t.parse().map_err(|e: berth_core::NameError| i.invalid(e.to_string()))?);
                registry.delete_manifest(name, &tag).await.map_err(|e| registry_error(c, name, e))?;
                let left = c.state.store.tags_at(name, &img.manifest.digest).await.map_err(|e| c.internal(e))?;
                if left.is_empty() {
                    registry
                        .delete_manifest(name, &Reference::Digest(img.manifest.digest.clone()))
                        .await
                        .map_err(|e| registry_error(c, name, e))?;
                }
                deleted.push(json!({"imageDigest": digest, "imageTag": t}));
            }
            _ => {
                // Deleted once; the other ids naming it count as deleted too.
                if c.state.store.get_manifest(name, &img.manifest.digest).await.map_err(|e| c.internal(e))?.is_some() {
                    registry
                        .delete_manifest(name, &Reference::Digest(img.manifest.digest.clone()))
                        .await
                        .map_err(|e| registry_error(c, name, e))?;
                }
                if img.tags.is_empty() {
                    deleted.push(json!({"imageDigest": digest}));
                }
                for t in &img.tags {
                    deleted.push(json!({"imageDigest": digest, "imageTag": t}));
                }
            }
        }
    }
    Ok(json!({ "imageIds": deleted, "failures": failures }))
}

/// ECR's lifecycle policy text as berth's rules; a rule berth cannot honour is refused by name.
pub fn lifecycle_rules(text: &str) -> Result<Vec<LifecycleRule>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("the lifecycle policy is not JSON: {e}"))?;
    let rules = doc.get("rules").and_then(Value::as_array).ok_or("the lifecycle policy needs a `rules` list")?;
    if rules.is_empty() {
        return Err("the lifecycle policy has no rules".into());
    }
    let mut out: Vec<(i64, LifecycleRule)> = Vec::new();
    for r in rules {
        let priority = r.get("rulePriority").and_then(Value::as_i64).ok_or("every rule needs a rulePriority")?;
        let name = format!("rule {priority}");
        if out.iter().any(|(p, _)| *p == priority) {
            return Err(format!("{name}: rulePriority must be unique"));
        }
        let action = r.pointer("/action/type").and_then(Value::as_str).unwrap_or("");
        if action != "expire" {
            return Err(format!("{name}: action `{action}` is not one berth honours; only `expire` is"));
        }
        let sel = r.get("selection").ok_or(format!("{name}: a selection is needed"))?;
        let field = |k: &str| sel.get(k).and_then(Value::as_str).unwrap_or("");
        let count =
            sel.get("countNumber").and_then(Value::as_u64).filter(|n| *n >= 1).ok_or(format!("{name}: countNumber must be 1 or more"))?;
        let count = u32::try_from(count).map_err(|_| format!("{name}: countNumber is too large"))?;
        let list = |k: &str| -> Vec<String> {
            sel.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let (prefixes, patterns) = (list("tagPrefixList"), list("tagPatternList"));
        let rule = match (field("tagStatus"), field("countType")) {
            ("untagged", "sinceImagePushed") => {
                if !matches!(field("countUnit"), "days" | "") {
                    return Err(format!("{name}: countUnit `{}` is not one berth honours; use days", field("countUnit")));
                }
                LifecycleRule::ExpireUntagged { days: count }
            }
            (status @ ("tagged" | "any"), "imageCountMoreThan") => {
                let pattern = match (prefixes.as_slice(), patterns.as_slice(), status) {
                    ([], [], "any") => "*".to_owned(),
                    ([p], [], _) => format!("{p}*"),
                    ([], [p], _) => p.clone(),
                    ([], [], _) => return Err(format!("{name}: a tagged rule needs a tagPrefixList or a tagPatternList")),
                    _ => return Err(format!("{name}: berth honours one tag prefix or one tag pattern per rule, not several; make a rule of each")),
                };
                LifecycleRule::KeepNewestTags { pattern: Pattern::new(pattern), count }
            }
            (status, kind) => {
                return Err(format!(
                    "{name}: tagStatus `{status}` with countType `{kind}` is not a rule berth can honour; berth expires untagged images by age (sinceImagePushed) and keeps the newest tagged images (imageCountMoreThan)"
                ))
            }
        };
        out.push((priority, rule));
    }
    out.sort_by_key(|(p, _)| *p);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

async fn put_lifecycle_policy(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = repository_name(i)?;
    c.require(Action::Admin)?;
    let text = i.str_len("lifecyclePolicyText", 100, 30720)?;
    let rules = lifecycle_rules(text).map_err(|m| {
        AwsError::new("InvalidParameterException", format!("Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: {m}"))
    })?;
    c.state.registry.set_lifecycle(name, &rules).await.map_err(|e| registry_error(c, name, e))?;
    c.state.store.put_aws_resource(POLICY_KIND, name, &json!({"text": text}), now()).await.map_err(|e| c.internal(e))?;
    Ok(json!({"registryId": super::ACCOUNT, "repositoryName": name, "lifecyclePolicyText": text}))
}

async fn stored_policy(c: &Call<'_>, name: &str) -> Result<(String, i64), AwsError> {
    c.state.registry.repository(name).await.map_err(|e| registry_error(c, name, e))?;
    let doc = c.state.store.get_aws_resource(POLICY_KIND, name).await.map_err(|e| c.internal(e))?;
    let found = doc.and_then(|d| d.doc.get("text").and_then(Value::as_str).map(|t| (t.to_owned(), d.at)));
    found.ok_or_else(|| {
        AwsError::new(
            "LifecyclePolicyNotFoundException",
            format!("Lifecycle policy does not exist for the repository with name '{name}' in the registry with id '{}'", super::ACCOUNT),
        )
    })
}

async fn get_lifecycle_policy(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = repository_name(i)?;
    c.require(Action::Pull(name))?;
    let (text, at) = stored_policy(c, name).await?;
    Ok(json!({"registryId": super::ACCOUNT, "repositoryName": name, "lifecyclePolicyText": text, "lastEvaluatedAt": timestamp(at)}))
}

async fn delete_lifecycle_policy(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = repository_name(i)?;
    c.require(Action::Admin)?;
    let (text, at) = stored_policy(c, name).await?;
    c.state.registry.set_lifecycle(name, &[]).await.map_err(|e| registry_error(c, name, e))?;
    c.state.store.delete_aws_resource(POLICY_KIND, name).await.map_err(|e| c.internal(e))?;
    Ok(json!({"registryId": super::ACCOUNT, "repositoryName": name, "lifecyclePolicyText": text, "lastEvaluatedAt": timestamp(at)}))
}

/// The repository an ECR ARN names, which must exist.
async fn arn_repository<'a>(c: &Call<'_>, i: &Input<'a>) -> Result<&'a str, AwsError> {
    let arn = i.str("resourceArn")?;
    let name = arn
        .strip_prefix("arn:aws:ecr:")
        .and_then(|rest| rest.splitn(3, ':').nth(2))
        .and_then(|r| r.strip_prefix("repository/"))
        .ok_or_else(|| {
            i.invalid(format!("Invalid parameter at 'resourceArn' failed to satisfy constraint: '{arn}' is not an ECR repository ARN"))
        })?;
    c.state.registry.repository(name).await.map_err(|e| registry_error(c, name, e))?;
    Ok(name)
}

async fn tag_resource(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = arn_repository(c, i).await?;
    c.require(Action::Push(name))?;
    i.list("tags", 0, 200)?;
    let tags = c.read_tags(i, "tags", "Key", "Value")?;
    c.add_tags(&tags_key(name), &tags).await?;
    Ok(json!({}))
}

async fn untag_resource(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = arn_repository(c, i).await?;
    c.require(Action::Push(name))?;
    let keys = i.opt_strings("tagKeys", 0, 200)?.ok_or_else(|| {
        i.invalid("1 validation error detected: Value null at 'tagKeys' failed to satisfy constraint: Member must not be null")
    })?;
    c.remove_tags(&tags_key(name), &keys).await?;
    Ok(json!({}))
}

async fn list_tags(c: &Call<'_>, i: &Input<'_>) -> Result<Value, AwsError> {
    let name = arn_repository(c, i).await?;
    c.require(Action::Pull(name))?;
    Ok(json!({ "tags": tags_json(&c.tags(&tags_key(name)).await?, "Key", "Value") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_ecr() {
        for ok in ["web", "team/web", "a.b", "a__b", "a---b", "ns/sub/x9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["Web", "-web", "web-", "a..b", "a___b", "a/", "/a", "a//b", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn lifecycle_policies_map_onto_berths_rules_or_say_why_not() {
        let policy = r#"{"rules":[
            {"rulePriority":2,"selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":10},"action":{"type":"expire"}},
            {"rulePriority":1,"description":"old untagged","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}},
            {"rulePriority":3,"selection":{"tagStatus":"tagged","tagPatternList":["prod-*"],"countType":"imageCountMoreThan","countNumber":3},"action":{"type":"expire"}}
        ]}"#;
        assert_eq!(
            lifecycle_rules(policy),
            Ok(vec![
                LifecycleRule::ExpireUntagged { days: 14 },
                LifecycleRule::KeepNewestTags { pattern: Pattern::new("v*"), count: 10 },
                LifecycleRule::KeepNewestTags { pattern: Pattern::new("prod-*"), count: 3 },
            ])
        );
        let refused = [
            (
                r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"sinceImagePushed","countUnit":"days","countNumber":3},"action":{"type":"expire"}}]}"#,
                "tagStatus `tagged` with countType `sinceImagePushed`",
            ),
            (
                r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countNumber":3},"action":{"type":"transition"}}]}"#,
                "action `transition`",
            ),
            (
                r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["a","b"],"countType":"imageCountMoreThan","countNumber":3},"action":{"type":"expire"}}]}"#,
                "one tag prefix",
            ),
            (r#"{"rules":[]}"#, "no rules"),
            ("not json", "not JSON"),
        ];
        for (text, says) in refused {
            let e = lifecycle_rules(text).err().unwrap_or_default();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
