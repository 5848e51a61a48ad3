//! The observability of the scaled-out stack (`compose.yaml` and `deploy/`)
//! without starting it: every Grafana dashboard is a model Grafana's file
//! provisioning loads, every query in it names only metrics the Sluice
//! processes export ([`Metrics::exported_names`]), and `compose.yaml`, the
//! provisioning files, Prometheus's and the collector's configs agree.
//!
//! The provisioning files are YAML, as Grafana requires, written in YAML's
//! JSON-compatible flow style (JSON is YAML) so that serde_json reads them
//! here; only whole-line `#` comments stand outside the JSON. The other
//! YAML files get text checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sluice_kit::Metrics;

/// The dashboards' folder, relative to the workspace root.
const DASHBOARDS: &str = "deploy/grafana/dashboards";
/// Grafana's datasource provisioning file.
const DATASOURCES: &str = "deploy/grafana/provisioning/datasources/sluice.yaml";
/// Grafana's dashboard provider.
const PROVIDER: &str = "deploy/grafana/provisioning/dashboards/sluice.yaml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A provisioning file: JSON once its whole-line `#` comments are dropped.
fn read_flow_yaml(rel: &str) -> Value {
    let text: String = read(rel)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON-style YAML: {e}"))
}

/// Every dashboard file, by file name.
fn dashboards() -> BTreeMap<String, Value> {
    let dir = root().join(DASHBOARDS);
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".json"),
            "{DASHBOARDS}/{name}: only dashboards (.json) belong there"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let model = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.insert(name, model);
    }
    assert!(!out.is_empty(), "no dashboards in {DASHBOARDS}");
    out
}

/// The provisioned datasources: uid to type.
fn datasources() -> BTreeMap<String, String> {
    let file = read_flow_yaml(DATASOURCES);
    assert_eq!(file["apiVersion"], 1, "{DATASOURCES}: apiVersion");
    let list = file["datasources"].as_array().expect("datasources list");
    let mut out = BTreeMap::new();
    for ds in list {
        for key in ["name", "type", "uid", "url", "access"] {
            assert!(
                ds[key].as_str().is_some_and(|v| !v.is_empty()),
                "{DATASOURCES}: {key} of {ds}"
            );
        }
        let uid = ds["uid"].as_str().unwrap().to_owned();
        let kind = ds["type"].as_str().unwrap().to_owned();
        assert!(out.insert(uid.clone(), kind).is_none(), "uid {uid} twice");
    }
    let defaults = list.iter().filter(|d| d["isDefault"] == true).count();
    assert!(
        defaults <= 1,
        "{DATASOURCES}: {defaults} default datasources"
    );
    out
}

/// The value of the first `name: value` line of a YAML file (a comment after it dropped).
fn yaml_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let l = l.trim_start().trim_start_matches("- ");
        let v = l.strip_prefix(name)?.strip_prefix(':')?;
        Some(v.split(" #").next().unwrap_or(v).trim().trim_matches('"'))
    })
}

/// Where `compose.yaml` mounts the host path `host` (e.g.
/// `./deploy/grafana/dashboards`) in its container.
fn mount_target(compose: &str, host: &str) -> String {
    let prefix = format!("- {host}:");
    let line = compose
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("compose.yaml mounts no {host}"));
    let rest = &line[prefix.len()..];
    rest.split(':').next().unwrap().trim_matches('"').to_owned()
}

/// Every panel, with the panels of collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// PromQL keywords that take a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// PromQL aggregation operators and keywords: never metric names.
const KEYWORDS: [&str; 20] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
];

