//! Manifest parsing and validation for the four formats the registry stores: OCI image
//! manifests and indexes, Docker schema2 manifests and manifest lists. Parsing extracts what
//! the registry must check and index: referenced blobs and manifests, `subject`, artifact type.

use berth_core::Digest;
use serde::Deserialize;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Largest manifest accepted, as the spec suggests.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error(
        "manifest media type `{0}` is not supported; push an OCI image manifest or index, or a Docker schema2 manifest or manifest list"
    )]
    UnsupportedMediaType(String),
    #[error("manifest declares media type `{body}` but was sent as `{header}`; make the Content-Type match the manifest's mediaType")]
    MediaTypeMismatch { body: String, header: String },
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    #[error("manifest has no media type; set mediaType in the manifest or the Content-Type header")]
    NoMediaType,
    #[error("descriptor digest `{0}` is invalid")]
    Digest(String),
}

/// A platform an index entry is for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[allow(dead_code)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    subject: Option<RawDescriptor>,
    #[serde(default)]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What the registry learns from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedManifest {
    pub media_type: String,
    /// Config and layers (image manifests).
    pub blobs: Vec<Digest>,
    /// Child manifests with their platforms (indexes and lists).
    pub manifests: Vec<(Digest, Option<Platform>)>,
    pub subject: Option<Digest>,
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Value>,
}

impl ParsedManifest {
    pub fn is_index(&self) -> bool {
        is_index(&self.media_type)
    }
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

fn digest(d: &RawDescriptor) -> Result<Digest, ManifestError> {
    d.digest.parse().map_err(|_| ManifestError::Digest(d.digest.clone()))
}

/// The media type part of a Content-Type header (parameters dropped).
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Parses and validates a manifest body sent with `content_type`.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let raw: RawManifest = serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    let header = content_type.map(essence).filter(|h| !h.is_empty() && *h != "application/json" && *h != "application/octet-stream");
    let media_type = match (&raw.media_type, header) {
        (Some(b), Some(h)) if b != h => return Err(ManifestError::MediaTypeMismatch { body: b.clone(), header: h.to_owned() }),
        (Some(b), _) => b.clone(),
        (None, Some(h)) => h.to_owned(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) if raw.config.is_some() => OCI_MANIFEST.to_owned(),
        (None, None) => return Err(ManifestError::NoMediaType),
    };
    if ![OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&media_type.as_str()) {
        return Err(ManifestError::UnsupportedMediaType(media_type));
    }
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    let subject = raw.subject.as_ref().map(digest).transpose()?;
    let annotations = raw.annotations.filter(|a| !a.is_empty()).map(serde_json::Value::Object);
    if is_index(&media_type) {
        let manifests = raw
            .manifests
            .ok_or_else(|| ManifestError::Json("an index needs a `manifests` array".into()))?
            .iter()
            .map(|d| Ok((digest(d)?, d.platform.clone())))
            .collect::<Result<_, ManifestError>>()?;
        return Ok(ParsedManifest { media_type, blobs: Vec::new(), manifests, subject, artifact_type: raw.artifact_type, annotations });
    }
    let config = raw.config.ok_or_else(|| ManifestError::Json("an image manifest needs a `config` descriptor".into()))?;
    let layers = raw.layers.ok_or_else(|| ManifestError::Json("an image manifest needs a `layers` array".into()))?;
    let mut blobs = vec![digest(&config)?];
    for l in &layers {
        blobs.push(digest(l)?);
    }
    let artifact_type = raw.artifact_type.or_else(|| config.media_type.clone().filter(|_| media_type == OCI_MANIFEST));
    Ok(ParsedManifest { media_type, blobs, manifests: Vec::new(), subject, artifact_type, annotations })
}

/// Whether an `Accept` header (possibly several, comma-separated) admits `media_type`. No
/// `Accept` at all admits everything.
pub fn accepts(accept: &[&str], media_type: &str) -> bool {
    if accept.is_empty() {
        return true;
    }
    accept.iter().flat_map(|a| a.split(',')).map(essence).any(|a| a == media_type || a == "*/*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn check(ct: Option<&str>, body: &str, expect: Expect) {
        let got = match parse(ct, body.as_bytes()) {
            Ok(p) => format!(
                "ok {} blobs={} manifests={} subject={} artifact={:?}",
                p.media_type,
                p.blobs.len(),
                p.manifests.len(),
                p.subject.is_some(),
                p.artifact_type
            ),
            Err(e) => format!("err {e}"),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn formats() {
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":0}},"layers":[{{"mediaType":"x","digest":"{D}","size":0}}]}}"#
        );
        check(
            Some(OCI_MANIFEST),
            &image,
            expect![[
                r#"ok application/vnd.oci.image.manifest.v1+json blobs=2 manifests=0 subject=false artifact=Some("application/vnd.oci.image.config.v1+json")"#
            ]],
        );
        check(Some(DOCKER_MANIFEST), &image, expect!["err manifest declares media type `application/vnd.oci.image.manifest.v1+json` but was sent as `application/vnd.docker.distribution.manifest.v2+json`; make the Content-Type match the manifest's mediaType"]);
        let artifact = format!(
            r#"{{"schemaVersion":2,"artifactType":"application/sbom","config":{{"mediaType":"{OCI_EMPTY_CONFIG}","digest":"{D}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1}}}}"#
        );
        check(
            Some(OCI_MANIFEST),
            &artifact,
            expect![[
                r#"ok application/vnd.oci.image.manifest.v1+json blobs=1 manifests=0 subject=true artifact=Some("application/sbom")"#
            ]],
        );
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{D}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        check(
            None,
            &list,
            expect!["ok application/vnd.docker.distribution.manifest.list.v2+json blobs=0 manifests=1 subject=false artifact=None"],
        );
        check(Some("application/vnd.docker.distribution.manifest.v1+json"), r#"{"schemaVersion":1}"#, expect!["err manifest media type `application/vnd.docker.distribution.manifest.v1+json` is not supported; push an OCI image manifest or index, or a Docker schema2 manifest or manifest list"]);
        check(Some(OCI_MANIFEST), "{", expect!["err manifest is not valid JSON: EOF while parsing an object at line 1 column 1"]);
        check(
            Some(OCI_MANIFEST),
            r#"{"schemaVersion":2,"config":{"digest":"sha256:zz","size":1},"layers":[]}"#,
            expect!["err descriptor digest `sha256:zz` is invalid"],
        );
        check(Some(OCI_INDEX), r#"{"schemaVersion":3,"manifests":[]}"#, expect!["err manifest schemaVersion must be 2"]);
    }

    #[test]
    fn negotiation() {
        assert!(accepts(&[], OCI_MANIFEST));
        assert!(accepts(&[&format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9")], OCI_MANIFEST));
        assert!(!accepts(&[DOCKER_MANIFEST], OCI_MANIFEST));
        assert!(accepts(&["*/*"], OCI_INDEX));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(ct in proptest::option::of(".*"), body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(ct.as_deref(), &body);
        }

        #[test]
        fn json_shaped_input_never_panics(s in r#"\{("(schemaVersion|mediaType|config|layers|manifests|subject|digest|size)":(2|"[a-z:0-9]*"|\[\]|\{\}|null),?){0,6}\}"#) {
            let _ = parse(Some(OCI_MANIFEST), s.as_bytes());
        }
    }
}
