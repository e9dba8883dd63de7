//! The AWS-compatible APIs with real AWS clients: aws CLI v2 (Debian's awscli) configured only
//! with an endpoint and a berth access key, podman logging in with `aws ecr get-login-password`,
//! and raw signed requests for what a client would never send (bad signatures, stale dates,
//! unknown keys and operations, malformed bodies).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_testkit::aws::{hello_image, podman, podman_ok, AwsCli, PodmanImages};
use support::*;

const REGION: &str = "eu-west-1";

/// An access key of a berth token made with `--aws`.
struct Key {
    id: String,
    secret: String,
    token_id: String,
}

fn aws_key(s: &Server, name: &str, scopes: &[&str]) -> Result<Key> {
    let mut args = vec!["-o", "json", "token", "create", name, "--aws"];
    for sc in scopes {
        args.extend(["--scope", sc]);
    }
    let v: serde_json::Value = serde_json::from_str(&s.cli_ok(&args)?)?;
    let get = |k: &str| v[k].as_str().map(str::to_owned).ok_or_else(|| format!("no {k} in {v}"));
    Ok(Key { id: get("aws_access_key_id")?, secret: get("aws_secret_access_key")?, token_id: get("id")? })
}

/// The aws CLI with a berth key, as a pipeline runs it.
struct Aws {
    cli: AwsCli,
    key: Key,
}

impl Aws {
    fn new(s: &Server, key: Key) -> Result<Aws> {
        let home = s.dir.join(format!("aws-{}", key.token_id));
        Ok(Aws { cli: AwsCli::new(&home, &format!("http://{}", s.addr), &key.id, &key.secret, REGION)?, key })
    }
}

impl std::ops::Deref for Aws {
    type Target = AwsCli;

    fn deref(&self) -> &AwsCli {
        &self.cli
    }
}

/// A podman image of one file, under `name` (made with `podman import`, no registry needed).
fn local_image(dir: &Path, name: &str, content: &str) -> Result {
    let root = dir.join(format!("root-{}", name.replace([':', '/'], "-")));
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("version.txt"), content)?;
    let tar = root.with_extension("tar");
    ok(&Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").output()?)?;
    podman_ok(&["import", &tar.display().to_string(), name], None)?;
    Ok(())
}

