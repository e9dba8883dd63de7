//! Server configuration: one serde struct with documented defaults, read from a TOML file and
//! overridden by `BERTH_*` environment variables, then by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// Everything `berth server` can be told. See `docs/configuration.md`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where state, blobs and keys live. Default `./.berth`; env `BERTH_DATA`.
    pub data_dir: PathBuf,
    pub api: ApiConfig,
    pub registry: RegistrySettings,
    pub runtime: RuntimeSettings,
    pub router: RouterSettings,
    pub image: ImageSettings,
    pub secrets: SecretsSettings,
    pub log: LogConfig,
}

/// Where the master key of the secrets comes from (`[secrets]`). Neither set: berth's own
/// `<data dir>/master.key`, made (mode 0600) at the first start.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSettings {
    /// A file holding the key (64 hex digits or base64 of 32 bytes), mode 0600. Env
    /// `BERTH_SECRETS_MASTER_KEY_FILE`.
    pub master_key_file: Option<PathBuf>,
    /// A command that prints the key, run by `sh -c` at start (e.g. one that asks a KMS). Env
    /// `BERTH_SECRETS_MASTER_KEY_COMMAND`.
    pub master_key_command: Option<String>,
}

/// Bounds on unpacking images (`[image]`): what one image may write to this host's disk.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    /// Uncompressed size of one layer, in MiB. Default 8192.
    pub max_layer_mib: u64,
    /// Uncompressed size of all layers of one image, in MiB. Default 16384.
    pub max_image_mib: u64,
    /// Files, directories and links in one layer. Default 500000.
    pub max_layer_entries: u64,
    /// Files, directories and links in all layers of one image. Default 1000000.
    pub max_image_entries: u64,
    /// Unpacking stops when the data directory's disk would have less than this free, in MiB.
    /// Default 1024.
    pub min_free_disk_mib: u64,
    /// Seconds unpacking one image may take. Default 900.
    pub unpack_timeout_secs: u64,
}

impl Default for ImageSettings {
    fn default() -> Self {
        let d = berth_image::UnpackLimits::default();
        ImageSettings {
            max_layer_mib: d.layer_bytes >> 20,
            max_image_mib: d.image_bytes >> 20,
            max_layer_entries: d.layer_entries,
            max_image_entries: d.image_entries,
            min_free_disk_mib: d.min_free_bytes >> 20,
            unpack_timeout_secs: d.timeout.as_secs(),
        }
    }
}