/// The metric names a PromQL expression selects: its identifiers that are
/// not functions, operators, keywords, label names (in `{…}` matchers and
/// `by (…)` lists), string contents, durations or Grafana variables.
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        (j, chars.get(j).copied())
    };
    let mut names = BTreeSet::new();
    // Inside `{…}` (matchers) or `[…]` (ranges): no metric names.
    let (mut braces, mut brackets) = (0_i32, 0_i32);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != c {
                    j += if chars[j] == '\\' && c != '`' { 2 } else { 1 };
                }
                if j >= chars.len() {
                    return Err(format!("unterminated string in {expr:?}"));
                }
                i = j + 1;
            }
            '{' => (braces, i) = (braces + 1, i + 1),
            '}' => (braces, i) = (braces - 1, i + 1),
            '[' => (brackets, i) = (brackets + 1, i + 1),
            ']' => (brackets, i) = (brackets - 1, i + 1),
            '$' => {
                // `$name`, `$__rate_interval` or `${name}`.
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && is_ident(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // Numbers and durations (`5m`, `1e3`, `0.95`).
                while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if braces > 0 || brackets > 0 {
                    continue;
                }
                let (j, next) = next_non_space(i);
                if LABEL_LISTS.contains(&word.as_str()) {
                    if next == Some('(') {
                        let close = chars[j..]
                            .iter()
                            .position(|&c| c == ')')
                            .ok_or_else(|| format!("unclosed `{word} (` in {expr:?}"))?;
                        i = j + close + 1;
                    }
                } else if KEYWORDS.contains(&word.as_str())
                    || next == Some('(')
                    || ["inf", "nan"].contains(&word.to_ascii_lowercase().as_str())
                {
                    // An operator, keyword, function call or number.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    if braces != 0 || brackets != 0 {
        return Err(format!("unbalanced braces or brackets in {expr:?}"));
    }
    Ok(names)
}

/// Checks one query: it names at least one metric, and only metrics in
/// `exported`.
fn check_expr(expr: &str, exported: &BTreeSet<String>) -> Result<(), String> {
    let names = metric_names(expr)?;
    if names.is_empty() {
        return Err(format!("names no metric: {expr:?}"));
    }
    let unknown: Vec<&String> = names.difference(exported).collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "names {unknown:?}, which no Sluice process exports, in {expr:?}"
        ))
    }
}

/// The PromQL of a Prometheus template variable's query: the selector of
/// `label_values(selector, label)`, the expression of `query_result(…)`,
/// else the query itself.
fn variable_expr(query: &str) -> &str {
    let query = query.trim();
    for function in ["label_values(", "query_result("] {
        if let Some(inner) = query
            .strip_prefix(function)
            .and_then(|q| q.strip_suffix(')'))
        {
            return match (function, inner.rsplit_once(',')) {
                ("label_values(", Some((selector, _label))) => selector.trim(),
                // `label_values(label)`: no metric; refused by check_expr.
                ("label_values(", None) => "",
                _ => inner.trim(),
            };
        }
    }
    query
}

