//! The settings form: every field of a service's spec as form values and back. A form that does
//! not parse (a number that is not one) is answered per field; one that parses goes to the
//! controller, whose validation messages — each naming its field — are shown next to the fields
//! they name.

use std::collections::{BTreeMap, HashMap};

use berth_core::service::HealthProtocol;
use berth_core::{Egress, ServiceSpec, Visibility};

/// The form's values, as typed (so a refused form comes back as it was sent).
#[derive(Debug, Clone, Default)]
pub struct Values(pub HashMap<String, String>);

/// Every field: its form name (the spec's path), label and help.
pub const FIELDS: &[(&str, &str, &str)] = &[
    ("source.image", "Image", "repo:tag (or repo@sha256:…) in berth's registry"),
    ("source.auto_deploy", "Auto-deploy", "deploy every new digest pushed to the tag"),
    ("image_config.port", "Port", "the port the app listens on; PORT is set to it"),
    ("image_config.env", "Environment", "one KEY=value a line"),
    ("image_config.secret_env", "Environment from secrets", "one KEY=secret or KEY=secret#key a line"),
    ("image_config.secret_files", "Files from secrets", "one /absolute/path=secret or …=secret#key a line"),
    ("image_config.start_command", "Start command", "replaces the image's entrypoint and command; empty keeps them"),
    ("image_config.init", "Run under berth's init", "PID 1 forwards signals and reaps orphans"),
    ("instance.cpu", "CPU", "units of 1024 per vCPU"),
    ("instance.memory", "Memory (MB)", "128 to 12288"),
    ("health_check.protocol", "Health check", "TCP: the port accepts; HTTP: GET path answers 2xx or 3xx"),
    ("health_check.path", "Health check path", "for HTTP"),
    ("health_check.interval", "Interval (s)", "1–20"),
    ("health_check.timeout", "Timeout (s)", "1–20"),
    ("health_check.healthy_threshold", "Healthy threshold", "passes in a row before traffic, 1–20"),
    ("health_check.unhealthy_threshold", "Unhealthy threshold", "failures in a row before replacement, 1–20"),
    ("autoscaling.max_concurrency", "Max concurrency", "requests one instance works on at once, 1–1000"),
    ("autoscaling.min_size", "Min instances", "0 scales to zero when idle"),
    ("autoscaling.max_size", "Max instances", "up to 25"),
    ("traffic.request_timeout", "Request timeout (s)", "1–3600"),
    ("traffic.max_body_mb", "Largest request body (MB)", "1–1024"),
    ("traffic.h2c", "HTTP/2 without TLS (h2c) to instances", "as gRPC servers need"),
    ("network.networks", "Networks", "names, separated by commas"),
    ("network.egress", "Egress", "where instances may connect"),
    ("network.visibility", "Visibility", "public, or only from the services allowed"),
    ("network.allow_from", "Allow from", "services that may call it, separated by commas"),
];

fn lines(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n")
}