impl ImageSettings {
    pub fn limits(&self) -> berth_image::UnpackLimits {
        berth_image::UnpackLimits {
            layer_bytes: self.max_layer_mib.saturating_mul(1 << 20),
            image_bytes: self.max_image_mib.saturating_mul(1 << 20),
            layer_entries: self.max_layer_entries,
            image_entries: self.max_image_entries,
            min_free_bytes: self.min_free_disk_mib.saturating_mul(1 << 20),
            timeout: std::time::Duration::from_secs(self.unpack_timeout_secs),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettings {
    /// The HTTP listener for services. Default `127.0.0.1:8080`; env `BERTH_ROUTER_HTTP`.
    pub listen_http: SocketAddr,
    /// The HTTPS listener for services. Default `127.0.0.1:8443`; env `BERTH_ROUTER_HTTPS`.
    pub listen_https: SocketAddr,
    /// Services are also served at `<name>.<base_domain>` when set. Env `BERTH_BASE_DOMAIN`.
    pub base_domain: Option<String>,
    /// Answer plain HTTP with a 308 redirect to HTTPS. Default false.
    pub redirect_http_to_https: bool,
    /// Send `Strict-Transport-Security` on HTTPS answers. Default false.
    pub hsts: bool,
    /// The access log (JSON lines), relative to the data directory unless absolute; `off`
    /// disables it. Default `logs/access.log`.
    pub access_log: String,
    /// Certificates for custom domains, served instead of ones the local CA issues.
    pub certificates: Vec<CertificateSettings>,
    /// Threads serving each listener, each with its own connections; 0 (default): one per CPU.
    pub workers: usize,
    /// Pin router worker `i` to the `i`-th CPU berth may use. Default true.
    pub pin_workers: bool,
    /// Seconds an HTTP/1.1 client connection may wait for its next request head (idle
    /// keep-alive, or a head sent too slowly) before it is closed, and an HTTP/2 one may stay
    /// without a request in progress. Default 75.
    pub idle_timeout_secs: u64,
    /// Connections each router listener (HTTP, HTTPS) keeps open at once. Default 20000.
    pub max_connections: usize,
    /// Seconds a client has for its TLS handshake. Default 10.
    pub tls_handshake_timeout_secs: u64,
    /// Seconds a stopping router (stopped, or replaced by a successor) lets requests in flight
    /// finish. Default 60.
    pub drain_timeout_secs: u64,
    /// Count each revision's requests and latency for the metrics history (`berth service
    /// metrics`, the console's charts). Default on.
    pub metrics_history: bool,
}

/// A user-supplied certificate: `[[router.certificates]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateSettings {
    /// The names it serves: `www.example.com`, or `*.example.com` for one label under it.
    pub domains: Vec<String>,
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            listen_http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listen_https: SocketAddr::from(([127, 0, 0, 1], 8443)),
            base_domain: None,
            redirect_http_to_https: false,
            hsts: false,
            access_log: "logs/access.log".into(),
            certificates: Vec::new(),
            workers: 0,
            pin_workers: true,
            idle_timeout_secs: 75,
            max_connections: berth_router::DEFAULT_MAX_CONNECTIONS,
            tls_handshake_timeout_secs: 10,
            drain_timeout_secs: 60,
            metrics_history: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// `auto` (on when running as root), `on` or `off`. Env `BERTH_RUNTIME`.
    pub enabled: String,
    /// The host bridge instances attach to. Env `BERTH_RUNTIME_BRIDGE`.
    pub bridge: String,
    /// Addresses of instances; the bridge takes the first. Env `BERTH_RUNTIME_CIDR`.
    pub cidr: String,
    /// Parent of every instance's cgroup. Env `BERTH_RUNTIME_CGROUP_PARENT`.
    pub cgroup_parent: String,
    /// `auto` (overlayfs where the kernel has it), `overlay` or `copy`.
    pub rootfs: String,
    /// Let instances of services with public egress reach the internet through NAT (nftables
    /// masquerade). On by default, as under Docker. Env `BERTH_RUNTIME_OUTBOUND_NAT`.
    pub outbound_nat: bool,
    /// Registries (`host:port`) pulled from over plain HTTP; loopback ones always are.
    pub insecure_registries: Vec<String>,
    /// Logs of instances that are gone (replaced, scaled in, deleted) are kept this many days,
    pub gone_logs_days: u32,
    /// the last this many KiB of each,
    pub gone_logs_per_instance_kib: u64,
    /// at most this many MiB for one service's instances,
    pub gone_logs_per_service_mib: u64,
    /// and this many MiB in all (the oldest go first).
    pub gone_logs_total_mib: u64,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            enabled: "auto".into(),
            bridge: "berth0".into(),
            // Docker takes 172.17/16 and podman 10.88/16 by default; stay clear of both.
            cidr: "10.77.0.0/16".into(),
            cgroup_parent: "berth".into(),
            rootfs: "auto".into(),
            outbound_nat: true,
            insecure_registries: Vec::new(),
            gone_logs_days: 7,
            gone_logs_per_instance_kib: 1024,
            gone_logs_per_service_mib: 64,
            gone_logs_total_mib: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The API listener (API, registry, token endpoint). Default `127.0.0.1:7070`; port 0 picks a
    /// free port. Env `BERTH_API_LISTEN`.
    pub listen: SocketAddr,
    /// Connections the API listener keeps open at once. Default 4096.
    pub max_connections: usize,
    /// Seconds a connection may wait for its next request head. Default 75.
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// Tag mutability of repositories created by a push. Default `MUTABLE`.
    pub default_tag_mutability: String,
    /// Exclusion filters for that default.
    pub default_exclusions: Vec<String>,
    /// Blobs younger than this are never collected. Default 3600.
    pub gc_grace_secs: u64,
    /// Idle uploads older than this are discarded by the collector. Default 86400.
    pub upload_expiry_secs: u64,
    /// How often the collector runs by itself; 0 turns that off. Default 3600.
    pub gc_interval_secs: u64,
    /// The token endpoint announced in registry challenges, when clients reach the server through
    /// another address than its Host header says (a proxy). Default: derived per request.
    pub token_realm: Option<String>,
    /// Upload sessions one repository may have open at once. Default 256.
    pub max_uploads_per_repository: usize,
    /// Upload sessions one token may have open at once. Default 64.
    pub max_uploads_per_token: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. Env `BERTH_LOG_FORMAT`.
    pub format: String,
    /// A tracing filter such as `info` or `berth_registry=debug`. Env `BERTH_LOG`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".berth"),
            api: ApiConfig::default(),
            registry: RegistrySettings::default(),
            runtime: RuntimeSettings::default(),
            router: RouterSettings::default(),
            image: ImageSettings::default(),
            secrets: SecretsSettings::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { listen: SocketAddr::from(([127, 0, 0, 1], 7070)), max_connections: 4096, idle_timeout_secs: 75 }
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            default_tag_mutability: "MUTABLE".into(),
            default_exclusions: Vec::new(),
            gc_grace_secs: 3600,
            upload_expiry_secs: 86_400,
            gc_interval_secs: 3600,
            token_realm: None,
            max_uploads_per_repository: 256,
            max_uploads_per_token: 64,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), level: "info".into() }
    }
}

