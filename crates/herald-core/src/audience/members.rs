//! The rows of an uploaded audience list, one recipient each, as NDJSON or CSV.
//!
//! - NDJSON: one object a line, `{"userId": "…", "namespace": "…", "type": "aep" | "external"}`.
//!   `type` defaults to `aep`; `namespace` to the upload's default namespace (the `namespace`
//!   query parameter). Unknown keys are refused.
//! - CSV: a header line naming the columns (`userId`, and optionally `namespace` and `type`), then
//!   one recipient a line. Fields may be double-quoted (`""` is a quote); a field cannot hold a
//!   line break, since no identity can.
//!
//! Blank lines are skipped. Every line is checked on its own, so a list is read as it streams
//! and never held in memory; the first bad line refuses the whole upload, naming its number.

use serde::Deserialize;

use crate::execution::{MAX_IDENTIFIER_LENGTH, RecipientType};

/// The longest line an upload may hold; an identity is at most 256 bytes.
pub const MAX_LINE_BYTES: usize = 4096;

/// One recipient of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub kind: RecipientType,
    pub namespace: String,
    pub user_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JsonMember {
    user_id: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<RecipientType>,
}

/// How the rows of an upload are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    Ndjson,
    Csv,
}

impl ListFormat {
    /// From the request's `Content-Type` (its media type only).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match media.as_str() {
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/jsonlines" => {
                Some(ListFormat::Ndjson)
            }
            "text/csv" => Some(ListFormat::Csv),
            _ => None,
        }
    }
}

/// Reads the lines of one upload in order: the CSV header first, then members.
#[derive(Debug)]
pub struct ListReader {
    format: ListFormat,
    default_namespace: Option<String>,
    /// For CSV, once its header is read: the positions of userId, namespace and type.
    columns: Option<[Option<usize>; 3]>,
}

fn check_identifier(value: &str, what: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_IDENTIFIER_LENGTH {
        return Err(format!("{what} must be 1 to {MAX_IDENTIFIER_LENGTH} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} must not hold control characters"));
    }
    Ok(())
}

impl ListReader {
    pub fn new(format: ListFormat, default_namespace: Option<String>) -> Result<Self, String> {
        if let Some(namespace) = &default_namespace {
            check_identifier(namespace, "the namespace")?;
        }
        Ok(Self { format, default_namespace, columns: None })
    }

    /// One line, without its line break: `Ok(None)` for a blank line or the CSV header.
    pub fn line(&mut self, line: &[u8]) -> Result<Option<Member>, String> {
        if line.len() > MAX_LINE_BYTES {
            return Err(format!("longer than {MAX_LINE_BYTES} bytes"));
        }
        let line = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        if line.trim().is_empty() {
            return Ok(None);
        }
        let (kind, namespace, user_id) = match self.format {
            ListFormat::Ndjson => {
                let member: JsonMember = serde_json::from_str(line).map_err(|e| format!("not a member object: {e}"))?;
                (member.kind, member.namespace, member.user_id)
            }
            ListFormat::Csv => {
                let fields = split_csv(line)?;
                let Some(columns) = self.columns else {
                    self.columns = Some(csv_columns(&fields)?);
                    return Ok(None);
                };
                let field = |at: Option<usize>| at.and_then(|i| fields.get(i)).filter(|f| !f.is_empty()).cloned();
                let kind = match field(columns[2]).as_deref() {
                    None => None,
                    Some("aep") => Some(RecipientType::Aep),
                    Some("external") => Some(RecipientType::External),
                    Some(_) => return Err("type must be aep or external".into()),
                };
                let width = columns.iter().flatten().max().map_or(0, |m| m + 1);
                if fields.len() != width {
                    return Err(format!("{} fields where the header has {width}", fields.len()));
                }
                (kind, field(columns[1]), field(columns[0]).unwrap_or_default())
            }
        };
        let kind = kind.unwrap_or(RecipientType::Aep);
        let namespace = namespace.or_else(|| self.default_namespace.clone()).unwrap_or_default();
        check_identifier(&user_id, "userId")?;
        if kind == RecipientType::Aep {
            check_identifier(&namespace, "an aep member's namespace (or the upload's `namespace`)")?;
        } else if !namespace.is_empty() {
            check_identifier(&namespace, "namespace")?;
        }
        Ok(Some(Member { kind, namespace, user_id }))
    }

    /// Whether a CSV upload ended before its header.
    pub fn lacks_header(&self) -> bool {
        self.format == ListFormat::Csv && self.columns.is_none()
    }
}

