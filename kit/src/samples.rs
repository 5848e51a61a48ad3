//! The process's metrics as values a program can read (the dashboard's
//! rates, lag and percentiles): [`Metrics::samples`] parses what
//! [`Metrics::render_text`] writes, so what a page shows is exactly what
//! Prometheus scrapes.

use std::collections::BTreeMap;

use crate::metrics::Metrics;

/// One sample: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`sluice_consumer_handled_total`, `…_bucket`).
    pub name: String,
    /// Its labels by name.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name` (empty when absent).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

impl Metrics {
    /// Every sample the process exports now.
    pub fn samples(&self) -> Vec<Sample> {
        parse(&self.render_text())
    }
}

/// The samples of a Prometheus text-format exposition; lines that do not
/// parse are left out.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.strip_prefix(',').unwrap_or(body);
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = body.find('=')?;
            let key = body[..eq].trim().to_owned();
            let quoted = body[eq + 1..].strip_prefix('"')?;
            let (value, used) = unescape(quoted)?;
            labels.insert(key, value);
            body = &quoted[used..];
        }
    }
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value: parse_value(value)?,
    })
}

/// A label value up to its closing quote, and how many bytes that took
/// (with the quote).
fn unescape(quoted: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut escaped = false;
    for (i, c) in quoted.char_indices() {
        match (escaped, c) {
            (true, 'n') => value.push('\n'),
            (true, c) => value.push(c),
            (false, '\\') => {
                escaped = true;
                continue;
            }
            (false, '"') => return Some((value, i + 1)),
            (false, c) => value.push(c),
        }
        escaped = false;
    }
    None
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn samples_read_back_what_the_metrics_render() {
        let m = Metrics::new();
        m.published("orders", "orders.order.placed", 3);
        m.set_lag("edge-orders", "orders.order.>", 7);
        m.http_request(
            "GET",
            "/v1/orders/{id}",
            200,
            std::time::Duration::from_millis(3),
        );
        let samples = m.samples();
        let find = |name: &str| samples.iter().find(|s| s.name == name).unwrap();
        let published = find("sluice_published_total");
        assert_eq!(published.value, 3.0);
        assert_eq!(published.label("service"), "orders");
        assert_eq!(published.label("subject"), "orders.order.placed");
        assert_eq!(
            find("sluice_consumer_lag").label("filter"),
            "orders.order.>"
        );
        let inf = samples
            .iter()
            .find(|s| {
                s.name == "sluice_http_request_duration_seconds_bucket" && s.label("le") == "+Inf"
            })
            .unwrap();
        assert_eq!(inf.value, 1.0);
        assert_eq!(inf.label("route"), "/v1/orders/{id}");
    }

    #[test]
    fn escaped_label_values_and_bad_lines() {
        let text =
            "a{x=\"q\\\"uote\\\\n\",y=\"\"} 2.5\nno_value\nb 1e3\nc{unclosed=\"v} 1\n# HELP a x\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 2, "{samples:?}");
        assert_eq!(samples[0].label("x"), "q\"uote\\n");
        assert_eq!(samples[0].label("y"), "");
        assert_eq!(samples[0].value, 2.5);
        assert_eq!(samples[1].name, "b");
        assert_eq!(samples[1].value, 1000.0);
    }
}
