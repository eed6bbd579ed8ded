//! Writing findings: plain text, JSON Lines, SARIF 2.1.0.
//!
//! Invariant: a [`Report`] holds no more than BIN6 and last4 of a number, and
//! every free-text field written (paths, error messages) goes through
//! `tokengate_core::redact_pans` first, so a file *named* after a card
//! number cannot leak it either.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::{Value, json};
use tokengate_core::redact_pans;

use crate::detect::Kind;
use crate::scan::Report;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// `path:line:column: brand masked [kind]`
    Text,
    /// One JSON object per finding per line.
    JsonLines,
    /// One SARIF 2.1.0 document at the end.
    Sarif,
}

/// The JSON form of one finding (also the shape of `--json` lines).
#[derive(Debug, Serialize)]
pub struct JsonFinding<'a> {
    pub path: String,
    pub line: u64,
    pub column: u64,
    pub offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<&'a str>,
    pub brand: &'static str,
    pub kind: &'static str,
    pub masked: String,
    pub bin6: &'a str,
    pub last4: &'a str,
    pub length: usize,
    pub test_card: bool,
}

impl<'a> JsonFinding<'a> {
    pub fn new(r: &'a Report) -> Self {
        let f = &r.located.finding;
        JsonFinding {
            path: redact_pans(&r.path).into_owned(),
            line: r.located.line,
            column: r.located.column,
            offset: r.located.offset,
            row: r.row.as_deref(),
            brand: f.brand.as_str(),
            kind: f.kind.as_str(),
            masked: f.masked(),
            bin6: f.bin6(),
            last4: f.last4(),
            length: f.digits_len(),
            test_card: f.test_card,
        }
    }
}

/// Writes findings in one format.
#[derive(Debug)]
pub struct Writer<W: Write> {
    format: Format,
    w: W,
    sarif: Vec<Value>,
    /// Flush after every finding (follow mode).
    pub flush_each: bool,
}

impl<W: Write> Writer<W> {
    pub fn new(format: Format, w: W) -> Self {
        Writer {
            format,
            w,
            sarif: Vec::new(),
            flush_each: false,
        }
    }

    pub fn finding(&mut self, r: &Report) -> io::Result<()> {
        let f = &r.located.finding;
        match self.format {
            Format::Text => {
                let mut extra = String::new();
                if f.kind != Kind::Pan {
                    extra.push_str(" [");
                    extra.push_str(f.kind.as_str());
                    extra.push(']');
                }
                if f.test_card {
                    extra.push_str(" [test card]");
                }
                let row = r
                    .row
                    .as_deref()
                    .map(|s| format!(" row {s}"))
                    .unwrap_or_default();
                writeln!(
                    self.w,
                    "{}:{}:{}:{row} {} {}{extra}",
                    redact_pans(&r.path),
                    r.located.line,
                    r.located.column,
                    f.brand,
                    f.masked()
                )?;
            }
            Format::JsonLines => {
                serde_json::to_writer(&mut self.w, &JsonFinding::new(r))?;
                self.w.write_all(b"\n")?;
            }
            Format::Sarif => self.sarif.push(sarif_result(r)),
        }
        if self.flush_each {
            self.w.flush()?;
        }
        Ok(())
    }

    /// Ends the output (writes the SARIF document) and flushes.
    pub fn finish(mut self) -> io::Result<W> {
        if self.format == Format::Sarif {
            let doc = sarif_document(std::mem::take(&mut self.sarif));
            serde_json::to_writer_pretty(&mut self.w, &doc)?;
            self.w.write_all(b"\n")?;
        }
        self.w.flush()?;
        Ok(self.w)
    }
}

const RULE_PAN: &str = "tokengate/pan";
const RULE_TRACK: &str = "tokengate/track-data";

fn sarif_result(r: &Report) -> Value {
    let f = &r.located.finding;
    let (rule, what) = match f.kind {
        Kind::Pan => (RULE_PAN, "card number"),
        _ => (RULE_TRACK, "magnetic-stripe track data"),
    };
    let col = r.located.column;
    let end_col = col + (f.end - f.start) as u64;
    let mut props = json!({
        "brand": f.brand.as_str(),
        "kind": f.kind.as_str(),
        "masked": f.masked(),
        "testCard": f.test_card,
    });
    if let (Some(row), Some(obj)) = (&r.row, props.as_object_mut()) {
        obj.insert("row".into(), Value::String(row.clone()));
    }
    json!({
        "ruleId": rule,
        "level": "error",
        "message": { "text": format!("{} {} {} found", f.brand, what, f.masked()) },
        "locations": [{
            "physicalLocation": {
                "artifactLocation": { "uri": sarif_uri(&redact_pans(&r.path)) },
                "region": {
                    "startLine": r.located.line,
                    "startColumn": col,
                    "endColumn": end_col,
                    "byteOffset": r.located.offset,
                    "byteLength": f.end - f.start,
                }
            }
        }],
        "properties": props,
    })
}

/// SARIF wants URI references: forward slashes, reserved characters
/// percent-encoded.
fn sarif_uri(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.replace('\\', "/").bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'/'
            | b'!'
            | b'*' => out.push(char::from(b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn sarif_document(results: Vec<Value>) -> Value {
    json!({
        "$schema": "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "tokengate-scan",
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": [
                        {
                            "id": RULE_PAN,
                            "name": "CardNumber",
                            "shortDescription": { "text": "Payment card number (PAN) outside the vault" },
                            "fullDescription": { "text": "A number with a card brand's IIN range and length that passes the Luhn check. PCI DSS 3.2.1/3.5.1: store card numbers only where they are protected, or not at all." },
                            "defaultConfiguration": { "level": "error" },
                            "properties": { "tags": ["security", "pci-dss", "pan"] }
                        },
                        {
                            "id": RULE_TRACK,
                            "name": "TrackData",
                            "shortDescription": { "text": "Magnetic-stripe track data (sensitive authentication data)" },
                            "fullDescription": { "text": "Track 1 or track 2 data. PCI DSS 3.3.1: never store it after authorisation." },
                            "defaultConfiguration": { "level": "error" },
                            "properties": { "tags": ["security", "pci-dss", "sad"] }
                        }
                    ]
                }
            },
            "results": results,
        }]
    })
}
