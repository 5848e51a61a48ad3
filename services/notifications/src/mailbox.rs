//! The mailbox folder: where e-mails go when no SMTP server is configured,
//! one RFC 5322 file per notification, `<folder>/<notification id>.eml`.
//!
//! A file is written to a temporary name and renamed into place, so a
//! reader never sees half a message and delivering the same notification
//! again (after a crash before it was marked sent) replaces the file
//! instead of adding a second one. [`read_mailbox`] lists what a folder
//! holds, for tests and the CLI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;

/// One e-mail found in a mailbox folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxMessage {
    /// The notification id (the file's stem).
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// The `Message-ID` header.
    pub message_id: String,
    /// The `From` header, decoded.
    pub from: String,
    /// The `To` header, decoded.
    pub to: String,
    /// The `Subject` header, decoded.
    pub subject: String,
    /// The plain-text body (the `text/plain` part), decoded, `\n` line ends.
    pub text: String,
    /// The HTML alternative, decoded, if there is one.
    pub html: Option<String>,
}

/// A mailbox folder or file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct MailboxError {
    /// The folder or file.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

/// Writes `message` (an RFC 5322 message) as `<dir>/<id>.eml`, replacing
/// any earlier copy, through a temporary file and a rename; returns the
/// file's path.
///
/// # Errors
/// The folder cannot be created or the file written.
pub async fn write_message(dir: &Path, id: &str, message: &[u8]) -> std::io::Result<PathBuf> {
    use tokio::io::AsyncWriteExt;
    tokio::fs::create_dir_all(dir).await?;
    let path = dir.join(format!("{id}.eml"));
    let tmp = dir.join(format!(".{id}.eml.tmp"));
    let mut file = tokio::fs::File::create(&tmp).await?;
    file.write_all(message).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&tmp, &path).await?;
    // The rename survives a power loss once the folder is synced; where
    // folders cannot be opened for that, the rename stands as it is.
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
    Ok(path)
}

/// Every e-mail in the mailbox folder `dir`, by file name; a folder that
/// does not exist yet is empty.
///
/// # Errors
/// The folder or a message file cannot be read.
pub fn read_mailbox(dir: &Path) -> Result<Vec<MailboxMessage>, MailboxError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| MailboxError { path, source }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(dir)(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(err(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".eml") && !name.starts_with('.') {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(err(&path))?;
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            Ok(parse_message(id, path, &bytes))
        })
        .collect()
}

/// Parses the parts of a message this module's readers care about.
fn parse_message(id: String, path: PathBuf, bytes: &[u8]) -> MailboxMessage {
    let text = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
    let (headers, body) = split_part(&text);
    let header = |name: &str| decode_words(headers.get(name).map_or("", String::as_str));
    let (plain, html) = bodies(&headers, body);
    MailboxMessage {
        id,
        path,
        message_id: header("message-id"),
        from: header("from"),
        to: header("to"),
        subject: header("subject"),
        text: plain.unwrap_or_default(),
        html,
    }
}

/// The headers (lower-case names, unfolded, first occurrence) and the body
/// of a message or part (`\n` line ends).
fn split_part(text: &str) -> (HashMap<String, String>, &str) {
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => (text, ""),
    };
    let mut headers: HashMap<String, String> = HashMap::new();
    let mut last: Option<String> = None;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| headers.get_mut(k)) {
                v.push_str(line);
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            headers
                .entry(name.clone())
                .or_insert_with(|| value.trim().to_owned());
            last = Some(name);
        }
    }
    (headers, body)
}

/// The `text/plain` and `text/html` bodies of a part, decoded.
fn bodies(headers: &HashMap<String, String>, body: &str) -> (Option<String>, Option<String>) {
    let content_type = headers
        .get("content-type")
        .map_or("text/plain", String::as_str);
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime.starts_with("multipart/") {
        let Some(boundary) = parameter(content_type, "boundary") else {
            return (None, None);
        };
        let (mut plain, mut html) = (None, None);
        for part in multipart(body, &boundary) {
            let (h, b) = split_part(part);
            let (p, t) = bodies(&h, b);
            plain = plain.or(p);
            html = html.or(t);
        }
        return (plain, html);
    }
    let decoded = decode_body(headers, body);
    match mime.as_str() {
        "text/html" => (None, Some(decoded)),
        _ => (Some(decoded), None),
    }
}