#[test]
fn ecr_with_the_aws_cli_and_podman() -> Result {
    let s = Server::start()?;
    let ci = Aws::new(&s, aws_key(&s, "ci", &["push:web"])?)?;

    // Repositories, as a pipeline's set-up would make them.
    let created = ci.ok(&[
        "ecr",
        "create-repository",
        "--repository-name",
        "web",
        "--image-tag-mutability",
        "IMMUTABLE",
        "--tags",
        "Key=team,Value=payments",
    ])?;
    let repo = &created["repository"];
    let uri = repo["repositoryUri"].as_str().ok_or("no repositoryUri")?.to_owned();
    assert_eq!(uri, format!("{}/web", s.addr));
    assert_eq!(repo["repositoryArn"], format!("arn:aws:ecr:{REGION}:000000000000:repository/web"));
    assert_eq!(repo["imageTagMutability"], "IMMUTABLE");
    // The CLI shows the epoch number it was sent as a date.
    assert!(repo["createdAt"].as_str().is_some_and(|t| t.starts_with("20")), "{repo}");
    // Every tag immutable but `latest` (ECR's exclusion filters are newer than Debian's aws CLI:
    // a signed request of the operator's).
    let admin = Aws::new(&s, aws_key(&s, "ops", &["admin"])?)?;
    let body = r#"{"repositoryName":"web","imageTagMutability":"IMMUTABLE_WITH_EXCLUSION","imageTagMutabilityExclusionFilters":[{"filterType":"WILDCARD","filter":"latest"}]}"#;
    let put = signed(&s, &admin.key, "AmazonEC2ContainerRegistry_V20150921.PutImageTagMutability", body, now(), "ecr")?;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.json()["imageTagMutabilityExclusionFilters"][0]["filter"], "latest");
    let repos = signed(&s, &ci.key, "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories", "{}", now(), "ecr")?.json();
    assert_eq!(repos["repositories"][0]["imageTagMutability"], "IMMUTABLE_WITH_EXCLUSION");
    assert!(repos["repositories"][0]["createdAt"].is_number(), "timestamps are epoch numbers: {repos}");
    let again = ci.error(&["ecr", "create-repository", "--repository-name", "web"])?;
    assert!(again.contains("RepositoryAlreadyExistsException"), "{again}");
    // The token's scopes hold: push:web may not make another repository.
    let denied = ci.error(&["ecr", "create-repository", "--repository-name", "other"])?;
    assert!(denied.contains("AccessDeniedException") && denied.contains("`ci`"), "{denied}");

    // The seed's CI flow: log in with the ECR password, push <sha> and latest.
    let password = ci.run(&["ecr", "get-login-password"])?;
    assert!(password.status.success(), "{}", String::from_utf8_lossy(&password.stderr));
    let password = String::from_utf8(password.stdout)?;
    let registry = uri.split('/').next().unwrap_or_default().to_owned();
    let auth_file = s.dir.join("podman-auth.json");
    let auth = format!("--authfile={}", auth_file.display());
    podman_ok(&["login", &auth, "--tls-verify=false", "--username", "AWS", "--password-stdin", &registry], Some(password.trim()))?;
    let (sha, sha2) = ("3f2a9c1", "9b8e7d6");
    let images = PodmanImages(vec![format!("localhost/berth-aws-test:{sha}"), format!("localhost/berth-aws-test:{sha2}")]);
    local_image(&s.dir, &images.0[0], "one")?;
    local_image(&s.dir, &images.0[1], "two")?;
    for tag in [sha, "latest"] {
        podman_ok(&["push", &auth, "--tls-verify=false", &images.0[0], &format!("{uri}:{tag}")], None)?;
    }
    let described = ci.ok(&["ecr", "describe-images", "--repository-name", "web"])?;
    let details = described["imageDetails"].as_array().ok_or("no imageDetails")?;
    assert_eq!(details.len(), 1, "{described}");
    let mut tags: Vec<&str> = details[0]["imageTags"].as_array().ok_or("no tags")?.iter().filter_map(|t| t.as_str()).collect();
    tags.sort();
    assert_eq!(tags, ["3f2a9c1", "latest"]);
    let digest = details[0]["imageDigest"].as_str().ok_or("no digest")?.to_owned();
    assert!(details[0]["imageSizeInBytes"].as_u64().unwrap_or(0) > 0, "{described}");
    assert!(details[0]["imagePushedAt"].is_string());
    // The sha tag is immutable: pushing other content under it is refused; latest moves.
    let moved = podman(&["push", &auth, "--tls-verify=false", &images.0[1], &format!("{uri}:{sha}")], None)?;
    assert!(!moved.status.success(), "an immutable tag moved");
    for tag in [sha2, "latest"] {
        podman_ok(&["push", &auth, "--tls-verify=false", &images.0[1], &format!("{uri}:{tag}")], None)?;
    }
    let listed = ci.ok(&["ecr", "list-images", "--repository-name", "web"])?;
    assert_eq!(listed["imageIds"].as_array().map(Vec::len), Some(3), "{listed}");
    let untagged = ci.ok(&["ecr", "list-images", "--repository-name", "web", "--filter", "tagStatus=UNTAGGED"])?;
    assert_eq!(untagged["imageIds"].as_array().map(Vec::len), Some(0), "{untagged}");
    let got = ci.ok(&["ecr", "batch-get-image", "--repository-name", "web", "--image-ids", &format!("imageTag={sha}"), "imageTag=nope"])?;
    assert_eq!(got["images"][0]["imageId"]["imageDigest"], digest.as_str());
    let manifest: serde_json::Value = serde_json::from_str(got["images"][0]["imageManifest"].as_str().unwrap_or("null"))?;
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(got["failures"][0]["failureCode"], "ImageNotFound");
    // Mutability changed by PutImageTagMutability (admin only: ci may not).
    let refused = ci.error(&["ecr", "put-image-tag-mutability", "--repository-name", "web", "--image-tag-mutability", "MUTABLE"])?;
    assert!(refused.contains("AccessDeniedException"), "{refused}");

    // Lifecycle policies as ECR writes them, mapped onto berth's rules; what berth cannot honour is named.
    let policy = r#"{"rules":[{"rulePriority":1,"description":"drop untagged","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":10},"action":{"type":"expire"}}]}"#;
    admin.ok(&["ecr", "put-lifecycle-policy", "--repository-name", "web", "--lifecycle-policy-text", policy])?;
    let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "repo", "show", "web"])?)?;
    assert_eq!(shown["lifecycle"].as_array().map(Vec::len), Some(2), "{shown}");
    let back = admin.ok(&["ecr", "get-lifecycle-policy", "--repository-name", "web"])?;
    assert_eq!(back["lifecyclePolicyText"], policy);
    let unsupported = r#"{"rules":[{"rulePriority":1,"description":"age out tagged","selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"expire"}}]}"#;
    let said = admin.error(&["ecr", "put-lifecycle-policy", "--repository-name", "web", "--lifecycle-policy-text", unsupported])?;
    assert!(said.contains("InvalidParameterException") && said.contains("rule 1") && said.contains("sinceImagePushed"), "{said}");
    admin.ok(&["ecr", "delete-lifecycle-policy", "--repository-name", "web"])?;
    let gone = admin.error(&["ecr", "get-lifecycle-policy", "--repository-name", "web"])?;
    assert!(gone.contains("LifecyclePolicyNotFoundException"), "{gone}");
    admin.ok(&["ecr", "put-image-tag-mutability", "--repository-name", "web", "--image-tag-mutability", "MUTABLE"])?;

    // Tags on the repository.
    let arn = format!("arn:aws:ecr:{REGION}:000000000000:repository/web");
    ci.ok(&["ecr", "tag-resource", "--resource-arn", &arn, "--tags", "Key=env,Value=prod"])?;
    ci.ok(&["ecr", "untag-resource", "--resource-arn", &arn, "--tag-keys", "team"])?;
    let tags = ci.ok(&["ecr", "list-tags-for-resource", "--resource-arn", &arn])?;
    assert_eq!(tags["tags"], serde_json::json!([{"Key": "env", "Value": "prod"}]));

    // Deleting: a tag alone untags; the image goes with its last tag.
    let del =
        ci.ok(&["ecr", "batch-delete-image", "--repository-name", "web", "--image-ids", &format!("imageTag={sha}"), "imageTag=nope"])?;
    assert_eq!(del["imageIds"][0]["imageTag"], sha);
    assert_eq!(del["failures"][0]["failureCode"], "ImageNotFound");
    let left = ci.ok(&["ecr", "describe-images", "--repository-name", "web"])?;
    assert_eq!(left["imageDetails"].as_array().map(Vec::len), Some(1), "{left}");
    let not_empty = admin.error(&["ecr", "delete-repository", "--repository-name", "web"])?;
    assert!(not_empty.contains("RepositoryNotEmptyException"), "{not_empty}");
    admin.ok(&["ecr", "delete-repository", "--repository-name", "web", "--force"])?;
    let missing = ci.error(&["ecr", "describe-images", "--repository-name", "web"])?;
    assert!(missing.contains("RepositoryNotFoundException"), "{missing}");

    // `aws sts get-caller-identity`, which pipelines run to check their keys or to find the
    // account for ECR-style image names.
    let who = ci.ok(&["sts", "get-caller-identity"])?;
    assert_eq!(who, serde_json::json!({"UserId": ci.key.id, "Account": "000000000000", "Arn": "arn:aws:iam::000000000000:user/berth/ci"}));
    let account = ci.ok(&["sts", "get-caller-identity", "--query", "Account"])?;
    assert_eq!(account, "000000000000");

    // Revoking the token revokes its key, and the registry password it handed out.
    s.cli_ok(&["token", "revoke", &ci.key.token_id])?;
    let revoked = ci.error(&["ecr", "describe-repositories"])?;
    assert!(revoked.contains("UnrecognizedClientException"), "{revoked}");
    let revoked = ci.error(&["sts", "get-caller-identity"])?;
    assert!(revoked.contains("InvalidClientTokenId"), "{revoked}");
    let login = podman(&["login", &auth, "--tls-verify=false", "--username", "AWS", "--password-stdin", &registry], Some(password.trim()))?;
    assert!(!login.status.success(), "a revoked token's registry password still logs in");
    Ok(())
}

/// A raw request signed as an SDK signs it, with `edit` applied to the headers before signing.
fn signed(s: &Server, key: &Key, target: &str, body: &str, at: i64, service: &str) -> Result<Resp> {
    signed_to(&s.addr, key, target, body, at, service)
}

