//! The pages, as maud templates: a layout with the navigation and the session's logout form, and
//! one function per page. Values are escaped by maud; every form carries the session's
//! anti-forgery value.

use berth_api::Session;
use berth_controller::{MetricsView, Operation, Revision, ServiceView, SlotView};
use berth_core::calendar::utc;
use berth_core::Principal;
use berth_store::ServiceEvent;
use maud::{html, Markup, DOCTYPE};

use crate::chart::{self, Mark, Series};

fn layout(title: &str, viewer: Option<(&Principal, &Session)>, body: Markup) -> Markup {
    layout_with(title, viewer, None, body)
}

/// The layout; `refresh`: the page reloads itself this many seconds after it loaded.
fn layout_with(title: &str, viewer: Option<(&Principal, &Session)>, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · berth" }
                link rel="stylesheet" href="/console/assets/console.css";
                @if let Some(secs) = refresh { meta http-equiv="refresh" content=(secs); }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Main" {
                        a.brand href="/console/services" { "berth" }
                        @if let Some((principal, _)) = viewer {
                            a href="/console/services" { "Services" }
                            a href="/console/registry" { "Registry" }
                            a href="/console/secrets" { "Secrets" }
                            a href="/console/networks" { "Networks" }
                            @if principal.allows(berth_core::Action::Admin) {
                                a href="/console/tokens" { "Tokens" }
                                a href="/console/webhooks" { "Webhooks" }
                            }
                        }
                    }
                    @if let Some((principal, session)) = viewer {
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            span.who { "token " strong { (principal.token_name) } }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

pub fn login(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in to berth" }
            @if let Some(e) = error {
                p.error role="alert" { (e) }
            }
            form.login method="post" action="/console/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                p.hint { "The admin token is in " code { "<data dir>/admin.token" } "; " code { "berth token create" } " makes others, read-only ones too." }
                button type="submit" { "Log in" }
            }
        },
    )
}

pub fn message(title: &str, text: &str) -> Markup {
    layout(title, None, html! { h1 { (title) } p { (text) } p { a href="/console/services" { "Back to the services" } } })
}

fn status_class(status: &str) -> &'static str {
    match status {
        "RUNNING" => "ok",
        "OPERATION_IN_PROGRESS" => "busy",
        "PAUSED" => "idle",
        _ => "bad",
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} ms"))
}