/// Everything wrong with dashboard `file`, one line each, naming the
/// dashboard, panel and metric: what Grafana's file provisioning needs of
/// a dashboard model, datasources that are provisioned, and queries of
/// exported metrics only.
fn check_dashboard(
    file: &str,
    d: &Value,
    datasources: &BTreeMap<String, String>,
    exported: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |what: String| problems.push(format!("{file}: {what}"));
    let uid = d["uid"].as_str().unwrap_or_default();
    if uid.is_empty()
        || uid.len() > 40
        || !uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        problem(format!(
            "uid {:?}: 1 to 40 letters, digits, - or _",
            d["uid"]
        ));
    }
    if d["title"].as_str().is_none_or(str::is_empty) {
        problem("no title".into());
    }
    for key in ["schemaVersion", "version"] {
        if !d[key].is_u64() {
            problem(format!("{key} {:?} is not an integer", d[key]));
        }
    }
    // Provisioning gives each dashboard its id; `"id": null` is refused.
    if d.get("id").is_some_and(|id| !id.is_u64()) {
        problem(format!("id {:?}: leave it out", d["id"]));
    }
    for key in ["from", "to"] {
        if !d["time"][key].is_string() {
            problem(format!("time.{key} missing"));
        }
    }
    if !d["refresh"].is_string() {
        problem("refresh missing".into());
    }
    let check_ds = |ds: &Value| -> Result<(), String> {
        let uid = ds["uid"].as_str().ok_or("no datasource uid")?;
        match datasources.get(uid) {
            None => Err(format!(
                "datasource {uid:?} is not provisioned ({DATASOURCES})"
            )),
            Some(kind) if ds["type"].as_str().is_some_and(|t| t != kind) => Err(format!(
                "datasource {uid:?} has type {kind}, not {}",
                ds["type"]
            )),
            Some(_) => Ok(()),
        }
    };

    let mut var_names = BTreeSet::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default();
        if name.is_empty() || !var_names.insert(name.to_owned()) {
            problem(format!(
                "template variable name {:?} empty or repeated",
                v["name"]
            ));
        }
        if v["type"] != "query" {
            continue;
        }
        if let Err(e) = check_ds(&v["datasource"]) {
            problem(format!("variable ${name}: {e}"));
        }
        // Grafana writes the query as a string, or as an object (newer).
        let query = v["query"]["query"].as_str().or(v["query"].as_str());
        let Some(query) = query else {
            problem(format!("variable ${name}: no query"));
            continue;
        };
        let mut queries = vec![query];
        queries.extend(v["definition"].as_str());
        for q in queries {
            if let Err(e) = check_expr(variable_expr(q), exported) {
                problem(format!("variable ${name}: {e}"));
            }
        }
    }

    let all = panels(d);
    if all.iter().all(|p| p["type"] == "row") {
        problem("no panels".into());
    }
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or_default();
        let at = format!("panel {} {title:?}", p["id"]);
        match p["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            _ => problem(format!("{at}: id must be a unique integer")),
        }
        let kind = p["type"].as_str().unwrap_or_default();
        if kind.is_empty() {
            problem(format!("{at}: no type"));
        }
        if title.is_empty() {
            problem(format!("{at}: no title"));
        }
        let g = &p["gridPos"];
        let xywh = ["x", "y", "w", "h"].map(|k| g[k].as_u64());
        match xywh {
            [Some(x), Some(y), Some(w), Some(h)] if w >= 1 && h >= 1 && x + w <= 24 => {
                // Panels inside a collapsed row are laid out when it opens.
                if dashboard_level(d, p) {
                    boxes.push((at.clone(), [x, y, w, h]));
                }
            }
            _ => problem(format!("{at}: gridPos {g} (integers, x + w <= 24)")),
        }
        if kind == "row" {
            continue;
        }
        if let Err(e) = check_ds(&p["datasource"]) {
            problem(format!("{at}: {e}"));
        }
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if targets.is_empty() {
            problem(format!("{at}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for t in targets {
            let r = t["refId"].as_str().unwrap_or_default();
            if r.is_empty() || !refs.insert(r) {
                problem(format!("{at}: refId {:?} empty or repeated", t["refId"]));
            }
            if !t["datasource"].is_null()
                && let Err(e) = check_ds(&t["datasource"])
            {
                problem(format!("{at}, query {r}: {e}"));
            }
            match t["expr"].as_str() {
                Some(expr) if !expr.trim().is_empty() => {
                    if let Err(e) = check_expr(expr, exported) {
                        problem(format!("{at}, query {r}: {e}"));
                    }
                }
                _ => problem(format!("{at}, query {r}: no expr")),
            }
        }
    }
    for (i, (a, [ax, ay, aw, ah])) in boxes.iter().enumerate() {
        for (b, [bx, by, bw, bh]) in &boxes[i + 1..] {
            if ax < &(bx + bw) && bx < &(ax + aw) && ay < &(by + bh) && by < &(ay + ah) {
                problem(format!("{a} overlaps {b}"));
            }
        }
    }
    problems
}

/// Whether `panel` is laid out on the dashboard itself (not inside a
/// collapsed row).
fn dashboard_level(d: &Value, panel: &Value) -> bool {
    d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| std::ptr::eq(p, panel))
}