impl Values {
    /// The values of `spec`; environment values hidden when `hide_env`.
    pub fn of(spec: &ServiceSpec, hide_env: bool) -> Values {
        let mut v = HashMap::new();
        let mut set = |k: &str, s: String| {
            v.insert(k.to_owned(), s);
        };
        set("source.image", spec.source.image.clone());
        set("source.auto_deploy", spec.source.auto_deploy.map_or("default", |on| if on { "on" } else { "off" }).to_owned());
        let c = &spec.image_config;
        set("image_config.port", c.port.to_string());
        let env = if hide_env { c.env.keys().map(|k| format!("{k}=(hidden)")).collect::<Vec<_>>().join("\n") } else { lines(&c.env) };
        set("image_config.env", env);
        set("image_config.secret_env", lines(&c.secret_env));
        set("image_config.secret_files", lines(&c.secret_files));
        set("image_config.start_command", c.start_command.clone().unwrap_or_default());
        set("image_config.init", flag(c.init));
        set("instance.cpu", spec.instance.cpu.to_string());
        set("instance.memory", spec.instance.memory.to_string());
        let h = &spec.health_check;
        set("health_check.protocol", if h.protocol == HealthProtocol::Http { "HTTP" } else { "TCP" }.to_owned());
        set("health_check.path", h.path.clone());
        set("health_check.interval", h.interval.to_string());
        set("health_check.timeout", h.timeout.to_string());
        set("health_check.healthy_threshold", h.healthy_threshold.to_string());
        set("health_check.unhealthy_threshold", h.unhealthy_threshold.to_string());
        let a = &spec.autoscaling;
        set("autoscaling.max_concurrency", a.max_concurrency.to_string());
        set("autoscaling.min_size", a.min_size.to_string());
        set("autoscaling.max_size", a.max_size.to_string());
        let t = &spec.traffic;
        set("traffic.request_timeout", t.request_timeout.to_string());
        set("traffic.max_body_mb", t.max_body_mb.to_string());
        set("traffic.h2c", flag(t.h2c));
        let n = &spec.network;
        set("network.networks", n.networks.join(", "));
        set("network.egress", format!("{:?}", n.egress).to_lowercase());
        set("network.visibility", format!("{:?}", n.visibility).to_lowercase());
        set("network.allow_from", n.allow_from.join(", "));
        Values(v)
    }

    pub fn get(&self, field: &str) -> &str {
        self.0.get(field).map_or("", String::as_str)
    }

    fn on(&self, field: &str) -> bool {
        self.get(field) == "on"
    }

    /// `base` with this form's values; the fields that do not parse, with why.
    pub fn apply(&self, base: &ServiceSpec) -> Result<ServiceSpec, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut spec = base.clone();
        let mut number = |field: &str, into: &mut u32| match self.get(field).trim().parse::<u32>() {
            Ok(n) => *into = n,
            Err(_) => errors.push((field.to_owned(), format!("`{}` is not a whole number", self.get(field).trim()))),
        };
        number("instance.cpu", &mut spec.instance.cpu);
        number("instance.memory", &mut spec.instance.memory);
        number("health_check.interval", &mut spec.health_check.interval);
        number("health_check.timeout", &mut spec.health_check.timeout);
        number("health_check.healthy_threshold", &mut spec.health_check.healthy_threshold);
        number("health_check.unhealthy_threshold", &mut spec.health_check.unhealthy_threshold);
        number("autoscaling.max_concurrency", &mut spec.autoscaling.max_concurrency);
        number("autoscaling.min_size", &mut spec.autoscaling.min_size);
        number("autoscaling.max_size", &mut spec.autoscaling.max_size);
        number("traffic.request_timeout", &mut spec.traffic.request_timeout);
        number("traffic.max_body_mb", &mut spec.traffic.max_body_mb);
        let mut port = u32::from(spec.image_config.port);
        number("image_config.port", &mut port);
        match u16::try_from(port) {
            Ok(p) => spec.image_config.port = p,
            Err(_) => errors.push(("image_config.port".into(), format!("{port} is not a port (1–65535)"))),
        }
        spec.source.image = self.get("source.image").trim().to_owned();
        spec.source.auto_deploy = match self.get("source.auto_deploy") {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        };
        for (field, into) in [
            ("image_config.env", &mut spec.image_config.env),
            ("image_config.secret_env", &mut spec.image_config.secret_env),
            ("image_config.secret_files", &mut spec.image_config.secret_files),
        ] {
            let hidden = base_values_hidden(field, self.get(field));
            match pairs(self.get(field)) {
                // Values shown as hidden stay what they were.
                Ok(mut map) if hidden => {
                    for (k, v) in map.iter_mut() {
                        if v == "(hidden)" {
                            if let Some(old) = into.get(k) {
                                v.clone_from(old);
                            }
                        }
                    }
                    *into = map;
                }
                Ok(map) => *into = map,
                Err(why) => errors.push((field.to_owned(), why)),
            }
        }
        let command = self.get("image_config.start_command").trim();
        spec.image_config.start_command = (!command.is_empty()).then(|| command.to_owned());
        spec.image_config.init = self.on("image_config.init");
        spec.health_check.protocol = if self.get("health_check.protocol") == "HTTP" { HealthProtocol::Http } else { HealthProtocol::Tcp };
        spec.health_check.path = self.get("health_check.path").trim().to_owned();
        spec.traffic.h2c = self.on("traffic.h2c");
        let list = |field: &str| self.get(field).split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>();
        spec.network.networks = list("network.networks");
        spec.network.allow_from = list("network.allow_from");
        spec.network.egress = match self.get("network.egress") {
            "networks" => Egress::Networks,
            "none" => Egress::None,
            _ => Egress::Public,
        };
        spec.network.visibility = if self.get("network.visibility") == "private" { Visibility::Private } else { Visibility::Public };
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(errors)
        }
    }
}

