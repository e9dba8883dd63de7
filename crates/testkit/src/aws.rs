//! AWS clients for berth's AWS-compatible APIs: the aws CLI and podman as a pipeline runs them,
//! and the differential oracle for ECR and Secrets Manager — moto's server (PyPI
//! `moto[server]`, in a virtual environment made on first use), a corpus of requests (the calls
//! a pipeline makes, and the mistakes it makes) and the comparison of two answers by status,
//! error type and shape, values such as ids, ARNs and times aside.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::{wait_for_port, Error};

/// The moto release the corpus was checked against.
pub const MOTO: &str = "moto[server]==5.2.5";

/// moto's server on a loopback port, stopped when dropped.
pub struct Moto {
    child: Child,
    pub addr: String,
}

impl Moto {
    /// Starts `moto_server` from the virtual environment at `venv`, making it first if needed.
    pub fn start(venv: &Path) -> Result<Moto, Error> {
        let ready = venv.join("ready");
        if !ready.exists() {
            let made = Command::new("python3").args(["-m", "venv"]).arg(venv).status()?;
            if !made.success() {
                return Err("python3 -m venv failed (apt-get install python3-venv)".into());
            }
            let pip = Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", MOTO]).status()?;
            if !pip.success() {
                return Err(format!("pip install {MOTO} failed").into());
            }
            std::fs::write(&ready, "")?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting moto_server: {e}"))?;
        let moto = Moto { child, addr };
        wait_for_port(&moto.addr, Duration::from_secs(60))?;
        Ok(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// aws CLI v2: Debian's `/usr/bin/aws` (another `aws` earlier on PATH may be version 1).
fn aws_cli() -> Result<PathBuf, Error> {
    for candidate in ["/usr/bin/aws", "aws"] {
        let v = Command::new(candidate).arg("--version").output();
        if v.as_ref().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("aws-cli/2")) {
            return Ok(PathBuf::from(candidate));
        }
    }
    Err("aws CLI v2 not found: install Debian's awscli".into())
}

/// The aws CLI as a pipeline runs it: endpoint, key and region from the environment only.
pub struct AwsCli {
    bin: PathBuf,
    home: PathBuf,
    endpoint: String,
    key_id: String,
    secret: String,
    region: String,
}

impl AwsCli {
    /// A CLI whose configuration lives in `home` (made if missing).
    pub fn new(home: &Path, endpoint: &str, key_id: &str, secret: &str, region: &str) -> Result<AwsCli, Error> {
        std::fs::create_dir_all(home)?;
        Ok(AwsCli {
            bin: aws_cli()?,
            home: home.to_path_buf(),
            endpoint: endpoint.to_owned(),
            key_id: key_id.to_owned(),
            secret: secret.to_owned(),
            region: region.to_owned(),
        })
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        // `--endpoint-url` as well: Debian's aws CLI predates AWS_ENDPOINT_URL. Anything that
        // still went past it would meet a proxy on a closed loopback port, never AWS.
        c.args(args)
            .args(["--output", "json", "--endpoint-url", &self.endpoint])
            .env_clear()
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("AWS_CONFIG_FILE", self.home.join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.home.join("credentials"))
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_DEFAULT_REGION", &self.region)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_PAGER", "");
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<Output, Error> {
        Ok(self.command(args).output()?)
    }

    /// The JSON an operation answered; an error when the CLI failed.
    pub fn ok(&self, args: &[&str]) -> Result<Value, Error> {
        let out = self.run(args)?;
        if !out.status.success() {
            return Err(format!("aws {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// What the CLI printed for a call that must fail (`… (TypeName) when calling …`).
    pub fn error(&self, args: &[&str]) -> Result<String, Error> {
        let out = self.run(args)?;
        if out.status.success() {
            return Err(format!("aws {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout)).into());
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn podman(args: &[&str], stdin: Option<&str>) -> Result<Output, Error> {
    let mut c = Command::new("podman");
    c.args(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("running podman (install podman): {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

pub fn podman_ok(args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let out = podman(args, stdin)?;
    if !out.status.success() {
        return Err(format!("podman {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// podman's images made by a test or benchmark, removed when dropped.
pub struct PodmanImages(pub Vec<String>);

impl Drop for PodmanImages {
    fn drop(&mut self) {
        for i in &self.0 {
            let _ = podman(&["rmi", "--force", i], None);
        }
    }
}

/// A podman image `name` of the static hello app `bin` answering `hello from <version>` (made
/// with `podman import`: no registry, no build tool).
pub fn hello_image(dir: &Path, bin: &Path, name: &str, version: &str) -> Result<(), Error> {
    let root = dir.join(format!("app-{version}"));
    std::fs::create_dir_all(&root)?;
    std::fs::copy(bin, root.join("hello"))?;
    let tar = root.with_extension("tar");
    let out = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").output()?;
    if !out.status.success() {
        return Err(format!("tar failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let env = format!("ENV HELLO_VERSION={version}");
    podman_ok(&["import", "--change", r#"CMD ["/hello"]"#, "--change", &env, &tar.display().to_string(), name], None)?;
    Ok(())
}

/// One request of the corpus: its `X-Amz-Target`, the service it is signed for, and its body,
/// where `{account}` stands for the account of the server asked.
#[derive(Debug, Clone)]
pub struct Call {
    pub target: String,
    pub service: &'static str,
    pub body: String,
}

const ECR: &str = "AmazonEC2ContainerRegistry_V20150921.";
const SM: &str = "secretsmanager.";

fn ecr(op: &str, body: Value) -> Call {
    Call { target: format!("{ECR}{op}"), service: "ecr", body: body.to_string() }
}

fn sm(op: &str, body: Value) -> Call {
    Call { target: format!("{SM}{op}"), service: "secretsmanager", body: body.to_string() }
}

/// A fixed client request token (a version id, on Secrets Manager), so answers can be compared.
fn token(secret: usize, n: usize) -> String {
    format!("00000000-0000-4000-8000-{:06}{:06}", secret, n)
}

/// The corpus, in order (each call may depend on the ones before): over 200 calls.
pub fn corpus(region: &str) -> Vec<Call> {
    let mut c = Vec::new();
    let policy = json!({"rules": [{"rulePriority": 1, "description": "keep 10", "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 10}, "action": {"type": "expire"}}]}).to_string();
    for i in 0..4 {
        let name = format!("diff/repo-{i}");
        let arn = format!("arn:aws:ecr:{region}:{{account}}:repository/{name}");
        let mutability = if i % 2 == 0 { "MUTABLE" } else { "IMMUTABLE" };
        c.push(ecr(
            "CreateRepository",
            json!({"repositoryName": name, "imageTagMutability": mutability, "tags": [{"Key": "team", "Value": format!("t{i}")}]}),
        ));
        c.push(ecr("CreateRepository", json!({"repositoryName": name})));
        c.push(ecr("DescribeRepositories", json!({"repositoryNames": [name]})));
        c.push(ecr("PutImageTagMutability", json!({"repositoryName": name, "imageTagMutability": "IMMUTABLE"})));
        c.push(ecr("PutImageTagMutability", json!({"repositoryName": name, "imageTagMutability": "MUTABLE"})));
        c.push(ecr("ListImages", json!({"repositoryName": name})));
        c.push(ecr("DescribeImages", json!({"repositoryName": name})));
        c.push(ecr("DescribeImages", json!({"repositoryName": name, "imageIds": [{"imageTag": "missing"}]})));
        c.push(ecr("BatchGetImage", json!({"repositoryName": name, "imageIds": [{"imageTag": "missing"}]})));
        c.push(ecr("BatchDeleteImage", json!({"repositoryName": name, "imageIds": [{"imageTag": "missing"}]})));
        c.push(ecr("GetLifecyclePolicy", json!({"repositoryName": name})));
        c.push(ecr("PutLifecyclePolicy", json!({"repositoryName": name, "lifecyclePolicyText": policy})));
        c.push(ecr("GetLifecyclePolicy", json!({"repositoryName": name})));
        c.push(ecr("DeleteLifecyclePolicy", json!({"repositoryName": name})));
        c.push(ecr("DeleteLifecyclePolicy", json!({"repositoryName": name})));
        c.push(ecr("TagResource", json!({"resourceArn": arn, "tags": [{"Key": "env", "Value": "prod"}]})));
        c.push(ecr("ListTagsForResource", json!({"resourceArn": arn})));
        c.push(ecr("UntagResource", json!({"resourceArn": arn, "tagKeys": ["env"]})));
        c.push(ecr("ListTagsForResource", json!({"resourceArn": arn})));
        c.push(ecr("DescribeRepositories", json!({"repositoryNames": [format!("{name}-missing")]})));
        c.push(ecr("ListImages", json!({"repositoryName": format!("{name}-missing")})));
        c.push(ecr("DescribeImages", json!({"repositoryName": format!("{name}-missing")})));
    }
    c.push(ecr("DescribeRepositories", json!({})));
    c.push(ecr("GetAuthorizationToken", json!({})));
    c.push(ecr("CreateRepository", json!({"repositoryName": "Bad Name"})));
    c.push(ecr("CreateRepository", json!({})));
    for i in 0..4 {
        c.push(ecr("DeleteRepository", json!({"repositoryName": format!("diff/repo-{i}")})));
        c.push(ecr("DeleteRepository", json!({"repositoryName": format!("diff/repo-{i}")})));
    }
    c.push(ecr("DescribeRepositories", json!({})));

    for i in 0..4 {
        let id = format!("diff/secret-{i}");
        c.push(sm(
            "CreateSecret",
            json!({"Name": id, "SecretString": format!("v1-{i}"), "Description": "first", "ClientRequestToken": token(i, 1)}),
        ));
        c.push(sm("CreateSecret", json!({"Name": id, "SecretString": "again", "ClientRequestToken": token(i, 9)})));
        c.push(sm("GetSecretValue", json!({"SecretId": id})));
        c.push(sm("GetSecretValue", json!({"SecretId": id, "VersionStage": "AWSCURRENT"})));
        c.push(sm("GetSecretValue", json!({"SecretId": id, "VersionStage": "AWSPREVIOUS"})));
        c.push(sm("PutSecretValue", json!({"SecretId": id, "SecretString": format!("v2-{i}"), "ClientRequestToken": token(i, 2)})));
        c.push(sm("PutSecretValue", json!({"SecretId": id, "SecretString": format!("v2-{i}"), "ClientRequestToken": token(i, 2)})));
        c.push(sm("GetSecretValue", json!({"SecretId": id, "VersionStage": "AWSPREVIOUS"})));
        c.push(sm("GetSecretValue", json!({"SecretId": id, "VersionId": token(i, 1)})));
        c.push(sm("GetSecretValue", json!({"SecretId": id, "VersionId": token(i, 7)})));
        c.push(sm("DescribeSecret", json!({"SecretId": id})));
        c.push(sm("UpdateSecret", json!({"SecretId": id, "Description": "second", "ClientRequestToken": token(i, 4)})));
        c.push(sm("UpdateSecret", json!({"SecretId": id, "SecretString": format!("v3-{i}"), "ClientRequestToken": token(i, 3)})));
        c.push(sm("UpdateSecretVersionStage", json!({"SecretId": id, "VersionStage": "CANARY", "MoveToVersionId": token(i, 3)})));
        c.push(sm("UpdateSecretVersionStage", json!({"SecretId": id, "VersionStage": "CANARY", "RemoveFromVersionId": token(i, 3)})));
        c.push(sm("TagResource", json!({"SecretId": id, "Tags": [{"Key": "team", "Value": "web"}]})));
        c.push(sm("UntagResource", json!({"SecretId": id, "TagKeys": ["team"]})));
        c.push(sm("DescribeSecret", json!({"SecretId": id})));
        c.push(sm("GetSecretValue", json!({"SecretId": format!("diff/missing-{i}")})));
        c.push(sm("DeleteSecret", json!({"SecretId": id, "RecoveryWindowInDays": 7})));
        c.push(sm("GetSecretValue", json!({"SecretId": id})));
        c.push(sm("RestoreSecret", json!({"SecretId": id})));
        c.push(sm("GetSecretValue", json!({"SecretId": id})));
    }
    c.push(sm("ListSecrets", json!({})));
    c.push(sm("GetRandomPassword", json!({})));
    c.push(sm("GetRandomPassword", json!({"PasswordLength": 20, "ExcludePunctuation": true})));
    c.push(sm("GetRandomPassword", json!({"PasswordLength": 0})));
    c.push(sm("DeleteSecret", json!({"SecretId": "diff/secret-0", "RecoveryWindowInDays": 3})));
    c.push(sm("DescribeSecret", json!({"SecretId": "diff/never"})));
    c.push(sm("PutSecretValue", json!({"SecretId": "diff/never", "SecretString": "x"})));
    for i in 0..4 {
        c.push(sm("DeleteSecret", json!({"SecretId": format!("diff/secret-{i}"), "ForceDeleteWithoutRecovery": true})));
    }
    c
}

/// Members whose keys are values (version ids), compared by their count and their values' shapes.
const MAPS: &[&str] = &["VersionIdsToStages", "SecretVersionsToStages"];

/// Whether a member carries nothing: clients read `null` and `[]` as an absent member.
fn empty(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(Vec::is_empty)
}

/// A JSON value's shape: the member names and value types, recursively; arrays keep their length.
/// Empty members count as absent, and so do versions without staging labels in the maps of
/// versions to labels (AWS lists only labelled versions there).
pub fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !empty(v))
                .map(|(k, v)| {
                    let s = match v.as_object() {
                        Some(map) if MAPS.contains(&k.as_str()) => {
                            let labelled: Vec<Value> = map.values().filter(|l| !empty(l)).map(shape).collect();
                            json!({ "entries": labelled.len(), "values": labelled })
                        }
                        _ => shape(v),
                    };
                    (k.clone(), s)
                })
                .collect(),
        ),
    }
}

/// How berth's answer to a call compares with moto's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Same,
    /// They differ where moto is known to depart from AWS, and berth answers as AWS does.
    MotoDeviates(&'static str),
    /// They differ.
    Differs(String),
}

/// Members moto adds that the service's model does not have: `(operation, where, member)`.
const MOTO_EXTRAS: &[(&str, &str, &str)] = &[
    // DescribeSecret's output has VersionIdsToStages only.
    ("secretsmanager.DescribeSecret", "", "SecretVersionsToStages"),
    // ListSecrets' entries have SecretVersionsToStages only.
    ("secretsmanager.ListSecrets", "SecretList", "VersionIdsToStages"),
];

fn without_moto_extras(target: &str, mut v: Value) -> Value {
    for (op, at, member) in MOTO_EXTRAS.iter().filter(|(op, ..)| *op == target) {
        let _ = op;
        let holders: Vec<&mut Value> = if at.is_empty() {
            vec![&mut v]
        } else {
            v.get_mut(*at).and_then(Value::as_array_mut).map(|a| a.iter_mut().collect()).unwrap_or_default()
        };
        for h in holders {
            if let Some(o) = h.as_object_mut() {
                o.remove(*member);
            }
        }
    }
    v
}

/// Compares berth's answer to `call` with moto's: status, error type, and shape, values aside.
pub fn compare(call: &Call, berth: &(u16, Value), moto: &(u16, Value)) -> Verdict {
    let kind = |v: &Value| v["__type"].as_str().map(|t| t.rsplit('#').next().unwrap_or(t).to_owned());
    if moto.0 >= 500 && berth.0 == 400 {
        return Verdict::MotoDeviates("moto fails (500) on a request AWS refuses with a validation error");
    }
    if berth.0 != moto.0 {
        // Secrets Manager is awsJson 1.1 and its ResourceNotFoundException has no HTTP status
        // of its own in the model: AWS answers 400; moto answers 404.
        if call.service == "secretsmanager" && (berth.0, moto.0) == (400, 404) && kind(&berth.1) == kind(&moto.1) {
            return Verdict::MotoDeviates("moto answers ResourceNotFoundException with 404; AWS with 400");
        }
        return Verdict::Differs(format!("status {} ≠ moto's {} (berth: {}, moto: {})", berth.0, moto.0, berth.1, moto.1));
    }
    if berth.0 >= 400 {
        return if kind(&berth.1) == kind(&moto.1) {
            Verdict::Same
        } else {
            Verdict::Differs(format!("error {:?} ≠ moto's {:?} (berth: {}, moto: {})", kind(&berth.1), kind(&moto.1), berth.1, moto.1))
        };
    }
    let (a, b) = (shape(&berth.1), shape(&without_moto_extras(&call.target, moto.1.clone())));
    if a == b {
        Verdict::Same
    } else {
        Verdict::Differs(format!("shape differs:\n    berth: {a}\n    moto:  {b}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_large_and_answers_compare_by_shape() {
        assert!(corpus("eu-west-1").len() >= 200);
        let a = (200, json!({"repository": {"repositoryName": "a", "createdAt": 1.5}, "VersionIdsToStages": {"x": ["AWSCURRENT"]}}));
        let b = (200, json!({"repository": {"repositoryName": "b", "createdAt": 2}, "VersionIdsToStages": {"y": ["AWSCURRENT"]}}));
        let call = ecr("DescribeRepositories", json!({}));
        assert_eq!(compare(&call, &a, &b), Verdict::Same);
        let c = (200, json!({"repository": {"repositoryName": "b"}}));
        assert!(matches!(compare(&call, &a, &c), Verdict::Differs(_)));
        let e1 = (400, json!({"__type": "RepositoryNotFoundException", "message": "x"}));
        let e2 = (400, json!({"__type": "com.amazonaws.ecr#RepositoryNotFoundException", "message": "y"}));
        assert_eq!(compare(&call, &e1, &e2), Verdict::Same);
        assert!(matches!(compare(&call, &e1, &(404, json!({}))), Verdict::Differs(_)));
        // Empty members and unlabelled versions count as absent; moto's own extras are dropped.
        let describe = sm("DescribeSecret", json!({}));
        let ours = (200, json!({"Name": "a", "VersionIdsToStages": {"v1": ["AWSCURRENT"]}}));
        let moto = (
            200,
            json!({"Name": "a", "KmsKeyId": null, "Tags": [], "VersionIdsToStages": {"v0": [], "v1": ["AWSCURRENT"]}, "SecretVersionsToStages": {}}),
        );
        assert_eq!(compare(&describe, &ours, &moto), Verdict::Same);
        let missing = (404, json!({"__type": "ResourceNotFoundException"}));
        assert!(matches!(compare(&describe, &(400, missing.1.clone()), &missing), Verdict::MotoDeviates(_)));
    }
}