/// A request signed as an SDK signs it, to the server at `addr`.
fn signed_to(addr: &str, key: &Key, target: &str, body: &str, at: i64, service: &str) -> Result<Resp> {
    let date = amz_date(at);
    let mut h = axum::http::HeaderMap::new();
    h.insert("content-type", "application/x-amz-json-1.1".parse()?);
    h.insert("x-amz-date", date.parse()?);
    h.insert("x-amz-target", target.parse()?);
    let req = berth_api::aws::sigv4::Signed { method: "POST", path: "/", query: "", headers: &h, host: addr, body: body.as_bytes() };
    let auth = berth_api::aws::sigv4::sign(&key.id, &key.secret, REGION, service, &req);
    let headers = [
        ("Content-Type", "application/x-amz-json-1.1"),
        ("X-Amz-Date", date.as_str()),
        ("X-Amz-Target", target),
        ("Authorization", auth.as_str()),
    ];
    http("POST", &format!("http://{addr}/"), None, &headers, body.as_bytes())
}

fn amz_date(unix: i64) -> String {
    let out = Command::new("date").args(["-u", "-d", &format!("@{unix}"), "+%Y%m%dT%H%M%SZ"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The AWS error type of an answer, checked to be in both places clients read it.
fn error_type(r: &Resp) -> String {
    let body = r.json();
    let kind = body["__type"].as_str().unwrap_or_default().to_owned();
    assert_eq!(r.header("x-amzn-errortype"), Some(kind.as_str()), "{body}");
    assert!(r.header("x-amzn-requestid").is_some());
    kind
}

#[test]
fn bad_requests_get_the_aws_error_a_client_expects() -> Result {
    let s = Server::start()?;
    let key = aws_key(&s, "ci", &["push:web"])?;
    let target = "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories";
    let good = signed(&s, &key, target, "{}", now(), "ecr")?;
    assert_eq!(good.status, 200, "{}", String::from_utf8_lossy(&good.body));
    assert_eq!(good.header("content-type"), Some("application/x-amz-json-1.1"));
    assert!(good.header("date").is_some());

    let cases: Vec<(&str, Resp, u16, &str)> = vec![
        ("no signature", http("POST", &s.url("/"), None, &[("X-Amz-Target", target)], b"{}")?, 403, "MissingAuthenticationTokenException"),
        (
            "another scheme",
            http("POST", &s.url("/"), None, &[("X-Amz-Target", target), ("Authorization", "Bearer abc")], b"{}")?,
            403,
            "IncompleteSignatureException",
        ),
        (
            "wrong secret",
            signed(&s, &Key { id: key.id.clone(), secret: "x".repeat(40), token_id: String::new() }, target, "{}", now(), "ecr")?,
            403,
            "InvalidSignatureException",
        ),
        ("expired date", signed(&s, &key, target, "{}", now() - 3600, "ecr")?, 403, "InvalidSignatureException"),
        (
            "unknown key",
            signed(
                &s,
                &Key { id: "AKIA0123456789ABCDEF".into(), secret: key.secret.clone(), token_id: String::new() },
                target,
                "{}",
                now(),
                "ecr",
            )?,
            403,
            "UnrecognizedClientException",
        ),
        ("signed for another service", signed(&s, &key, target, "{}", now(), "secretsmanager")?, 403, "InvalidSignatureException"),
        (
            "unknown operation",
            signed(&s, &key, "AmazonEC2ContainerRegistry_V20150921.LaunchRocket", "{}", now(), "ecr")?,
            400,
            "UnknownOperationException",
        ),
        ("unknown service", signed(&s, &key, "DynamoDB_20120810.GetItem", "{}", now(), "dynamodb")?, 400, "UnknownOperationException"),
        ("malformed JSON", signed(&s, &key, target, "{\"repositoryNames\":", now(), "ecr")?, 400, "SerializationException"),
        ("not an object", signed(&s, &key, target, "[1]", now(), "ecr")?, 400, "SerializationException"),
        ("wrong type", signed(&s, &key, target, "{\"repositoryNames\":\"web\"}", now(), "ecr")?, 400, "SerializationException"),
        ("out of range", signed(&s, &key, target, "{\"maxResults\":5000}", now(), "ecr")?, 400, "InvalidParameterException"),
        (
            "name too long",
            signed(
                &s,
                &key,
                "AmazonEC2ContainerRegistry_V20150921.CreateRepository",
                &format!("{{\"repositoryName\":\"{}\"}}", "a".repeat(300)),
                now(),
                "ecr",
            )?,
            400,
            "InvalidParameterException",
        ),
        (
            "missing member",
            signed(&s, &key, "AmazonEC2ContainerRegistry_V20150921.ListImages", "{}", now(), "ecr")?,
            400,
            "InvalidParameterException",
        ),
    ];
    for (what, r, status, kind) in cases {
        assert_eq!((r.status, error_type(&r)), (status, kind.to_owned()), "{what}: {}", String::from_utf8_lossy(&r.body));
        let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(!message.is_empty(), "{what}: no message");
    }
    Ok(())
}

/// A `command` rotator that makes a new password and needs nothing else.
fn password_rotator(dir: &Path) -> Result<PathBuf> {
    let script = r#"#!/usr/bin/env python3
import json, secrets, sys
step = sys.argv[1]
doc = json.load(sys.stdin)
if step == 'create_secret':
    new = json.loads(doc['current'])
    new['password'] = secrets.token_hex(12)
    print(json.dumps(new))
"#;
    let path = dir.join("rotator");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}

#[test]
fn secrets_manager_with_the_aws_cli() -> Result {
    let s = Server::start()?;
    let app = Aws::new(&s, aws_key(&s, "app", &["read-only", "secrets-write:db/*", "secrets-read:db/*"])?)?;
    let sm = |args: &[&str]| app.ok(&[&["secretsmanager"][..], args].concat());
    let sm_err = |args: &[&str]| app.error(&[&["secretsmanager"][..], args].concat());

    // Created once for a request token: the same request again makes nothing new.
    let first = r#"{"username":"gb","password":"pw-one"}"#;
    let token = "5a0f1b2c-3d4e-4f60-8a7b-9c0d1e2f3a4b";
    let create = [
        "create-secret",
        "--name",
        "db/creds",
        "--secret-string",
        first,
        "--description",
        "guestbook",
        "--tags",
        "Key=team,Value=payments",
        "--client-request-token",
        token,
    ];
    let made = sm(&create)?;
    let arn = made["ARN"].as_str().ok_or("no ARN")?.to_owned();
    let prefix = format!("arn:aws:secretsmanager:{REGION}:000000000000:secret:db/creds-");
    assert!(arn.starts_with(&prefix) && arn.len() == prefix.len() + 6, "{arn}");
    let v1 = made["VersionId"].as_str().ok_or("no VersionId")?.to_owned();
    assert_eq!(sm(&create)?["VersionId"], v1.as_str(), "a repeated request made another version");
    let mut changed = create;
    changed[4] = r#"{"username":"gb","password":"other"}"#;
    assert!(sm_err(&changed)?.contains("ResourceExistsException"));
    assert!(sm_err(&["create-secret", "--name", "db/creds", "--secret-string", "x"])?.contains("ResourceExistsException"));

    // Read by name or ARN; a new value becomes AWSCURRENT and the old one AWSPREVIOUS.
    let got = sm(&["get-secret-value", "--secret-id", &arn])?;
    assert_eq!((got["SecretString"].as_str(), got["VersionStages"].clone()), (Some(first), serde_json::json!(["AWSCURRENT"])));
    let second = r#"{"username":"gb","password":"pw-two"}"#;
    let put = sm(&["put-secret-value", "--secret-id", "db/creds", "--secret-string", second])?;
    let v2 = put["VersionId"].as_str().ok_or("no VersionId")?.to_owned();
    assert_eq!(put["VersionStages"], serde_json::json!(["AWSCURRENT"]));
    assert_eq!(sm(&["get-secret-value", "--secret-id", "db/creds"])?["SecretString"], second);
    assert_eq!(sm(&["get-secret-value", "--secret-id", "db/creds", "--version-stage", "AWSPREVIOUS"])?["SecretString"], first);
    assert_eq!(sm(&["get-secret-value", "--secret-id", "db/creds", "--version-id", &v1])?["VersionId"], v1.as_str());
    // berth's own CLI sees the same secret.
    let berth_value: serde_json::Value = serde_json::from_str(&s.cli_ok(&["secret", "get", "db/creds"])?)?;
    assert_eq!(berth_value["password"], "pw-two");

    let described = sm(&["describe-secret", "--secret-id", "db/creds"])?;
    assert_eq!(described["Description"], "guestbook");
    assert_eq!(described["VersionIdsToStages"][&v1], serde_json::json!(["AWSPREVIOUS"]));
    assert_eq!(described["VersionIdsToStages"][&v2], serde_json::json!(["AWSCURRENT"]));
    assert_eq!(described["Tags"], serde_json::json!([{"Key": "team", "Value": "payments"}]));
    let listed = sm(&["list-secrets", "--filters", "Key=name,Values=db/"])?;
    assert_eq!(listed["SecretList"].as_array().map(Vec::len), Some(1), "{listed}");
    assert!(listed["SecretList"][0]["SecretVersionsToStages"].is_object());
    assert_eq!(sm(&["list-secrets", "--filters", "Key=tag-value,Values=nobody"])?["SecretList"], serde_json::json!([]));
    sm(&["update-secret", "--secret-id", "db/creds", "--description", "guestbook's database"])?;
    assert_eq!(sm(&["describe-secret", "--secret-id", "db/creds"])?["Description"], "guestbook's database");

    // Moving AWSCURRENT back needs the version that holds it named.
    let no_remove =
        sm_err(&["update-secret-version-stage", "--secret-id", "db/creds", "--version-stage", "AWSCURRENT", "--move-to-version-id", &v1])?;
    assert!(no_remove.contains("InvalidParameterException") && no_remove.contains(&v2), "{no_remove}");
    sm(&[
        "update-secret-version-stage",
        "--secret-id",
        "db/creds",
        "--version-stage",
        "AWSCURRENT",
        "--move-to-version-id",
        &v1,
        "--remove-from-version-id",
        &v2,
    ])?;
    assert_eq!(sm(&["get-secret-value", "--secret-id", "db/creds"])?["SecretString"], first);

    // Rotation runs berth's rotators: none set up is said so; a command rotator runs.
    let no_rotator = sm_err(&["rotate-secret", "--secret-id", "db/creds"])?;
    assert!(no_rotator.contains("InvalidRequestException") && no_rotator.contains("berth secret rotate"), "{no_rotator}");
    let rotator = password_rotator(&s.dir)?;
    s.cli_ok(&["secret", "rotate", "db/creds", "--rotator", "command", "--command", &rotator.display().to_string(), "--no-rotate-now"])?;
    sm(&["rotate-secret", "--secret-id", "db/creds"])?;
    wait_until("the rotation to finish", std::time::Duration::from_secs(60), || {
        Ok(sm(&["describe-secret", "--secret-id", "db/creds"])?.get("LastRotatedDate").is_some())
    })?;
    let rotated: serde_json::Value =
        serde_json::from_str(sm(&["get-secret-value", "--secret-id", "db/creds"])?["SecretString"].as_str().unwrap_or("{}"))?;
    assert!(rotated["password"].as_str().is_some_and(|p| p.len() == 24), "{rotated}");

    let password = sm(&["get-random-password", "--password-length", "20", "--exclude-punctuation"])?;
    let password = password["RandomPassword"].as_str().unwrap_or_default().to_owned();
    assert!(password.len() == 20 && password.chars().all(|ch| ch.is_ascii_alphanumeric()), "{password}");

    // The token's scopes hold.
    s.cli_ok(&["secret", "create", "other", "--value", "x"])?;
    assert!(sm_err(&["get-secret-value", "--secret-id", "other"])?.contains("AccessDeniedException"));
    assert!(sm_err(&["get-secret-value", "--secret-id", "nope/none"])?.contains("ResourceNotFoundException"));

    // Deleted with a recovery window (unreadable, restorable), then for good.
    let deleted = sm(&["delete-secret", "--secret-id", "db/creds", "--recovery-window-in-days", "7"])?;
    assert!(deleted["DeletionDate"].is_string(), "{deleted}");
    assert!(sm_err(&["get-secret-value", "--secret-id", "db/creds"])?.contains("InvalidRequestException"));
    sm(&["restore-secret", "--secret-id", "db/creds"])?;
    assert_eq!(sm(&["get-secret-value", "--secret-id", "db/creds"])?["Name"], "db/creds");
    sm(&["delete-secret", "--secret-id", "db/creds", "--force-delete-without-recovery"])?;
    assert!(sm_err(&["describe-secret", "--secret-id", "db/creds"])?.contains("ResourceNotFoundException"));
    Ok(())
}

/// A virtual environment with boto3 from PyPI, made once per test run in the target directory.
fn boto3_python() -> Result<PathBuf> {
    let target = PathBuf::from(BIN).parent().and_then(Path::parent).map(Path::to_path_buf).ok_or("no target directory")?;
    let venv = target.join("boto3-venv");
    let python = venv.join("bin/python");
    let ready = venv.join("ready");
    if ready.exists() {
        return Ok(python);
    }
    ok(&Command::new("python3").args(["-m", "venv"]).arg(&venv).output()?)?;
    ok(&Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", "boto3"]).output()?)?;
    std::fs::write(&ready, "")?;
    Ok(python)
}

/// An SDK's environment as a pipeline's: a berth key and a region, nothing else of this host's
/// (and a proxy on a closed loopback port for anything that would go past the endpoint).
fn sdk_env<'c>(c: &'c mut Command, s: &Server, key: &Key) -> &'c mut Command {
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &s.dir)
        .env("AWS_ACCESS_KEY_ID", &key.id)
        .env("AWS_SECRET_ACCESS_KEY", &key.secret)
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_CONFIG_FILE", s.dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", s.dir.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,localhost")
}

#[test]
fn boto3_reads_what_berth_answers() -> Result {
    let s = Server::start()?;
    let key = aws_key(&s, "sdk", &["admin", "secrets-read:*"])?;
    let script = r#"
import sys, datetime, base64
import boto3
ep = sys.argv[1]
ecr = boto3.client("ecr", endpoint_url=ep)
sm = boto3.client("secretsmanager", endpoint_url=ep)
r = ecr.create_repository(repositoryName="api", imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
    imageTagMutabilityExclusionFilters=[{"filterType": "WILDCARD", "filter": "latest"}])["repository"]
assert isinstance(r["createdAt"], datetime.datetime), r
assert r["imageTagMutabilityExclusionFilters"] == [{"filterType": "WILDCARD", "filter": "latest"}], r
auth = ecr.get_authorization_token()["authorizationData"][0]
user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":")
assert user == "AWS" and auth["proxyEndpoint"] == ep, auth
assert isinstance(auth["expiresAt"], datetime.datetime)
try:
    ecr.describe_repositories(repositoryNames=["nope"])
    raise SystemExit("a missing repository was described")
except ecr.exceptions.RepositoryNotFoundException as e:
    assert "nope" in e.response["Error"]["Message"]
made = sm.create_secret(Name="api/key", SecretString="s3cret")
assert sm.get_secret_value(SecretId=made["ARN"])["SecretString"] == "s3cret"
sm.put_secret_value(SecretId="api/key", SecretString="s3cret-2")
d = sm.describe_secret(SecretId="api/key")
assert isinstance(d["CreatedDate"], datetime.datetime) and len(d["VersionIdsToStages"]) == 2, d
try:
    sm.get_secret_value(SecretId="api/nope")
    raise SystemExit("a missing secret was read")
except sm.exceptions.ResourceNotFoundException:
    pass
ar = boto3.client("apprunner", endpoint_url=ep)
asc = ar.create_auto_scaling_configuration(AutoScalingConfigurationName="burst", MaxConcurrency=60, MaxSize=5,
    Tags=[{"Key": "team", "Value": "api"}])["AutoScalingConfiguration"]
assert isinstance(asc["CreatedAt"], datetime.datetime) and asc["Status"] == "active" and asc["Latest"], asc
again = ar.create_auto_scaling_configuration(AutoScalingConfigurationName="burst", MaxConcurrency=80)["AutoScalingConfiguration"]
assert again["AutoScalingConfigurationRevision"] == 2, again
names = [(a["AutoScalingConfigurationName"], a["AutoScalingConfigurationRevision"])
         for a in ar.list_auto_scaling_configurations()["AutoScalingConfigurationSummaryList"]]
assert names == [("DefaultConfiguration", 1), ("burst", 2)], names
first = ar.describe_auto_scaling_configuration(AutoScalingConfigurationArn=asc["AutoScalingConfigurationArn"])["AutoScalingConfiguration"]
assert first["MaxConcurrency"] == 60 and not first["Latest"], first
tags = ar.list_tags_for_resource(ResourceArn=asc["AutoScalingConfigurationArn"])["Tags"]
assert tags == [{"Key": "team", "Value": "api"}], tags
try:
    ar.describe_service(ServiceArn="arn:aws:apprunner:local-1:000000000000:service/nope/" + "0" * 32)
    raise SystemExit("a missing service was described")
except ar.exceptions.InvalidRequestException as e:
    assert "runtime" in e.response["Error"]["Message"], e
print("boto3 ok")
"#;
    let out = sdk_env(Command::new(boto3_python()?).args(["-c", script, &format!("http://{}", s.addr)]), &s, &key).output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("boto3 ok"), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The AWS SDK for Go v2 (Terraform's) reads berth's answers: `tests/go-sdk`, built with the
/// Go toolchain from pinned modules.
#[test]
fn go_sdk_reads_what_berth_answers() -> Result {
    let s = Server::start()?;
    let key = aws_key(&s, "gosdk", &["admin", "secrets-read:*"])?;
    let target = PathBuf::from(BIN).parent().and_then(Path::parent).map(Path::to_path_buf).ok_or("no target directory")?;
    let check = target.join("go-sdk-check");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go-sdk");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&check)
        .arg(".")
        .current_dir(&source)
        .output()
        .map_err(|e| format!("running go (install the Go toolchain): {e}"))?;
    ok(&built)?;
    let out = sdk_env(Command::new(&check).arg(format!("http://{}", s.addr)), &s, &key).output()?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("go sdk ok"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// What the service at `url` (App Runner's bare host) answers through the router.
fn served(router: &str, url: &str) -> Result<(u16, String)> {
    let host = url.split(':').next().unwrap_or(url);
    let r = http("GET", &format!("http://{router}/"), None, &[("Host", host)], b"")?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// `describe-service` until the service has `status`.
fn wait_status(ci: &Aws, arn: &str, status: &str) -> Result<serde_json::Value> {
    let mut last = serde_json::Value::Null;
    let found = wait_until(&format!("the service to be {status}"), Duration::from_secs(90), || {
        last = ci.ok(&["apprunner", "describe-service", "--service-arn", arn])?;
        Ok(last["Service"]["Status"] == status)
    });
    found.map_err(|e| format!("{e}; last: {last}"))?;
    Ok(last)
}

#[test]
fn apprunner_with_the_aws_cli_deploys_real_containers() -> Result {
    let s = Server::start_with_runtime("a", 244, "ar-")?;
    let ci = Aws::new(&s, aws_key(&s, "deployer", &["admin"])?)?;
    let reader = Aws::new(&s, aws_key(&s, "viewer", &["read-only"])?)?;
    let router = s.router_http()?;

    // The pipeline: an ECR repository, the login, `<sha>` and `latest` pushed.
    ci.ok(&["ecr", "create-repository", "--repository-name", "web"])?;
    let password = String::from_utf8(ci.run(&["ecr", "get-login-password"])?.stdout)?;
    let auth = format!("--authfile={}", s.dir.join("podman-auth.json").display());
    podman_ok(&["login", &auth, "--tls-verify=false", "--username", "AWS", "--password-stdin", &s.addr], Some(password.trim()))?;
    let tmp = tempfile::tempdir()?;
    let bin = berth_testkit::hello_binary(tmp.path())?;
    let images = PodmanImages(vec!["localhost/berth-apprunner-test:v1".into(), "localhost/berth-apprunner-test:v2".into()]);
    hello_image(tmp.path(), &bin, &images.0[0], "v1")?;
    hello_image(tmp.path(), &bin, &images.0[1], "v2")?;
    let push = |image: &str, tag: &str| podman_ok(&["push", &auth, "--tls-verify=false", image, &format!("{}/web:{tag}", s.addr)], None);
    push(&images.0[0], "1a2b3c4")?;
    push(&images.0[0], "latest")?;

    // A secret and an auto scaling configuration, as the service's Terraform would make them.
    let secret = ci.ok(&["secretsmanager", "create-secret", "--name", "api-key", "--secret-string", "k-123"])?;
    let secret_arn = secret["ARN"].as_str().ok_or("no secret ARN")?.to_owned();
    let asc = ci.ok(&[
        "apprunner",
        "create-auto-scaling-configuration",
        "--auto-scaling-configuration-name",
        "small",
        "--max-concurrency",
        "50",
        "--max-size",
        "3",
    ])?;
    let asc = &asc["AutoScalingConfiguration"];
    assert_eq!(
        (asc["Status"].as_str(), asc["AutoScalingConfigurationRevision"].as_i64(), asc["MinSize"].as_i64()),
        (Some("active"), Some(1), Some(1)),
        "{asc}"
    );
    let asc_arn = asc["AutoScalingConfigurationArn"].as_str().ok_or("no ASC ARN")?.to_owned();
    assert!(asc_arn.starts_with(&format!("arn:aws:apprunner:{REGION}:000000000000:autoscalingconfiguration/small/1/")), "{asc_arn}");

    // create-service with an App Runner document, the image named as on ECR.
    let doc = serde_json::json!({
        "ServiceName": "ar-web",
        "SourceConfiguration": {
            "ImageRepository": {
                "ImageIdentifier": format!("123456789012.dkr.ecr.{REGION}.amazonaws.com/web:latest"),
                "ImageRepositoryType": "ECR",
                "ImageConfiguration": {
                    "Port": "8080",
                    "RuntimeEnvironmentVariables": {"MODE": "prod"},
                    "RuntimeEnvironmentSecrets": {"API_KEY": secret_arn},
                },
            },
            "AutoDeploymentsEnabled": true,
        },
        "InstanceConfiguration": {"Cpu": "0.25 vCPU", "Memory": "0.5 GB"},
        "HealthCheckConfiguration": {"Protocol": "HTTP", "Path": "/healthz", "Interval": 1},
        "AutoScalingConfigurationArn": asc_arn,
        "Tags": [{"Key": "team", "Value": "web"}],
    });
    let input = tmp.path().join("service.json");
    std::fs::write(&input, doc.to_string())?;
    let input_arg = format!("file://{}", input.display());
    let denied = reader.error(&["apprunner", "create-service", "--cli-input-json", &input_arg])?;
    assert!(denied.contains("AccessDeniedException"), "{denied}");
    let created = ci.ok(&["apprunner", "create-service", "--cli-input-json", &input_arg])?;
    let svc = &created["Service"];
    let arn = svc["ServiceArn"].as_str().ok_or("no ServiceArn")?.to_owned();
    let id = svc["ServiceId"].as_str().unwrap_or_default();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{svc}");
    assert_eq!(arn, format!("arn:aws:apprunner:{REGION}:000000000000:service/ar-web/{id}"));
    assert_eq!(svc["Status"], "OPERATION_IN_PROGRESS");
    assert_eq!(created["OperationId"].as_str().map(|o| o.split('-').count()), Some(5), "{created}");
    let again = ci.error(&["apprunner", "create-service", "--cli-input-json", &input_arg])?;
    assert!(again.contains("InvalidRequestException") && again.contains("already exists"), "{again}");

    // describe-service reaches RUNNING when the service serves, and gives back what was set.
    let running = wait_status(&ci, &arn, "RUNNING")?;
    let svc = &running["Service"];
    let url = svc["ServiceUrl"].as_str().ok_or("no ServiceUrl")?.to_owned();
    assert!(!url.contains("://"), "{url}");
    let (status, body) = served(&router, &url)?;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from v1"), "{body}");
    let image = &svc["SourceConfiguration"]["ImageRepository"];
    assert_eq!(image["ImageIdentifier"], doc["SourceConfiguration"]["ImageRepository"]["ImageIdentifier"]);
    assert_eq!(image["ImageConfiguration"]["RuntimeEnvironmentSecrets"]["API_KEY"], secret_arn);
    assert_eq!((svc["InstanceConfiguration"]["Cpu"].as_str(), svc["InstanceConfiguration"]["Memory"].as_str()), (Some("256"), Some("512")));
    assert_eq!(svc["AutoScalingConfigurationSummary"]["AutoScalingConfigurationArn"], asc_arn.as_str());
    assert_eq!(svc["HealthCheckConfiguration"]["Path"], "/healthz");
    let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "ar-web"])?)?;
    assert_eq!(shown["spec"]["image_config"]["secret_env"]["API_KEY"], "api-key");
    assert_eq!(shown["spec"]["autoscaling"]["max_concurrency"], 50);
    // A read-only key describes and lists.
    let listed = reader.ok(&["apprunner", "list-services"])?;
    assert_eq!(listed["ServiceSummaryList"][0]["ServiceArn"], arn.as_str(), "{listed}");
    let tags = ci.ok(&["apprunner", "list-tags-for-resource", "--resource-arn", &arn])?;
    assert_eq!(tags["Tags"], serde_json::json!([{"Key": "team", "Value": "web"}]));

    // start-deployment: an operation of its own, listed newest first.
    let started = ci.ok(&["apprunner", "start-deployment", "--service-arn", &arn])?;
    let op = started["OperationId"].as_str().ok_or("no OperationId")?.to_owned();
    wait_until("the deployment to succeed", Duration::from_secs(90), || {
        let ops = ci.ok(&["apprunner", "list-operations", "--service-arn", &arn])?;
        let first = &ops["OperationSummaryList"][0];
        assert_eq!((first["Id"].as_str(), first["Type"].as_str()), (Some(op.as_str()), Some("START_DEPLOYMENT")), "{ops}");
        Ok(first["Status"] == "SUCCEEDED")
    })?;
    let ops = ci.ok(&["apprunner", "list-operations", "--service-arn", &arn])?;
    let kinds: Vec<&str> = ops["OperationSummaryList"].as_array().into_iter().flatten().filter_map(|o| o["Type"].as_str()).collect();
    assert_eq!(kinds, ["START_DEPLOYMENT", "CREATE_SERVICE"]);

    // Auto-deploy: the next push of `latest` serves on its own.
    push(&images.0[1], "latest")?;
    wait_until("the pushed image to serve", Duration::from_secs(90), || Ok(served(&router, &url)?.1.starts_with("hello from v2")))?;
    wait_status(&ci, &arn, "RUNNING")?;

    // update-service: configuration only, through the same mapping.
    let updated = ci.ok(&["apprunner", "update-service", "--service-arn", &arn, "--instance-configuration", "Cpu=1024,Memory=1024"])?;
    assert_eq!(updated["Service"]["Status"], "OPERATION_IN_PROGRESS");
    let svc = wait_status(&ci, &arn, "RUNNING")?;
    assert_eq!(svc["Service"]["InstanceConfiguration"]["Cpu"], "1024");
    // UpdatedAt follows the newest operation (shown as a date by the CLI).
    let (created, changed) = (svc["Service"]["CreatedAt"].as_str().unwrap_or(""), svc["Service"]["UpdatedAt"].as_str().unwrap_or(""));
    assert!(!created.is_empty() && changed > created, "{created} → {changed}");

    // Pause: nothing serves; resume: it serves again.
    ci.ok(&["apprunner", "pause-service", "--service-arn", &arn])?;
    wait_status(&ci, &arn, "PAUSED")?;
    assert_ne!(served(&router, &url)?.0, 200);
    ci.ok(&["apprunner", "resume-service", "--service-arn", &arn])?;
    wait_status(&ci, &arn, "RUNNING")?;
    wait_until("the resumed service to serve", Duration::from_secs(60), || Ok(served(&router, &url)?.0 == 200))?;

    // VPC connectors are berth networks under App Runner's name.
    let unknown = ci.error(&["apprunner", "create-vpc-connector", "--vpc-connector-name", "db-link", "--subnets", "subnet-0abc"])?;
    assert!(unknown.contains("InvalidRequestException") && unknown.contains("berth network"), "{unknown}");
    s.cli_ok(&["network", "create", "lan", "--cidr", "10.244.250.0/24"])?;
    let vpc =
        ci.ok(&["apprunner", "create-vpc-connector", "--vpc-connector-name", "db-link", "--subnets", "lan", "--security-groups", "sg-1"])?;
    let vpc_arn = vpc["VpcConnector"]["VpcConnectorArn"].as_str().ok_or("no connector ARN")?.to_owned();
    assert_eq!(vpc["VpcConnector"]["Status"], "ACTIVE");
    let egress = format!("EgressConfiguration={{EgressType=VPC,VpcConnectorArn={vpc_arn}}}");
    ci.ok(&["apprunner", "update-service", "--service-arn", &arn, "--network-configuration", &egress])?;
    let svc = wait_status(&ci, &arn, "RUNNING")?;
    assert_eq!(svc["Service"]["NetworkConfiguration"]["EgressConfiguration"]["VpcConnectorArn"], vpc_arn.as_str());
    let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "ar-web"])?)?;
    assert_eq!(
        (&shown["spec"]["network"]["networks"][0], &shown["spec"]["network"]["egress"]),
        (&serde_json::json!("lan"), &serde_json::json!("networks"))
    );
    let busy = ci.error(&["apprunner", "delete-vpc-connector", "--vpc-connector-arn", &vpc_arn])?;
    assert!(busy.contains("InvalidRequestException") && busy.contains("ar-web"), "{busy}");

    // Export writes what describe-service says; importing it back gives the same spec.
    let exported: serde_json::Value = serde_json::from_str(&s.cli_ok(&["export", "apprunner", "ar-web", "--region", REGION])?)?;
    assert_eq!(exported["Service"]["ServiceArn"], arn.as_str());
    let (ex, described) = (&exported["Service"]["SourceConfiguration"], &svc["Service"]["SourceConfiguration"]);
    assert_eq!(ex["ImageRepository"]["ImageConfiguration"], described["ImageRepository"]["ImageConfiguration"]);
    // The image as berth's registry names it (App Runner's ECR-style name was the API's input).
    assert_eq!(ex["ImageRepository"]["ImageIdentifier"], format!("{}/web:latest", s.addr));
    let file = tmp.path().join("exported.json");
    std::fs::write(&file, exported.to_string())?;
    let file = file.display().to_string();
    let asc_file = tmp.path().join("asc.json");
    let asc_described = ci.ok(&["apprunner", "describe-auto-scaling-configuration", "--auto-scaling-configuration-arn", &asc_arn])?;
    std::fs::write(&asc_file, asc_described.to_string())?;
    let asc_file = asc_file.display().to_string();
    let dry = s.cli_ok(&["-o", "json", "import", "apprunner", &file, "--autoscaling", &asc_file, "--name", "ar-copy", "--dry-run"])?;
    let dry: serde_json::Value = serde_json::from_str(&dry)?;
    let mut expected = shown["spec"].clone();
    expected["name"] = serde_json::json!("ar-copy");
    assert_eq!(dry["spec"], expected);

    // Import of a service as AWS describes it, with its auto scaling configuration: created,
    // serving, and a report of what did not carry over.
    let aws_doc = serde_json::json!({"Service": {
        "ServiceName": "ar-imported",
        "ServiceId": "8fe1e10304f84fd2b0df550fe98a71fa",
        "ServiceArn": "arn:aws:apprunner:us-east-1:123456789012:service/ar-imported/8fe1e10304f84fd2b0df550fe98a71fa",
        "ServiceUrl": "psbqam834h.us-east-1.awsapprunner.com",
        "Status": "RUNNING",
        "SourceConfiguration": {
            "ImageRepository": {
                "ImageIdentifier": "123456789012.dkr.ecr.us-east-1.amazonaws.com/web:1a2b3c4",
                "ImageRepositoryType": "ECR",
                "ImageConfiguration": {"Port": "8080", "RuntimeEnvironmentVariables": {"MODE": "prod"}},
            },
            "AutoDeploymentsEnabled": false,
            "AuthenticationConfiguration": {"AccessRoleArn": "arn:aws:iam::123456789012:role/service-role/AppRunnerECRAccessRole"},
        },
        "InstanceConfiguration": {"Cpu": "1024", "Memory": "2048", "InstanceRoleArn": "arn:aws:iam::123456789012:role/app"},
        "HealthCheckConfiguration": {"Protocol": "TCP", "Path": "/", "Interval": 10, "Timeout": 5, "HealthyThreshold": 1, "UnhealthyThreshold": 5},
        "AutoScalingConfigurationSummary": {
            "AutoScalingConfigurationArn": "arn:aws:apprunner:us-east-1:123456789012:autoscalingconfiguration/busy/3/0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            "AutoScalingConfigurationName": "busy",
            "AutoScalingConfigurationRevision": 3,
        },
        "NetworkConfiguration": {"EgressConfiguration": {"EgressType": "DEFAULT"}, "IngressConfiguration": {"IsPubliclyAccessible": true}},
        "ObservabilityConfiguration": {"ObservabilityEnabled": true, "ObservabilityConfigurationArn": "arn:aws:apprunner:us-east-1:123456789012:observabilityconfiguration/xray/1/0123"},
    }});
    let asc_doc = serde_json::json!({"AutoScalingConfiguration": {"AutoScalingConfigurationName": "busy", "MaxConcurrency": 80, "MinSize": 2, "MaxSize": 4}});
    let (svc_file, asc_file) = (tmp.path().join("aws-service.json"), tmp.path().join("aws-asc.json"));
    std::fs::write(&svc_file, aws_doc.to_string())?;
    std::fs::write(&asc_file, asc_doc.to_string())?;
    let report =
        s.cli_ok(&["import", "apprunner", &svc_file.display().to_string(), "--autoscaling", &asc_file.display().to_string(), "--wait"])?;
    for line in [
        "InstanceConfiguration.InstanceRoleArn",
        "SourceConfiguration.AuthenticationConfiguration",
        "ObservabilityConfiguration",
        "SUCCEEDED",
    ] {
        assert!(report.contains(line), "{line} missing from the report:\n{report}");
    }
    let imported: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "ar-imported"])?)?;
    assert_eq!(imported["spec"]["source"], serde_json::json!({"image": "web:1a2b3c4", "auto_deploy": false}));
    assert_eq!(
        (imported["spec"]["autoscaling"]["min_size"].as_u64(), imported["spec"]["health_check"]["timeout"].as_u64()),
        (Some(2), Some(5))
    );
    let (status, body) = served(&router, "ar-imported.localhost")?;
    assert!(status == 200 && body.starts_with("hello from v1"), "{status} {body}");

    // What berth cannot do is refused, naming why.
    let code = ci.error(&[
        "apprunner",
        "create-service",
        "--service-name",
        "ar-code",
        "--source-configuration",
        r#"{"CodeRepository":{"RepositoryUrl":"https://example.invalid/x","SourceCodeVersion":{"Type":"BRANCH","Value":"main"}}}"#,
    ])?;
    assert!(code.contains("InvalidRequestException") && code.contains("build the image in CI"), "{code}");
    let missing = ci.error(&["apprunner", "describe-service", "--service-arn", &arn.replace(id, &"0".repeat(32))])?;
    assert!(missing.contains("ResourceNotFoundException"), "{missing}");

    // delete-service: gone, as Terraform's waiter expects.
    let deleted = ci.ok(&["apprunner", "delete-service", "--service-arn", &arn])?;
    assert_eq!(deleted["Service"]["Status"], "OPERATION_IN_PROGRESS");
    wait_until("the service to be gone", Duration::from_secs(60), || {
        Ok(ci.error(&["apprunner", "describe-service", "--service-arn", &arn]).is_ok_and(|e| e.contains("ResourceNotFoundException")))
    })?;
    let vpc = ci.ok(&["apprunner", "delete-vpc-connector", "--vpc-connector-arn", &vpc_arn])?;
    assert_eq!(vpc["VpcConnector"]["Status"], "INACTIVE");
    let asc = ci.ok(&["apprunner", "delete-auto-scaling-configuration", "--auto-scaling-configuration-arn", &asc_arn])?;
    assert_eq!(asc["AutoScalingConfiguration"]["Status"], "inactive");
    let asc = ci.ok(&["apprunner", "describe-auto-scaling-configuration", "--auto-scaling-configuration-arn", &asc_arn])?;
    assert_eq!(asc["AutoScalingConfiguration"]["Status"], "inactive", "a deleted revision is still described");
    Ok(())
}