pub fn services(principal: &Principal, session: &Session, rows: &[(ServiceView, Option<SlotView>)]) -> Markup {
    layout(
        "Services",
        Some((principal, session)),
        html! {
            h1 { "Services" }
            @if principal.allows(berth_core::Action::Admin) { p { a href="/console/new" { "New service" } } }
            @if rows.is_empty() {
                p { "No service yet. " code { "berth service create NAME --image REPO:TAG" } " makes one." }
            } @else {
                table {
                    caption { "Requests per second and p99 latency over the last five minutes" }
                    thead { tr { th scope="col" { "Service" } th scope="col" { "Status" } th scope="col" { "URL" } th scope="col" { "Revision" } th scope="col" { "Instances" } th scope="col" { "Requests/s" } th scope="col" { "p99" } } }
                    tbody {
                        @for (v, slot) in rows {
                            @let status = v.status.to_string();
                            @let ready = v.instances.iter().filter(|i| i.state == "ready").count();
                            tr {
                                th scope="row" { a href=(format!("/console/services/{}", v.name)) { (v.name) } }
                                td { span class=(format!("status {}", status_class(&status))) { (status) } }
                                td { a href=(v.url) { (v.url) } }
                                td { (v.current_revision.as_ref().map_or("–", |r| r.id.as_str())) }
                                td { (ready) " / " (v.instances.len()) }
                                td.num { (slot.as_ref().map_or_else(|| "–".to_owned(), |s| format!("{:.1}", s.requests_per_second))) }
                                td.num { (ms(slot.as_ref().and_then(|s| s.p99_ms))) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What the service page shows.
pub struct ServicePage<'a> {
    pub view: &'a ServiceView,
    pub metrics: Option<&'a MetricsView>,
    pub revisions: &'a [Revision],
    pub operations: &'a [Operation],
    pub events: &'a [ServiceEvent],
    pub may_change: bool,
}

fn charts(m: &MetricsView) -> Markup {
    let marks: Vec<Mark<'_>> = m
        .markers
        .iter()
        .filter(|e| e.kind != "status")
        .map(|e| Mark { t: e.t, kind: e.kind.as_str(), message: e.message.as_str() })
        .collect();
    let line = |f: &dyn Fn(&SlotView) -> Option<f64>| m.points.iter().filter_map(|p| f(p).map(|v| (p.t, v))).collect::<Vec<_>>();
    let rate = |class: &'static str| move |p: &SlotView| Some(p.requests.get(class).copied().unwrap_or(0) as f64 / m.step.max(1) as f64);
    html! {
        (chart::chart("Requests", "per second", m.from, m.to, &[
            Series { name: "all", class: "all", points: line(&|p: &SlotView| Some(p.requests_per_second)) },
            Series { name: "5xx", class: "bad", points: line(&rate("5xx")) },
        ], &marks))
        (chart::chart("Latency to the response head", "ms", m.from, m.to, &[
            Series { name: "p50", class: "p50", points: line(&|p: &SlotView| p.p50_ms) },
            Series { name: "p99", class: "p99", points: line(&|p: &SlotView| p.p99_ms) },
        ], &marks))
        (chart::chart("Concurrency and instances", "requests / instances", m.from, m.to, &[
            Series { name: "concurrency (average)", class: "all", points: line(&|p: &SlotView| p.concurrency_avg) },
            Series { name: "instances", class: "p50", points: line(&|p: &SlotView| Some(f64::from(p.instances))) },
        ], &marks))
    }
}

fn button(name: &str, action: &str, label: &str, session: &Session, extra: Markup) -> Markup {
    html! {
        form.inline method="post" action=(format!("/console/services/{name}/{action}")) {
            input type="hidden" name="csrf" value=(session.csrf);
            (extra)
            button type="submit" { (label) }
        }
    }
}

pub fn service(principal: &Principal, session: &Session, p: &ServicePage<'_>) -> Markup {
    let v = p.view;
    let status = v.status.to_string();
    let name = v.name.as_str();
    layout(
        name,
        Some((principal, session)),
        html! {
            h1 { (name) " " span class=(format!("status {}", status_class(&status))) { (status) } }
            (tabs(name, "overview"))
            dl.facts {
                dt { "URL" } dd { a href=(v.url) { (v.url) } }
                dt { "Image" } dd { code { (v.spec.source.image) } }
                dt { "Serving" } dd { (v.current_revision.as_ref().map_or_else(|| "nothing yet".to_owned(), |r| format!("{} ({}@{})", r.id, r.doc.repository, r.doc.digest))) }
                dt { "Instances" } dd { (v.instances.iter().filter(|i| i.state == "ready").count()) " ready of " (v.instances.len()) }
            }
            @if p.may_change {
                section.actions aria-label="Actions" {
                    (button(name, "deploy", "Deploy the tag again", session, html! {}))
                    @if status == "PAUSED" {
                        (button(name, "resume", "Resume", session, html! {}))
                    } @else {
                        (button(name, "pause", "Pause", session, html! {}))
                    }
                    (button(name, "delete", "Delete", session, html! {
                        label for="confirm" { "Type " code { (name) } " to delete" }
                        input #confirm type="text" name="confirm" autocomplete="off" required;
                    }))
                }
            }
            h2 { "The last hour" }
            @match p.metrics {
                Some(m) if !m.points.is_empty() => (charts(m)),
                _ => p { "No traffic recorded in the last hour." },
            }
            h2 { "Revisions" }
            table {
                thead { tr { th scope="col" { "Revision" } th scope="col" { "Digest" } th scope="col" { "Tags then" } th scope="col" { "Tags now" } th scope="col" { "Created" } th scope="col" { "By" } @if p.may_change { th scope="col" { span.visually-hidden { "Action" } } } } }
                tbody {
                    @for r in p.revisions.iter().rev() {
                        @let serving = v.current_revision.as_ref().is_some_and(|c| c.number == r.number);
                        tr {
                            th scope="row" { (r.id) @if serving { " " span.status.ok { "serving" } } }
                            td { code { (r.doc.digest.to_string().chars().take(19).collect::<String>()) "…" } }
                            td { (r.doc.tags.join(", ")) }
                            td { (r.tags_now.as_ref().map(|t| t.join(", ")).unwrap_or_default()) }
                            td { (utc(r.created_at)) }
                            td { (r.doc.by.as_deref().unwrap_or("–")) }
                            @if p.may_change {
                                td { @if !serving { (button(name, "rollback", "Roll back to this", session, html! { input type="hidden" name="revision" value=(r.id); })) } }
                            }
                        }
                    }
                }
            }
            h2 { "Operations" }
            table {
                thead { tr { th scope="col" { "Operation" } th scope="col" { "Type" } th scope="col" { "Status" } th scope="col" { "Started" } th scope="col" { "By" } th scope="col" { "Last step" } } }
                tbody {
                    @for o in p.operations {
                        tr {
                            th scope="row" { a href=(format!("/console/operations/{}", o.id)) { code { (o.id) } } }
                            td { (o.kind.to_string()) }
                            td { (o.status.to_string()) }
                            td { (utc(o.started_at)) }
                            td { (o.by.as_deref().unwrap_or("berth")) }
                            td { (o.log.last().map(|l| l.message.as_str()).unwrap_or("")) }
                        }
                    }
                }
            }
            h2 { "Events" }
            table {
                thead { tr { th scope="col" { "At" } th scope="col" { "Kind" } th scope="col" { "What happened" } } }
                tbody {
                    @for e in p.events {
                        tr { td { (utc(e.at)) } td { (e.kind) } td { (e.message) } }
                    }
                }
            }
        },
    )
}

/// The settings form of a service (or of a new one, `name` being `None`): every field of the
/// spec, the errors next to the fields they name, and the others above the form.
pub struct SettingsPage<'a> {
    pub name: Option<&'a str>,
    pub values: &'a crate::settings::Values,
    pub errors: &'a [(String, String)],
    pub may_change: bool,
}

fn field(p: &SettingsPage<'_>, name: &'static str, label: &str, help: &str) -> Markup {
    let id = name.replace(['.', '_'], "-");
    let value = p.values.get(name);
    let errors: Vec<&str> = p.errors.iter().filter(|(f, _)| f == name).map(|(_, m)| m.as_str()).collect();
    let described = if errors.is_empty() { format!("{id}-help") } else { format!("{id}-help {id}-error") };
    let select = |options: &[(&str, &str)]| {
        html! {
            select #(id) name=(name) aria-describedby=(described) disabled[!p.may_change] {
                @for (v, text) in options { option value=(v) selected[*v == value] { (text) } }
            }
        }
    };
    let control = match name {
        "source.auto_deploy" => select(&[("default", "on for a tag, off for a digest"), ("on", "on"), ("off", "off")]),
        "instance.cpu" => select(&[("256", "0.25 vCPU"), ("512", "0.5 vCPU"), ("1024", "1 vCPU"), ("2048", "2 vCPU"), ("4096", "4 vCPU")]),
        "health_check.protocol" => select(&[("TCP", "TCP"), ("HTTP", "HTTP")]),
        "network.egress" => {
            select(&[("public", "public: the internet and the networks"), ("networks", "the networks only"), ("none", "nowhere")])
        }
        "network.visibility" => select(&[("public", "public"), ("private", "private")]),
        "image_config.init" | "traffic.h2c" => html! {
            input #(id) type="checkbox" name=(name) value="on" checked[value == "on"] aria-describedby=(described) disabled[!p.may_change];
        },
        "image_config.env" | "image_config.secret_env" | "image_config.secret_files" => html! {
            textarea #(id) name=(name) rows="4" spellcheck="false" aria-describedby=(described) readonly[!p.may_change] { (value) }
        },
        _ => {
            let numeric = !matches!(
                name,
                "source.image" | "image_config.start_command" | "health_check.path" | "network.networks" | "network.allow_from"
            );
            html! {
                input #(id) type=(if numeric { "number" } else { "text" }) name=(name) value=(value) aria-describedby=(described)
                    aria-invalid=(if errors.is_empty() { "false" } else { "true" }) readonly[!p.may_change];
            }
        }
    };
    html! {
        div.field {
            label for=(id) { (label) }
            (control)
            small.hint id=(format!("{id}-help")) { (help) }
            @if !errors.is_empty() {
                p.field-error id=(format!("{id}-error")) role="alert" { (errors.join("; ")) }
            }
        }
    }
}

pub fn settings(principal: &Principal, session: &Session, p: &SettingsPage<'_>) -> Markup {
    use crate::settings::FIELDS;
    let known: Vec<&str> = FIELDS.iter().map(|(f, _, _)| *f).collect();
    let general: Vec<&str> = p.errors.iter().filter(|(f, _)| !known.contains(&f.as_str())).map(|(_, m)| m.as_str()).collect();
    let (title, action) = match p.name {
        Some(n) => (format!("{n}: settings"), format!("/console/services/{n}/settings")),
        None => ("New service".to_owned(), "/console/new".to_owned()),
    };
    let groups: [(&str, &str); 7] = [
        ("Image", "source."),
        ("Container", "image_config."),
        ("Size", "instance."),
        ("Health check", "health_check."),
        ("Autoscaling", "autoscaling."),
        ("Requests", "traffic."),
        ("Network", "network."),
    ];
    layout(
        &title,
        Some((principal, session)),
        html! {
            h1 { (title) }
            @if let Some(n) = p.name { (tabs(n, "settings")) }
            @if !p.errors.is_empty() {
                div.error role="alert" {
                    p { "Not saved: " (p.errors.len()) " problem(s), shown next to their fields." }
                    @if !general.is_empty() { ul { @for m in &general { li { (m) } } } }
                }
            }
            @if !p.may_change { p.hint { "Your token may only read: the settings are shown, not changed." } }
            form.settings method="post" action=(action) {
                input type="hidden" name="csrf" value=(session.csrf);
                @if p.name.is_none() {
                    fieldset {
                        legend { "Service" }
                        div.field {
                            label for="name" { "Name" }
                            input #name type="text" name="name" value=(p.values.get("name")) required aria-describedby="name-help";
                            small.hint #name-help { "4–40 letters, digits, - and _; it names the URL" }
                        }
                    }
                }
                @for (legend, prefix) in groups {
                    fieldset {
                        legend { (legend) }
                        @for (name, label, help) in FIELDS.iter().filter(|(f, _, _)| f.starts_with(prefix)) {
                            (field(p, name, label, help))
                        }
                    }
                }
                @if p.may_change {
                    button type="submit" { @if p.name.is_some() { "Save and deploy" } @else { "Create and deploy" } }
                }
            }
        },
    )
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn policy(p: &berth_core::TagPolicy) -> String {
    let exclusions: Vec<String> = p.exclusions.iter().map(ToString::to_string).collect();
    match exclusions.is_empty() {
        true => p.mutability.to_string(),
        false => format!("{} except {}", p.mutability, exclusions.join(", ")),
    }
}

fn rule(r: &berth_core::LifecycleRule) -> String {
    match r {
        berth_core::LifecycleRule::ExpireUntagged { days } => format!("untagged manifests expire after {days} days"),
        berth_core::LifecycleRule::KeepNewestTags { pattern, count } => format!("keep the newest {count} tags matching {pattern}"),
    }
}

pub fn registry(principal: &Principal, session: &Session, repos: &[(berth_store::RepositoryRecord, u64)]) -> Markup {
    layout(
        "Registry",
        Some((principal, session)),
        html! {
            h1 { "Registry" }
            @if repos.is_empty() {
                p { "No repository you may read yet. Push one: " code { "skopeo copy … docker://HOST:7070/REPO:TAG" } }
            } @else {
                table {
                    thead { tr { th scope="col" { "Repository" } th scope="col" { "Tags" } th scope="col" { "Tag mutability" } th scope="col" { "Lifecycle" } th scope="col" { "Created" } } }
                    tbody {
                        @for (r, tags) in repos {
                            tr {
                                th scope="row" { a href=(format!("/console/registry/{}", r.name)) { (r.name) } }
                                td.num { (tags) }
                                td { (policy(&r.tag_policy)) }
                                td { (r.lifecycle.iter().map(rule).collect::<Vec<_>>().join("; ")) }
                                td { (utc(r.created_at)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A tag with its manifest's size (the manifest and the blobs it references).
pub struct TagRow {
    pub tag: berth_store::TagRecord,
    pub size: u64,
}

pub fn repository(
    principal: &Principal,
    session: &Session,
    repo: &berth_store::RepositoryRecord,
    tags: &[TagRow],
    events: &[berth_store::PushEvent],
    may_create: bool,
) -> Markup {
    layout(
        &repo.name,
        Some((principal, session)),
        html! {
            h1 { (repo.name) }
            dl.facts {
                dt { "Tag mutability" } dd { (policy(&repo.tag_policy)) }
                dt { "Lifecycle rules" } dd { @if repo.lifecycle.is_empty() { "none" } @else { (repo.lifecycle.iter().map(rule).collect::<Vec<_>>().join("; ")) } }
            }
            h2 { "Tags" }
            table {
                thead { tr { th scope="col" { "Tag" } th scope="col" { "Digest" } th scope="col" { "Size" } th scope="col" { "Pushed" } @if may_create { th scope="col" { span.visually-hidden { "Action" } } } } }
                tbody {
                    @for t in tags {
                        tr {
                            th scope="row" { (t.tag.tag) }
                            td { code { (t.tag.digest) } }
                            td.num { (size(t.size)) }
                            td { (utc(t.tag.updated_at)) }
                            @if may_create {
                                td { a href=(format!("/console/new?image={}:{}", repo.name, t.tag.tag)) { "Create a service from " (t.tag.tag) } }
                            }
                        }
                    }
                }
            }
            h2 { "Pushes" }
            table {
                thead { tr { th scope="col" { "At" } th scope="col" { "Tag" } th scope="col" { "Digest" } th scope="col" { "Before" } } }
                tbody {
                    @for e in events.iter().rev() {
                        tr {
                            td { (utc(e.at)) }
                            td { (e.tag.as_deref().unwrap_or("–")) }
                            td { code { (e.digest) } }
                            td { (e.previous_digest.as_ref().map(ToString::to_string).unwrap_or_else(|| "–".into())) }
                        }
                    }
                }
            }
        },
    )
}

pub fn tokens(
    principal: &Principal,
    session: &Session,
    tokens: &[berth_store::TokenRecord],
    created: Option<(&str, &str)>,
    error: Option<&str>,
) -> Markup {
    layout(
        "Tokens",
        Some((principal, session)),
        html! {
            h1 { "Tokens" }
            @if let Some((name, secret)) = created {
                div.created role="status" {
                    p { "Token " strong { (name) } " was created. Copy it now: it is shown only this once." }
                    p { code.secret { (secret) } }
                }
            }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Id" } th scope="col" { "Scopes" } th scope="col" { "Created" } th scope="col" { "Last used" } th scope="col" { "Revoked" } th scope="col" { span.visually-hidden { "Action" } } } }
                tbody {
                    @for t in tokens {
                        tr {
                            th scope="row" { (t.name) }
                            td { code { (t.id) } }
                            td { (t.scopes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
                            td { (utc(t.created_at)) }
                            td { (t.last_used_at.map_or_else(|| "never".to_owned(), utc)) }
                            td { (t.revoked_at.map_or_else(|| "–".to_owned(), utc)) }
                            td {
                                @if t.revoked_at.is_none() && t.id != principal.token_id {
                                    form.inline method="post" action=(format!("/console/tokens/{}/revoke", t.id)) {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        button type="submit" aria-label=(format!("Revoke token {}", t.name)) { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "New token" }
            form.settings method="post" action="/console/tokens" {
                input type="hidden" name="csrf" value=(session.csrf);
                div.field {
                    label for="token-name" { "Name" }
                    input #token-name type="text" name="name" required maxlength="64";
                }
                div.field {
                    label for="token-scopes" { "Scopes" }
                    input #token-scopes type="text" name="scopes" required aria-describedby="token-scopes-help";
                    small.hint #token-scopes-help { "separated by commas: admin, read-only, pull:<repo pattern>, push:<repo pattern>, secrets-read:<pattern>, secrets-write:<pattern>" }
                }
                button type="submit" { "Create" }
            }
        },
    )
}

/// The revision number in an instance id (`web-3-a1b2c3` → 3).
pub fn revision_of(instance: &str) -> Option<u32> {
    instance.rsplit('-').nth(1)?.parse().ok()
}

/// What the logs page was asked for.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LogFilter {
    pub q: Option<String>,
    pub instance: Option<String>,
    pub revision: Option<String>,
    /// `2026-11-30T16:05` (a `datetime-local` input), UTC.
    pub from: Option<String>,
    pub to: Option<String>,
}

impl LogFilter {
    fn get(v: &Option<String>) -> &str {
        v.as_deref().map(str::trim).unwrap_or("")
    }

    /// Whether a line (`<RFC 3339 time> <stream> <text>`) of `instance` is asked for.
    pub fn matches(&self, instance: &str, line: &str) -> bool {
        let (q, inst, rev) = (Self::get(&self.q), Self::get(&self.instance), Self::get(&self.revision));
        let (from, to) = (Self::get(&self.from), Self::get(&self.to));
        let ts = line.split(' ').next().unwrap_or("");
        (q.is_empty() || line.to_lowercase().contains(&q.to_lowercase()))
            && (inst.is_empty() || instance == inst)
            && (rev.is_empty() || revision_of(instance).map(|r| r.to_string()).as_deref() == Some(rev))
            && (from.is_empty() || ts >= from)
            && (to.is_empty() || ts[..to.len().min(ts.len())] <= *to)
    }

    /// The query string that asks for the same.
    fn query(&self) -> String {
        let pairs = [("q", &self.q), ("instance", &self.instance), ("revision", &self.revision), ("from", &self.from), ("to", &self.to)];
        pairs
            .iter()
            .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| format!("{k}={}", encode(v))))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn tabs(name: &str, current: &str) -> Markup {
    let tab = |href: String, label: &str, key: &str| {
        html! { a href=(href) aria-current=[(key == current).then_some("page")] { (label) } }
    };
    html! {
        nav.tabs aria-label="Service" {
            (tab(format!("/console/services/{name}"), "Overview", "overview"))
            (tab(format!("/console/services/{name}/logs"), "Logs", "logs"))
            (tab(format!("/console/services/{name}/requests"), "Requests", "requests"))
            (tab(format!("/console/services/{name}/settings"), "Settings", "settings"))
        }
    }
}

fn text_input(id: &str, label: &str, value: &Option<String>, kind: &str) -> Markup {
    html! {
        label for=(id) { (label) }
        input #(id) type=(kind) name=(id) value=(value.as_deref().unwrap_or(""));
    }
}

/// The service's application logs: each line with its instance; filters; live with script.
pub fn logs(
    principal: &Principal,
    session: &Session,
    name: &str,
    filter: &LogFilter,
    lines: &[(String, String)],
    instances: &[String],
) -> Markup {
    layout(
        &format!("{name}: logs"),
        Some((principal, session)),
        html! {
            h1 { (name) ": logs" }
            (tabs(name, "logs"))
            form.filters method="get" action=(format!("/console/services/{name}/logs")) {
                (text_input("q", "Text", &filter.q, "search"))
                label for="instance" { "Instance" }
                select #instance name="instance" {
                    option value="" { "all" }
                    @for i in instances { option value=(i) selected[filter.instance.as_deref() == Some(i.as_str())] { (i) } }
                }
                (text_input("revision", "Revision", &filter.revision, "number"))
                (text_input("from", "From (UTC)", &filter.from, "datetime-local"))
                (text_input("to", "To (UTC)", &filter.to, "datetime-local"))
                button type="submit" { "Search" }
            }
            p.hint {
                (lines.len()) " lines. Instances that are gone keep their logs for a while (1 MiB each, 7 days). "
                a href=(format!("/console/services/{name}/logs?{}", filter.query())) { "Reload" }
            }
            p.live hidden data-source=(format!("/console/services/{name}/logs/live?{}", filter.query())) {
                label { input #follow type="checkbox" checked; " Follow new lines" }
            }
            table.logs {
                thead { tr { th scope="col" { "Time" } th scope="col" { "Instance" } th scope="col" { "Stream" } th scope="col" { "Line" } } }
                tbody #log-lines {
                    @for (instance, line) in lines {
                        @let mut parts = line.splitn(3, ' ');
                        tr {
                            td { (parts.next().unwrap_or("")) }
                            td { (instance) }
                            td { (parts.next().unwrap_or("")) }
                            td { code { (parts.next().unwrap_or("")) } }
                        }
                    }
                }
            }
            script src="/console/assets/console.js" {}
        },
    )
}

/// The router's access log for the service.
pub fn requests(
    principal: &Principal,
    session: &Session,
    name: &str,
    q: &berth_api::access::AccessQuery,
    records: Option<&[serde_json::Value]>,
) -> Markup {
    layout(
        &format!("{name}: requests"),
        Some((principal, session)),
        html! {
            h1 { (name) ": requests" }
            (tabs(name, "requests"))
            form.filters method="get" action=(format!("/console/services/{name}/requests")) {
                (text_input("q", "Text", &q.q, "search"))
                (text_input("status", "Status (404, 5xx)", &q.status, "text"))
                (text_input("instance", "Instance", &q.instance, "text"))
                (text_input("revision", "Revision", &q.revision, "number"))
                (text_input("from", "From (UTC)", &q.from, "datetime-local"))
                (text_input("to", "To (UTC)", &q.to, "datetime-local"))
                button type="submit" { "Search" }
            }
            @match records {
                None => p { "The access log is off (router.access_log); turn it on to see requests here." },
                Some(records) => {
                    p.hint { (records.len()) " requests, newest last (the newest 16 MiB of the access log are searched)." }
                    table {
                        thead { tr { th scope="col" { "Ended" } th scope="col" { "Request" } th scope="col" { "Status" } th scope="col" { "Outcome" } th scope="col" { "First byte" } th scope="col" { "Total" } th scope="col" { "In / out" } th scope="col" { "Client" } th scope="col" { "Instance" } th scope="col" { "Revision" } } }
                        tbody {
                            @for r in records {
                                tr {
                                    td { (r["ts"].as_str().unwrap_or("")) }
                                    td { code { (r["method"].as_str().unwrap_or("")) " " (r["path"].as_str().unwrap_or("")) } }
                                    td.num { (r["status"]) }
                                    td { (r["outcome"].as_str().unwrap_or("")) }
                                    td.num { (format!("{:.1} ms", r["ttfb_ms"].as_f64().unwrap_or(0.0))) }
                                    td.num { (format!("{:.1} ms", r["duration_ms"].as_f64().unwrap_or(0.0))) }
                                    td.num { (r["bytes_in"]) " / " (r["bytes_out"]) }
                                    td { (r["client"].as_str().unwrap_or("")) }
                                    td { (r["instance"].as_str().or(r["upstream"].as_str()).unwrap_or("–")) }
                                    td.num { (r["revision"].as_u64().map_or_else(|| "–".to_owned(), |n| n.to_string())) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// An operation with its whole log; the page reloads itself while the operation runs.
pub fn operation(principal: &Principal, session: &Session, op: &Operation) -> Markup {
    let running = op.ended_at.is_none();
    let body = html! {
        h1 { "Operation " code { (op.id) } }
        dl.facts {
            dt { "Service" } dd { a href=(format!("/console/services/{}", op.service)) { (op.service) } }
            dt { "Type" } dd { (op.kind.to_string()) }
            dt { "Status" } dd { (op.status.to_string()) @if running { " (this page follows it)" } }
            dt { "Started" } dd { (utc(op.started_at)) }
            @if let Some(end) = op.ended_at { dt { "Ended" } dd { (utc(end)) } }
        }
        h2 { "Log" }
        ol.oplog {
            @for l in &op.log {
                li { time { (utc(l.at)) } " " (l.message) }
            }
        }
    };
    layout_with(&format!("Operation {}", op.id), Some((principal, session)), running.then_some(2), body)
}

pub fn webhooks(
    principal: &Principal,
    session: &Session,
    hooks: &[(berth_notify::WebhookSpec, Vec<berth_store::DeliveryRecord>)],
    error: Option<&str>,
) -> Markup {
    layout(
        "Webhooks",
        Some((principal, session)),
        html! {
            h1 { "Webhooks" }
            p.hint { "Service events are posted as JSON, signed: " code { "X-Berth-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">" } " with the secret's value. Failed deliveries are tried again 10 s, 30 s, 90 s … later, 8 times in all." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @for (h, log) in hooks {
                section.webhook aria-labelledby=(format!("hook-{}", h.name)) {
                    h2 #(format!("hook-{}", h.name)) { (h.name) }
                    dl.facts {
                        dt { "URL" } dd { code { (h.url) } }
                        dt { "Signed with" } dd { "secret " code { (h.secret) } }
                        dt { "Events" } dd { @if h.events.is_empty() { "all" } @else { (h.events.join(", ")) } }
                        dt { "Services" } dd { @if h.services.is_empty() { "all" } @else { (h.services.join(", ")) } }
                    }
                    form.inline method="post" action=(format!("/console/webhooks/{}/ping", h.name)) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" aria-label=(format!("Send a test event to {}", h.name)) { "Send a test event" }
                    }
                    form.inline method="post" action=(format!("/console/webhooks/{}/delete", h.name)) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" aria-label=(format!("Delete webhook {}", h.name)) { "Delete" }
                    }
                    table {
                        caption { "Deliveries, newest first" }
                        thead { tr { th scope="col" { "Created" } th scope="col" { "Event" } th scope="col" { "Service" } th scope="col" { "Status" } th scope="col" { "Attempts" } th scope="col" { "Last answer" } } }
                        tbody {
                            @for d in log {
                                tr {
                                    td { (utc(d.created_at)) }
                                    td { (d.kind) }
                                    td { (d.service) }
                                    td { span class=(format!("status {}", match d.status.as_str() { "delivered" => "ok", "failed" => "bad", _ => "busy" })) { (d.status) } }
                                    td.num { (d.attempts) }
                                    td { (d.last_code.map(|c| c.to_string()).unwrap_or_default()) " " (d.last_error.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "New webhook" }
            form.settings method="post" action="/console/webhooks" {
                input type="hidden" name="csrf" value=(session.csrf);
                div.field { label for="hook-name" { "Name" } input #hook-name type="text" name="name" required; }
                div.field { label for="hook-url" { "URL" } input #hook-url type="text" name="url" required placeholder="https://…"; }
                div.field {
                    label for="hook-secret" { "Signing secret" }
                    input #hook-secret type="text" name="secret" required aria-describedby="hook-secret-help";
                    small.hint #hook-secret-help { "a berth secret, " code { "name" } " or " code { "name#key" } " (" code { "berth secret create" } ")" }
                }
                fieldset {
                    legend { "Events (none: all)" }
                    @for k in berth_notify::KINDS.iter().filter(|k| **k != "ping") {
                        label.check { input type="checkbox" name="events" value=(k); " " (k) }
                    }
                }
                div.field {
                    label for="hook-services" { "Services" }
                    input #hook-services type="text" name="services" aria-describedby="hook-services-help";
                    small.hint #hook-services-help { "name patterns separated by commas (team-*); empty: all" }
                }
                button type="submit" { "Create" }
            }
        },
    )
}

pub fn secrets(principal: &Principal, session: &Session, list: &[berth_secrets::SecretInfo]) -> Markup {
    layout(
        "Secrets",
        Some((principal, session)),
        html! {
            h1 { "Secrets" }
            p.hint { "Values are sealed at rest and never shown here; " code { "berth secret get" } " reads one with a token that may." }
            @if list.is_empty() {
                p { "No secret yet. " code { "berth secret create NAME --from-file FILE" } " makes one." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Secret" } th scope="col" { "Description" } th scope="col" { "Versions" } th scope="col" { "Current" } th scope="col" { "Rotation" } th scope="col" { "Updated" } } }
                    tbody {
                        @for s in list {
                            @let current = s.versions.iter().find(|v| v.labels.iter().any(|l| l == "CURRENT"));
                            tr {
                                th scope="row" { (s.name) @if s.deleted_at.is_some() { " " span.status.bad { "deleted" } } }
                                td { (s.description) }
                                td.num { (s.versions.len()) }
                                td { code { (current.map_or("–", |v| v.id.as_str())) } }
                                td { (rotation(s.rotation.as_ref())) }
                                td { (utc(s.updated_at)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn rotation(r: Option<&berth_secrets::rotation::Rotation>) -> String {
    let Some(r) = r else { return "–".into() };
    let schedule = r.config.schedule.clone().unwrap_or_else(|| "on request".into());
    let state = match (&r.status.step, &r.status.last_error) {
        (Some(step), _) => format!("in progress: {step:?}"),
        (None, Some(e)) => format!("failed: {e}"),
        (None, None) => r.status.last_rotated_at.map_or_else(|| "not rotated yet".to_owned(), |t| format!("last {}", utc(t))),
    };
    format!("{schedule}; {state}{}", if r.enabled { "" } else { " (off)" })
}

pub fn networks(principal: &Principal, session: &Session, list: &[berth_controller::NetworkView]) -> Markup {
    layout(
        "Networks",
        Some((principal, session)),
        html! {
            h1 { "Networks" }
            @if list.is_empty() {
                p { "No network yet. " code { "berth network create NAME --cidr … --attach-bridge …" } " makes one." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Network" } th scope="col" { "CIDR" } th scope="col" { "Machines" } th scope="col" { "Host endpoints" } th scope="col" { "Services" } } }
                    tbody {
                        @for n in list {
                            tr {
                                th scope="row" { (n.spec.name) }
                                td { code { (n.spec.cidr) } }
                                td { (n.spec.hosts.iter().map(|(h, a)| format!("{h}={a}")).collect::<Vec<_>>().join(", ")) }
                                td { (n.spec.host_endpoints.iter().map(|(h, a)| format!("{h}={a}")).collect::<Vec<_>>().join(", ")) }
                                td { (n.services.join(", ")) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Asks before pausing or resuming a service.
pub fn confirm(principal: &Principal, session: &Session, name: &str, action: &str) -> Markup {
    let (title, what) = match action {
        "pause" => (format!("Pause {name}?"), "Its instances stop, and requests get 503 until it is resumed."),
        _ => (format!("Resume {name}?"), "Its serving revision starts again and takes requests once healthy."),
    };
    layout(
        &title,
        Some((principal, session)),
        html! {
            h1 { (title) }
            p { (what) }
            form.inline method="post" action=(format!("/console/services/{name}/{action}")) {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="confirm" value="yes";
                button type="submit" { (if action == "pause" { "Pause" } else { "Resume" }) }
            }
            a href=(format!("/console/services/{name}")) { "Cancel" }
        },
    )
}
