//! The JSONPath subset field rules use: `$`, then `.name`, `['name']`,
//! `[N]` and `[*]` steps (`$.card.number`, `$.items[*].pan`,
//! `$['card-data'].number`). Filters, slices and recursive descent are
//! refused when the configuration is loaded, not silently ignored.

use std::fmt;

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// An object member.
    Name(String),
    /// An array element.
    Index(usize),
    /// Every array element.
    AnyIndex,
}

/// A parsed path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<Step>,
    text: String,
}

/// Where a value sits in a document: member names and array indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
#[error("JSONPath `{path}`: {reason}")]
pub struct PathError {
    path: String,
    reason: &'static str,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, PathError> {
        let err = |reason| PathError {
            path: text.to_owned(),
            reason,
        };
        let mut rest = text
            .strip_prefix('$')
            .ok_or_else(|| err("must start with `$`"))?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if rest.starts_with("..") {
                return Err(err("recursive descent (`..`) is not supported"));
            } else if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[', ']']).unwrap_or(r.len());
                let name = &r[..end];
                if name.is_empty() {
                    return Err(err("empty member name after `.`"));
                }
                if name == "*" {
                    return Err(err("`.*` is not supported; name the member"));
                }
                steps.push(Step::Name(name.to_owned()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or_else(|| err("`[` without `]`"))?;
                let inner = &r[..end];
                rest = &r[end + 1..];
                if inner == "*" {
                    steps.push(Step::AnyIndex);
                } else if let Some(q) = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                {
                    steps.push(Step::Name(q.to_owned()));
                } else if let Ok(n) = inner.parse::<usize>() {
                    steps.push(Step::Index(n));
                } else {
                    return Err(err(
                        "inside `[]` only `*`, an index or a quoted name is supported",
                    ));
                }
            } else {
                return Err(err("expected `.` or `[` after a step"));
            }
        }
        if steps.is_empty() {
            return Err(err("selects the whole document; name a field"));
        }
        Ok(JsonPath {
            steps,
            text: text.to_owned(),
        })
    }

    /// Does the value at `at` match?
    pub fn matches(&self, at: &[Seg]) -> bool {
        self.steps.len() == at.len()
            && self.steps.iter().zip(at).all(|(s, a)| match (s, a) {
                (Step::Name(n), Seg::Key(k)) => n == k,
                (Step::Index(i), Seg::Index(j)) => i == j,
                (Step::AnyIndex, Seg::Index(_)) => true,
                _ => false,
            })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Seg {
        Seg::Key(s.to_owned())
    }

    #[test]
    fn parses_the_supported_forms() {
        let p = JsonPath::parse("$.card.number").unwrap();
        assert!(p.matches(&[k("card"), k("number")]));
        assert!(!p.matches(&[k("card")]));
        assert!(!p.matches(&[k("card"), k("number"), k("x")]));
        assert!(!p.matches(&[k("card"), Seg::Index(0)]));

        let p = JsonPath::parse("$.items[*].pan").unwrap();
        assert!(p.matches(&[k("items"), Seg::Index(0), k("pan")]));
        assert!(p.matches(&[k("items"), Seg::Index(7), k("pan")]));
        assert!(!p.matches(&[k("items"), k("0"), k("pan")]));

        let p = JsonPath::parse("$.items[1].pan").unwrap();
        assert!(p.matches(&[k("items"), Seg::Index(1), k("pan")]));
        assert!(!p.matches(&[k("items"), Seg::Index(0), k("pan")]));

        let p = JsonPath::parse("$['card-data'][\"num ber\"]").unwrap();
        assert!(p.matches(&[k("card-data"), k("num ber")]));
    }

    #[test]
    fn refuses_what_it_does_not_support() {
        for bad in [
            "",
            "card.number",
            "$",
            "$..pan",
            "$.a.",
            "$.*",
            "$[?(@.x)]",
            "$[1:2]",
            "$.a[",
            "$.a]",
        ] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }
}