/// The parts of a multipart body between `--boundary` lines.
fn multipart<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    // Skip the preamble.
    match rest.find(&delimiter) {
        Some(i) => rest = &rest[i + delimiter.len()..],
        None => return parts,
    }
    while !rest.starts_with("--") {
        let rest_start = rest.strip_prefix('\n').unwrap_or(rest);
        let Some(end) = rest_start.find(&format!("\n{delimiter}")) else {
            break;
        };
        parts.push(&rest_start[..end]);
        rest = &rest_start[end + 1 + delimiter.len()..];
    }
    parts
}

/// The value of parameter `name` in a header like `Content-Type`.
fn parameter(header: &str, name: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// A part's body undone from its `Content-Transfer-Encoding`.
fn decode_body(headers: &HashMap<String, String>, body: &str) -> String {
    let encoding = headers
        .get("content-transfer-encoding")
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            match base64::engine::general_purpose::STANDARD.decode(compact) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).replace("\r\n", "\n"),
                Err(_) => body.to_owned(),
            }
        }
        "quoted-printable" => {
            match quoted_printable::decode(body, quoted_printable::ParseMode::Robust) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).replace("\r\n", "\n"),
                Err(_) => body.to_owned(),
            }
        }
        _ => body.to_owned(),
    }
}

/// A header value with its RFC 2047 encoded words (`=?utf-8?b?…?=`,
/// `=?utf-8?q?…?=`) decoded; whitespace between two encoded words goes.
fn decode_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut after_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, candidate) = rest.split_at(start);
        match encoded_word(candidate) {
            Some((decoded, len)) => {
                if !(after_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&decoded);
                rest = &candidate[len..];
                after_word = true;
            }
            None => {
                out.push_str(before);
                out.push_str("=?");
                rest = &candidate[2..];
                after_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes the encoded word at the start of `s`: the text and its length.
fn encoded_word(s: &str) -> Option<(String, usize)> {
    let inner = s.strip_prefix("=?")?;
    let (_charset, inner) = inner.split_once('?')?;
    let (encoding, inner) = inner.split_once('?')?;
    let end = inner.find("?=")?;
    let text = &inner[..end];
    if text.contains(char::is_whitespace) {
        return None;
    }
    let bytes = match encoding {
        "b" | "B" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
        "q" | "Q" => {
            quoted_printable::decode(text.replace('_', " "), quoted_printable::ParseMode::Robust)
                .ok()?
        }
        _ => return None,
    };
    let len = s.len() - inner.len() + end + 2;
    Some((String::from_utf8_lossy(&bytes).into_owned(), len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn encoded_words_are_decoded_and_joined() {
        assert_eq!(decode_words("plain"), "plain");
        assert_eq!(
            decode_words("=?utf-8?b?w6Rw?= =?utf-8?q?fel_=C3=A4?="),
            "äpfel ä"
        );
        assert_eq!(decode_words("x =?utf-8?b?w6Rw?= y"), "x äp y");
        assert_eq!(decode_words("a =? b"), "a =? b");
    }

    #[test]
    fn a_multipart_message_yields_both_bodies() {
        let m = "Subject: =?utf-8?b?w6Rw?=\r\nTo: a@b.c\r\nContent-Type: multipart/alternative;\r\n boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nTotal: 12=2E34 EUR\r\n--XX\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n--XX--\r\n";
        let msg = parse_message("id".into(), "id.eml".into(), m.as_bytes());
        assert_eq!(msg.subject, "äp");
        assert_eq!(msg.to, "a@b.c");
        assert_eq!(msg.text, "Total: 12.34 EUR");
        assert_eq!(msg.html.as_deref(), Some("<b>hi</b>"));
    }

    #[tokio::test]
    async fn writing_a_message_again_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let box_dir = dir.path().join("box");
        assert!(read_mailbox(&box_dir).unwrap().is_empty(), "no folder yet");
        let m = b"Subject: one\r\nTo: a@b.c\r\n\r\nhello\r\n";
        write_message(&box_dir, "n-1", m).await.unwrap();
        write_message(&box_dir, "n-1", b"Subject: two\r\n\r\nhi\r\n")
            .await
            .unwrap();
        let all = read_mailbox(&box_dir).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].id.as_str(), all[0].subject.as_str()),
            ("n-1", "two")
        );
        assert_eq!(all[0].text, "hi\n");
    }
}