impl Config {
    /// Loads `file` (when given, or `<data dir>/config.toml` when it exists), then applies the
    /// environment `env` (a lookup, so tests need not touch the process environment).
    pub fn load(file: Option<&Path>, data_dir_flag: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let data_dir = data_dir_flag.map(Path::to_path_buf).or_else(|| env("BERTH_DATA").map(PathBuf::from));
        let implicit = data_dir.clone().unwrap_or_else(|| PathBuf::from(".berth")).join("config.toml");
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env("BERTH_CONFIG").map(PathBuf::from))
            .or_else(|| implicit.exists().then_some(implicit));
        let mut config = match &file {
            Some(f) => {
                let text = std::fs::read_to_string(f).with_context(|| format!("reading config file {}", f.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {} is invalid", f.display()))?
            }
            None => Config::default(),
        };
        if let Some(d) = data_dir {
            config.data_dir = d;
        }
        if let Some(v) = env("BERTH_API_LISTEN") {
            config.api.listen = v.parse().with_context(|| format!("BERTH_API_LISTEN=`{v}` is not an address like 127.0.0.1:7070"))?;
        }
        for (key, field) in [("BERTH_ROUTER_HTTP", &mut config.router.listen_http), ("BERTH_ROUTER_HTTPS", &mut config.router.listen_https)]
        {
            if let Some(v) = env(key) {
                *field = v.parse().with_context(|| format!("{key}=`{v}` is not an address like 127.0.0.1:8443"))?;
            }
        }
        if let Some(v) = env("BERTH_BASE_DOMAIN") {
            config.router.base_domain = Some(v);
        }
        if let Some(v) = env("BERTH_LOG_FORMAT") {
            config.log.format = v;
        }
        if let Some(v) = env("BERTH_LOG") {
            config.log.level = v;
        }
        for (key, field) in [
            ("BERTH_REGISTRY_GC_GRACE_SECS", &mut config.registry.gc_grace_secs),
            ("BERTH_REGISTRY_UPLOAD_EXPIRY_SECS", &mut config.registry.upload_expiry_secs),
            ("BERTH_REGISTRY_GC_INTERVAL_SECS", &mut config.registry.gc_interval_secs),
        ] {
            if let Some(v) = env(key) {
                *field = v.parse().with_context(|| format!("{key}=`{v}` is not a number of seconds"))?;
            }
        }
        if let Some(v) = env("BERTH_REGISTRY_DEFAULT_TAG_MUTABILITY") {
            config.registry.default_tag_mutability = v;
        }
        for (key, field) in [
            ("BERTH_RUNTIME", &mut config.runtime.enabled),
            ("BERTH_RUNTIME_BRIDGE", &mut config.runtime.bridge),
            ("BERTH_RUNTIME_CIDR", &mut config.runtime.cidr),
            ("BERTH_RUNTIME_CGROUP_PARENT", &mut config.runtime.cgroup_parent),
        ] {
            if let Some(v) = env(key) {
                *field = v;
            }
        }
        if let Some(v) = env("BERTH_RUNTIME_OUTBOUND_NAT") {
            config.runtime.outbound_nat = match v.as_str() {
                "true" | "on" | "1" => true,
                "false" | "off" | "0" => false,
                _ => bail!("BERTH_RUNTIME_OUTBOUND_NAT=`{v}`: use true or false"),
            };
        }
        if !matches!(config.runtime.enabled.as_str(), "auto" | "on" | "off") {
            bail!("runtime.enabled `{}` is unknown; use auto, on or off", config.runtime.enabled);
        }
        if !matches!(config.runtime.rootfs.as_str(), "auto" | "overlay" | "copy") {
            bail!("runtime.rootfs `{}` is unknown; use auto, overlay or copy", config.runtime.rootfs);
        }
        if !(1..=64).contains(&config.router.workers) && config.router.workers != 0 {
            bail!("router.workers must be 0 (one per CPU) to 64");
        }
        if config.runtime.bridge.is_empty() || config.runtime.bridge.len() > 15 {
            bail!("runtime.bridge `{}` must be 1 to 15 characters (a Linux interface name)", config.runtime.bridge);
        }
        for (key, v) in [
            ("router.idle_timeout_secs", config.router.idle_timeout_secs),
            ("router.tls_handshake_timeout_secs", config.router.tls_handshake_timeout_secs),
            ("router.max_connections", config.router.max_connections as u64),
            ("router.drain_timeout_secs", config.router.drain_timeout_secs),
            ("api.idle_timeout_secs", config.api.idle_timeout_secs),
            ("api.max_connections", config.api.max_connections as u64),
        ] {
            if v == 0 {
                bail!("{key} must be at least 1");
            }
        }
        let i = &config.image;
        for (key, v) in [
            ("max_layer_mib", i.max_layer_mib),
            ("max_image_mib", i.max_image_mib),
            ("max_layer_entries", i.max_layer_entries),
            ("max_image_entries", i.max_image_entries),
            ("unpack_timeout_secs", i.unpack_timeout_secs),
        ] {
            if v == 0 {
                bail!("image.{key} must be at least 1");
            }
        }
        if let Some(v) = env("BERTH_SECRETS_MASTER_KEY_FILE") {
            config.secrets.master_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("BERTH_SECRETS_MASTER_KEY_COMMAND") {
            config.secrets.master_key_command = Some(v);
        }
        if config.secrets.master_key_file.is_some() && config.secrets.master_key_command.is_some() {
            bail!("secrets: set master_key_file or master_key_command, not both");
        }
        if !matches!(config.log.format.as_str(), "text" | "json") {
            bail!("log format `{}` is unknown; use `text` or `json`", config.log.format);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let c = Config::load(None, Some(&dir.path().join("d")), env(&[]))?;
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.registry.gc_grace_secs, 3600);
        assert!(c.router.pin_workers);
        Ok(())
    }

    #[test]
    fn file_then_env() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("berth.toml");
        std::fs::write(&f, "[api]\nlisten = \"127.0.0.1:9000\"\n[registry]\ngc_grace_secs = 5\n[router]\npin_workers = false\n")?;
        let c = Config::load(Some(&f), None, env(&[("BERTH_API_LISTEN", "127.0.0.1:0"), ("BERTH_DATA", "/srv/berth")]))?;
        assert_eq!(c.api.listen.port(), 0);
        assert_eq!(c.registry.gc_grace_secs, 5);
        assert!(!c.router.pin_workers);
        assert_eq!(c.data_dir, PathBuf::from("/srv/berth"));
        Ok(())
    }

    #[test]
    fn clear_errors() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("berth.toml");
        std::fs::write(&f, "[api]\nlisen = \"x\"\n")?;
        let err = format!("{:#}", Config::load(Some(&f), None, env(&[])).err().unwrap_or_else(|| anyhow::anyhow!("no error")));
        assert!(err.contains("unknown field `lisen`"), "{err}");
        let err = format!(
            "{:#}",
            Config::load(None, Some(dir.path()), env(&[("BERTH_API_LISTEN", "7070")])).err().unwrap_or_else(|| anyhow::anyhow!("no error"))
        );
        assert!(err.contains("BERTH_API_LISTEN=`7070` is not an address"), "{err}");
        std::fs::write(&f, "[router]\nidle_timeout_secs = 0\n")?;
        let err = format!("{:#}", Config::load(Some(&f), None, env(&[])).err().unwrap_or_else(|| anyhow::anyhow!("no error")));
        assert!(err.contains("router.idle_timeout_secs must be at least 1"), "{err}");
        Ok(())
    }
}
