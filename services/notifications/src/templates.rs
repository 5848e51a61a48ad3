//! The e-mails' templates (minijinja), embedded in the binary from
//! `templates/`: for each [`Template`], a subject
//! (`<name>.subject.txt`), a plain-text body (`<name>.txt`) and an HTML
//! alternative (`<name>.html`, auto-escaped).
//!
//! Templates get strings only (amounts already formatted with
//! [`format_amount`]); a variable a template names but is not given is an
//! error, not an empty string.

use minijinja::{Environment, UndefinedBehavior, Value};

/// The e-mails the service sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// `orders.order.confirmed`: `order_id`, `amount`.
    OrderConfirmed,
    /// `orders.order.cancelled`: `order_id`, `reason`.
    OrderCancelled,
}

impl Template {
    /// The template's name (file stem, and `notifications.template`).
    pub fn name(self) -> &'static str {
        match self {
            Self::OrderConfirmed => "order_confirmed",
            Self::OrderCancelled => "order_cancelled",
        }
    }
}

/// (file name, source) of every embedded template.
const SOURCES: &[(&str, &str)] = &[
    (
        "order_confirmed.subject.txt",
        include_str!("../templates/order_confirmed.subject.txt"),
    ),
    (
        "order_confirmed.txt",
        include_str!("../templates/order_confirmed.txt"),
    ),
    (
        "order_confirmed.html",
        include_str!("../templates/order_confirmed.html"),
    ),
    (
        "order_cancelled.subject.txt",
        include_str!("../templates/order_cancelled.subject.txt"),
    ),
    (
        "order_cancelled.txt",
        include_str!("../templates/order_cancelled.txt"),
    ),
    (
        "order_cancelled.html",
        include_str!("../templates/order_cancelled.html"),
    ),
];

/// A rendered e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML alternative.
    pub html: Option<String>,
}

/// A template failed to compile or render.
#[derive(Debug, thiserror::Error)]
#[error("template {name}: {source}")]
pub struct TemplateError {
    /// The template file.
    pub name: String,
    /// minijinja's error (with the line).
    pub source: minijinja::Error,
}

/// The compiled templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Compiles the embedded templates.
    ///
    /// # Errors
    /// A template has a syntax error.
    pub fn new() -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, source) in SOURCES {
            env.add_template(name, source)
                .map_err(|source| TemplateError {
                    name: (*name).to_owned(),
                    source,
                })?;
        }
        Ok(Self { env })
    }

    /// Renders `template` with `vars` (a `minijinja::context!`).
    ///
    /// # Errors
    /// The template names a variable `vars` lacks, or fails otherwise.
    pub fn render(&self, template: Template, vars: &Value) -> Result<Rendered, TemplateError> {
        let stem = template.name();
        let subject = self.render_one(&format!("{stem}.subject.txt"), vars)?;
        let text = self.render_one(&format!("{stem}.txt"), vars)?;
        let html = self.render_one(&format!("{stem}.html"), vars)?;
        Ok(Rendered {
            subject: one_line(&subject),
            text,
            html: Some(html),
        })
    }

    fn render_one(&self, name: &str, vars: &Value) -> Result<String, TemplateError> {
        let err = |source| TemplateError {
            name: name.to_owned(),
            source,
        };
        self.env
            .get_template(name)
            .map_err(err)?
            .render(vars)
            .map_err(err)
    }
}

/// `text` as one header line: whitespace runs (newlines too) become one
/// space, so a value cannot add header lines.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Digits after the decimal point of an ISO 4217 currency (2 unless listed).
fn minor_digits(currency: &str) -> u32 {
    match currency.to_ascii_uppercase().as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// An amount in minor units as `major.minor CUR`: 1234 EUR is
/// `12.34 EUR`, 500 JPY is `500 JPY`.
pub fn format_amount(minor_units: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    let sign = if minor_units < 0 { "-" } else { "" };
    let abs = minor_units.unsigned_abs();
    let currency = currency.trim();
    let amount = if digits == 0 {
        abs.to_string()
    } else {
        let scale = 10u64.pow(digits);
        format!(
            "{}.{:0width$}",
            abs / scale,
            abs % scale,
            width = digits as usize
        )
    };
    if currency.is_empty() {
        format!("{sign}{amount}")
    } else {
        format!("{sign}{amount} {currency}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn amounts_are_formatted_from_minor_units() {
        assert_eq!(format_amount(1234, "EUR"), "12.34 EUR");
        assert_eq!(format_amount(5, "USD"), "0.05 USD");
        assert_eq!(format_amount(-1999, "EUR"), "-19.99 EUR");
        assert_eq!(format_amount(500, "JPY"), "500 JPY");
        assert_eq!(format_amount(12345, "KWD"), "12.345 KWD");
        assert_eq!(format_amount(100, ""), "1.00");
    }

    #[test]
    fn a_confirmation_names_the_order_and_the_amount() {
        let t = Templates::new().unwrap();
        let vars = minijinja::context! { order_id => "o-1", amount => format_amount(1234, "EUR") };
        let r = t.render(Template::OrderConfirmed, &vars).unwrap();
        assert_eq!(r.subject, "Your order o-1 is confirmed");
        assert!(r.text.contains("Total: 12.34 EUR"), "{}", r.text);
        assert!(r.html.unwrap().contains("<strong>12.34 EUR</strong>"));
    }

    #[test]
    fn html_is_escaped_and_subjects_stay_one_line() {
        let t = Templates::new().unwrap();
        let vars = minijinja::context! { order_id => "o-<1>\r\nBcc: x@y", reason => "a & b" };
        let r = t.render(Template::OrderCancelled, &vars).unwrap();
        assert_eq!(r.subject, "Your order o-<1> Bcc: x@y was cancelled");
        assert!(
            r.text.contains("Reason: a & b"),
            "plain text is not escaped"
        );
        let html = r.html.unwrap();
        assert!(
            html.contains("o-&lt;1&gt;") && html.contains("a &amp; b"),
            "{html}"
        );
    }

    #[test]
    fn a_missing_variable_is_an_error() {
        let t = Templates::new().unwrap();
        let vars = minijinja::context! { order_id => "o-1" };
        let e = t.render(Template::OrderConfirmed, &vars).unwrap_err();
        assert!(e.to_string().contains("order_confirmed"), "{e}");
    }
}