fn csv_columns(header: &[String]) -> Result<[Option<usize>; 3], String> {
    let mut columns = [None; 3];
    for (at, name) in header.iter().enumerate() {
        let slot = match name.trim() {
            "userId" => 0,
            "namespace" => 1,
            "type" => 2,
            other => {
                return Err(format!(
                    "unknown column {:?} in the header: the columns are userId, namespace and type",
                    other.chars().take(64).collect::<String>()
                ));
            }
        };
        if columns[slot].replace(at).is_some() {
            return Err(format!("column {name} twice in the header"));
        }
    }
    if columns[0].is_none() {
        return Err("the header must name a userId column".into());
    }
    Ok(columns)
}

/// RFC 4180 fields of one line (no line breaks inside quotes).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("text after a closing quote".into()),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(format: ListFormat, lines: &[&str]) -> Result<Vec<Member>, (usize, String)> {
        let mut reader = ListReader::new(format, Some("crm".into())).unwrap();
        let mut members = Vec::new();
        for (number, line) in lines.iter().enumerate() {
            if let Some(member) = reader.line(line.as_bytes()).map_err(|e| (number + 1, e))? {
                members.push(member);
            }
        }
        Ok(members)
    }

    #[test]
    fn hostile_lines_are_refused_with_their_number() {
        for (lines, at) in [
            (vec![r#"{"userId":"a"}"#, r#"{"userId":"b\u0000"}"#], 2),
            (vec![r#"{"userId":""}"#], 1),
            (vec![r#"{"userId":"a","sandbox":"other"}"#], 1),
            (vec![r#"{"userId":"a","type":"admin"}"#], 1),
            (vec![r#"{"userId":"a"}"#, "not json"], 2),
            (vec![r#"{"userId":1}"#], 1),
        ] {
            let error = read(ListFormat::Ndjson, &lines).unwrap_err();
            assert_eq!(error.0, at, "{lines:?}: {error:?}");
        }
        let long = format!(r#"{{"userId":"{}"}}"#, "x".repeat(300));
        assert!(read(ListFormat::Ndjson, &[&long]).is_err());
        let huge = "x".repeat(MAX_LINE_BYTES + 1);
        assert!(read(ListFormat::Ndjson, &[&huge]).unwrap_err().1.contains("longer"));
        assert!(ListReader::new(ListFormat::Ndjson, Some("a\u{0}".into())).is_err());
        let mut reader = ListReader::new(ListFormat::Ndjson, None).unwrap();
        assert!(reader.line(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
        // An aep member needs a namespace from somewhere.
        assert!(reader.line(br#"{"userId":"a"}"#).is_err());
        assert!(reader.line(br#"{"userId":"a","type":"external"}"#).unwrap().is_some());
    }

    #[test]
    fn hostile_csv_is_refused() {
        for lines in [
            vec!["userId,extra", "a,b"],
            vec!["namespace", "crm"],
            vec!["userId,userId", "a,a"],
            vec!["userId,namespace", "a"],
            vec!["userId,namespace", "a,b,c"],
            vec!["userId", "\"unclosed"],
            vec!["userId", "\"a\"b"],
            vec!["userId", "a\"b"],
            vec!["userId,type", "a,root"],
            vec!["userId", "a\u{7}"],
        ] {
            assert!(read(ListFormat::Csv, &lines).is_err(), "{lines:?}");
        }
    }

    #[test]
    fn members_are_read_with_defaults() {
        let members = read(
            ListFormat::Ndjson,
            &[
                "\u{feff}{\"userId\":\"jane\"}",
                "",
                r#"{"userId":"x@example.com","type":"external"}"#,
                r#"{"userId":"lee","namespace":"email"}"#,
            ],
        )
        .unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[0], Member { kind: RecipientType::Aep, namespace: "crm".into(), user_id: "jane".into() });
        assert_eq!(members[1].kind, RecipientType::External);
        assert_eq!(members[2].namespace, "email");
        let members = read(
            ListFormat::Csv,
            &["type,userId,namespace\r", "aep,\"Doe, Jane\",\r", "external,\"say \"\"hi\"\"\",x", ",bob,email"],
        )
        .unwrap();
        assert_eq!(members[0].user_id, "Doe, Jane");
        assert_eq!(members[0].namespace, "crm");
        assert_eq!(members[1].user_id, "say \"hi\"");
        assert_eq!(members[2], Member { kind: RecipientType::Aep, namespace: "email".into(), user_id: "bob".into() });
        let mut reader = ListReader::new(ListFormat::Csv, None).unwrap();
        assert!(reader.lacks_header());
        assert_eq!(reader.line(b"userId").unwrap(), None);
        assert!(!reader.lacks_header());
    }

    #[test]
    fn content_types_pick_the_format() {
        assert_eq!(ListFormat::from_content_type("text/csv; charset=utf-8"), Some(ListFormat::Csv));
        assert_eq!(ListFormat::from_content_type("application/x-ndjson"), Some(ListFormat::Ndjson));
        assert_eq!(ListFormat::from_content_type("application/json"), None);
    }
}