fn flag(on: bool) -> String {
    if on { "on" } else { "" }.to_owned()
}

/// Whether a field's text holds values shown hidden (to be kept as they were).
fn base_values_hidden(field: &str, text: &str) -> bool {
    field == "image_config.env" && text.lines().any(|l| l.trim_end().ends_with("=(hidden)"))
}

/// `KEY=value` lines into a map; blank lines skipped.
fn pairs(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: `{}` is not KEY=value", n + 1, line.trim()));
        };
        map.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(map)
}

/// The field a validation message names (its first word, a spec path), if it is a form field.
pub fn field_of(message: &str) -> Option<&'static str> {
    let word = message.split([' ', ':']).next()?;
    FIELDS.iter().map(|(f, _, _)| *f).find(|f| *f == word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": "web",
            "source": {"image": "web:latest"},
            "image_config": {"env": {"A": "1", "TOKEN": "s3cret"}},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_field_round_trips_and_hidden_values_are_kept() {
        let base = spec();
        let mut v = Values::of(&base, true);
        assert_eq!(v.get("image_config.env"), "A=(hidden)\nTOKEN=(hidden)");
        assert_eq!(v.apply(&base), Ok(base.clone()), "an unchanged form changes nothing");
        v.0.insert("image_config.env".into(), "A=(hidden)\nB=2".into());
        v.0.insert("health_check.protocol".into(), "HTTP".into());
        v.0.insert("health_check.path".into(), "/healthz".into());
        v.0.insert("traffic.h2c".into(), "on".into());
        v.0.insert("network.allow_from".into(), "api, batch".into());
        let got = v.apply(&base).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(got.image_config.env, BTreeMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]));
        assert_eq!(got.health_check.protocol, HealthProtocol::Http);
        assert!(got.traffic.h2c);
        assert_eq!(got.network.allow_from, ["api", "batch"]);
        assert_eq!(Values::of(&got, false).get("image_config.env"), "A=1\nB=2");
        for (field, _, _) in FIELDS {
            assert!(Values::of(&got, false).0.contains_key(*field), "{field} has no value");
        }
    }

    #[test]
    fn bad_values_are_answered_per_field() {
        let base = spec();
        let mut v = Values::of(&base, false);
        v.0.insert("instance.memory".into(), "lots".into());
        v.0.insert("image_config.port".into(), "70000".into());
        v.0.insert("image_config.env".into(), "NOEQUALS".into());
        let errors = v.apply(&base).err().unwrap_or_default();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["instance.memory", "image_config.port", "image_config.env"]);
        assert_eq!(field_of("instance.cpu must be 256, 512"), Some("instance.cpu"));
        assert_eq!(field_of("image_config.env: `1A` is not a variable name"), Some("image_config.env"));
        assert_eq!(field_of("something else"), None);
    }
}