#[test]
fn every_dashboard_is_provisionable_and_queries_only_exported_metrics() {
    let exported = Metrics::exported_names();
    let datasources = datasources();
    let dashboards = dashboards();
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for (file, d) in &dashboards {
        problems.extend(check_dashboard(file, d, &datasources, &exported));
        // One provider folder: uids and titles must be unique across files.
        if !uids.insert(d["uid"].as_str().unwrap_or_default()) {
            problems.push(format!("{file}: uid {} is used twice", d["uid"]));
        }
        if !titles.insert(d["title"].as_str().unwrap_or_default()) {
            problems.push(format!("{file}: title {} is used twice", d["title"]));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );

    // The views the issue asks for query the metrics behind them.
    let all_exprs: String = dashboards
        .values()
        .flat_map(|d| panels(d).into_iter().cloned().collect::<Vec<_>>())
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("\n");
    for metric in [
        "sluice_published_total",
        "sluice_consumer_handled_total",
        "sluice_consumer_failed_total",
        "sluice_consumer_retried_total",
        "sluice_consumer_dead_lettered_total",
        "sluice_consumer_lag",
        "sluice_outbox_backlog",
        "sluice_handler_duration_seconds_bucket",
        "sluice_event_latency_seconds_bucket",
        "sluice_http_requests_total",
        "sluice_http_request_duration_seconds_bucket",
    ] {
        assert!(
            all_exprs.contains(metric),
            "no dashboard panel shows {metric}"
        );
    }
    assert!(
        dashboards
            .values()
            .flat_map(panels)
            .any(|p| p["type"] == "nodeGraph"),
        "a topology (nodeGraph) panel"
    );
}

#[test]
fn a_query_of_a_metric_no_process_exports_is_rejected() {
    let exported = Metrics::exported_names();
    let datasources = datasources();
    let bad = "rate(sluice_not_a_metric_total[1m])";
    assert!(check_expr(bad, &exported).is_err());
    let dashboard = json!({
        "uid": "made-up", "title": "Made up", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s",
        "panels": [{
            "id": 1, "type": "timeseries", "title": "Not a metric",
            "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8},
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "targets": [{"refId": "A", "expr": bad}],
        }],
    });
    let problems = check_dashboard("made-up.json", &dashboard, &datasources, &exported);
    assert_eq!(problems.len(), 1, "{problems:?}");
    for part in [
        "made-up.json",
        "\"Not a metric\"",
        "sluice_not_a_metric_total",
    ] {
        assert!(problems[0].contains(part), "{part} in {}", problems[0]);
    }

    // Metrics of other exporters, typos and expressions without a metric
    // are refused too; label names, label values, functions and
    // variables are not metric names.
    for bad in [
        "up",
        "rate(sluce_published_total[5m])",
        "sum(rate(sluice_published_total[5m])) / sum(rate(node_cpu_seconds_total[5m]))",
        "vector(1)",
        "1 + 2",
    ] {
        assert!(check_expr(bad, &exported).is_err(), "{bad}");
    }
    for good in [
        "sluice_published_total",
        r#"sum by (le, group) (rate(sluice_handler_duration_seconds_bucket{group=~"$group", subject="sluice_x"}[$__rate_interval]))"#,
        r#"sum by (subject, group) (rate(sluice_consumer_handled_total[5m])) * on (subject) group_left (service) group by (subject, service) (sluice_published_total)"#,
        r#"sum(rate(sluice_http_requests_total{route="/v1/orders/{id}", status=~"5.."}[${__range}])) > bool 0.5"#,
        r#"label_join(sluice_consumer_lag, "id", " -> ", "group", "filter") offset 5m"#,
    ] {
        assert_eq!(check_expr(good, &exported), Ok(()), "{good}");
    }
    assert_eq!(
        metric_names(r#"max by (group) (sluice_consumer_lag) or sluice_outbox_backlog"#)
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        ["sluice_consumer_lag", "sluice_outbox_backlog"]
    );
    assert_eq!(
        variable_expr("label_values(sluice_consumer_received_total, subject)"),
        "sluice_consumer_received_total"
    );
    assert!(check_expr(variable_expr("label_values(subject)"), &exported).is_err());
}

#[test]
fn compose_provisions_grafana_from_deploy_and_runs_the_observability_services() {
    let compose = read("compose.yaml");
    for service in ["otel-collector", "jaeger", "prometheus", "grafana"] {
        assert!(
            compose.lines().any(|l| l == format!("  {service}:")),
            "compose.yaml has no {service} service"
        );
    }

    // Grafana reads the provisioning and the dashboards where the provider
    // says they are.
    assert_eq!(
        mount_target(&compose, "./deploy/grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let dashboards_at = mount_target(&compose, "./deploy/grafana/dashboards");
    let provider = read_flow_yaml(PROVIDER);
    assert_eq!(provider["apiVersion"], 1, "{PROVIDER}: apiVersion");
    let providers = provider["providers"].as_array().expect("providers");
    assert!(!providers.is_empty());
    for p in providers {
        assert!(p["name"].as_str().is_some_and(|n| !n.is_empty()), "{p}");
        assert_eq!(p["type"], "file", "{p}");
        assert_eq!(p["options"]["path"], dashboards_at.as_str(), "{p}");
    }
    let home = yaml_value(&compose, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        .expect("a home dashboard");
    let home = home
        .strip_prefix(&format!("{dashboards_at}/"))
        .unwrap_or_else(|| panic!("home dashboard {home} outside {dashboards_at}"));
    assert!(root().join(DASHBOARDS).join(home).is_file(), "{home}");

    // The datasources point at compose services, and Grafana's rate
    // interval at Prometheus's scrape interval.
    let file = read_flow_yaml(DATASOURCES);
    for ds in file["datasources"].as_array().unwrap() {
        let url = ds["url"].as_str().unwrap();
        let host = url
            .strip_prefix("http://")
            .and_then(|u| u.split(':').next())
            .unwrap_or_else(|| panic!("{url}"));
        assert!(
            compose.lines().any(|l| l == format!("  {host}:")),
            "{url}: no {host} service"
        );
    }
    let prometheus = read("deploy/prometheus/prometheus.yml");
    let prometheus_ds = file["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "prometheus")
        .expect("a Prometheus datasource");
    assert_eq!(
        yaml_value(&prometheus, "scrape_interval"),
        prometheus_ds["jsonData"]["timeInterval"].as_str()
    );
    assert_eq!(
        mount_target(&compose, "./deploy/prometheus"),
        "/etc/prometheus"
    );
    assert!(compose.contains("--config.file=/etc/prometheus/prometheus.yml"));
    // `sluice up` on the host, reached from the container.
    assert!(prometheus.contains("\"host.docker.internal:8080\""));
    assert!(compose.contains("\"host.docker.internal:host-gateway\""));

    // The collector receives OTLP (gRPC and HTTP, published to the host)
    // and passes traces on to Jaeger.
    let collector = read("deploy/otel-collector.yaml");
    assert_eq!(
        mount_target(&compose, "./deploy/otel-collector.yaml"),
        "/etc/otelcol-contrib/config.yaml"
    );
    let lines: Vec<&str> = collector.lines().map(str::trim).collect();
    for line in [
        "receivers:",
        "otlp:",
        "grpc:",
        "http:",
        "endpoint: 0.0.0.0:4317",
        "endpoint: 0.0.0.0:4318",
        "pipelines:",
        "traces:",
        "receivers: [otlp]",
        "endpoint: jaeger:4317",
    ] {
        assert!(lines.contains(&line), "deploy/otel-collector.yaml: {line}");
    }
    let exporters = lines
        .iter()
        .find_map(|l| l.strip_prefix("exporters: ["))
        .expect("the traces pipeline's exporters");
    for exporter in exporters.trim_end_matches(']').split(',') {
        let exporter = exporter.trim();
        assert!(
            lines.contains(&format!("{exporter}:").as_str()),
            "exporter {exporter} is not configured"
        );
    }
    for port in [4317, 4318] {
        let published = format!(":-{port}}}:{port}\"");
        assert!(
            compose.contains(&published),
            "compose.yaml publishes {port}"
        );
    }
}