#[test]
fn moto_and_berth_answer_the_corpus_alike() -> Result {
    let s = Server::start()?;
    let key = aws_key(&s, "diff", &["admin"])?;
    let target = PathBuf::from(BIN).parent().and_then(Path::parent).map(Path::to_path_buf).ok_or("no target directory")?;
    let moto = berth_testkit::aws::Moto::start(&target.join("moto-venv"))?;
    let corpus = berth_testkit::aws::corpus(REGION);
    let (mut mismatches, mut deviations) = (Vec::new(), Vec::new());
    use berth_testkit::aws::Verdict;
    for (n, call) in corpus.iter().enumerate() {
        let ask = |addr: &str, account: &str| -> Result<(u16, serde_json::Value)> {
            let body = call.body.replace("{account}", account);
            let r = signed_to(addr, &key, &call.target, &body, now(), call.service)?;
            let v =
                if r.body.is_empty() { serde_json::json!({}) } else { serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null) };
            Ok((r.status, v))
        };
        let (ours, theirs) = (ask(&s.addr, "000000000000")?, ask(&moto.addr, "123456789012")?);
        match berth_testkit::aws::compare(call, &ours, &theirs) {
            Verdict::Same => {}
            Verdict::MotoDeviates(why) => deviations.push(format!("#{n} {}: {why}", call.target)),
            Verdict::Differs(d) => mismatches.push(format!("#{n} {} {}: {d}", call.target, call.body)),
        }
    }
    assert!(corpus.len() >= 200);
    // Where moto departs from AWS, berth answers as AWS does; each such case is named.
    eprintln!(
        "{} calls; {} answered alike; moto departs from AWS in {}:\n{}",
        corpus.len(),
        corpus.len() - deviations.len() - mismatches.len(),
        deviations.len(),
        deviations.join("\n")
    );
    assert!(mismatches.is_empty(), "{} of {} calls differ from moto:\n{}", mismatches.len(), corpus.len(), mismatches.join("\n"));
    Ok(())
}
