//! The static token file (`--token-auth-file`), as upstream's `tokenfile`
//! authenticator: CSV lines `token,user,uid[,"group1,group2"]`.

use std::collections::HashMap;

use crate::{AuthError, UserInfo};

/// Parsed token file: token → user.
#[derive(Debug, Clone, Default)]
pub struct TokenFile {
    tokens: HashMap<String, UserInfo>,
}

/// Splits one CSV record (RFC 4180 quoting, leading spaces of fields trimmed as
/// Go's `csv.Reader{TrimLeadingSpace: true}`).
fn csv_fields(line: &str, line_no: usize) -> Result<Vec<String>, AuthError> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
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
                    None => {
                        return Err(AuthError::TokenFile {
                            line: line_no,
                            message: "unterminated quoted field".into(),
                        })
                    }
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => {
                    return Err(AuthError::TokenFile {
                        line: line_no,
                        message: "extraneous or missing \" in quoted-field".into(),
                    })
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(field);
                        break;
                    }
                    Some('"') => {
                        return Err(AuthError::TokenFile {
                            line: line_no,
                            message: "bare \" in non-quoted-field".into(),
                        })
                    }
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

impl TokenFile {
    /// Parses the file. Blank lines are skipped; a record with fewer than 3 columns
    /// is an error; empty and duplicate tokens are skipped with a warning (the first
    /// wins). The 4th column is a comma-separated group list.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let record = csv_fields(line, i + 1)?;
            if record.len() < 3 {
                return Err(AuthError::TokenFile {
                    line: i + 1,
                    message: format!(
                        "token file must have at least 3 columns (token, user name, user uid), found {}",
                        record.len()
                    ),
                });
            }
            let token = record[0].trim().to_string();
            if token.is_empty() {
                tracing::warn!("empty token has been found in token file, line {}", i + 1);
                continue;
            }
            if tokens.contains_key(&token) {
                tracing::warn!(
                    "duplicate token has been found in token file, line {}",
                    i + 1
                );
                continue;
            }
            let mut user = UserInfo {
                name: record[1].clone(),
                uid: record[2].clone(),
                ..Default::default()
            };
            if let Some(g) = record.get(3) {
                user.groups = g.split(',').map(str::to_string).collect();
            }
            tokens.insert(token, user.with_authenticated_group());
        }
        Ok(TokenFile { tokens })
    }

    /// The user of a bearer token (with `system:authenticated` added), if known.
    pub fn authenticate(&self, token: &str) -> Option<UserInfo> {
        self.tokens.get(token).cloned()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when the file has no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_format() {
        let f = TokenFile::parse(
            "abc123,alice,1001,\"system:masters,dev\"\n\n tok2, bob,1002\ntok3,carol,1003,ops\nabc123,mallory,9,\"system:masters\"\r\n",
        )
        .unwrap_or_default();
        assert_eq!(f.len(), 3);
        let a = f.authenticate("abc123").unwrap_or_default();
        assert_eq!(a.name, "alice");
        assert_eq!(a.uid, "1001");
        assert_eq!(
            a.groups,
            vec!["system:masters", "dev", "system:authenticated"]
        );
        let b = f.authenticate("tok2").unwrap_or_default();
        assert_eq!(b.name, "bob", "leading spaces trimmed");
        assert_eq!(b.groups, vec!["system:authenticated"]);
        assert_eq!(
            f.authenticate("tok3").map(|u| u.groups),
            Some(vec!["ops".into(), "system:authenticated".into()])
        );
        assert_eq!(f.authenticate("nope"), None);
    }

    #[test]
    fn rejects_short_and_bad_records() {
        let e = TokenFile::parse("ok,a,1\nonly,two\n").err();
        assert_eq!(
            e,
            Some(AuthError::TokenFile {
                line: 2,
                message:
                    "token file must have at least 3 columns (token, user name, user uid), found 2"
                        .into()
            })
        );
        assert!(TokenFile::parse("t,\"unterminated,1\n").is_err());
        assert!(TokenFile::parse("t,a\"b,1\n").is_err());
        let f = TokenFile::parse(",empty,1\n").unwrap_or_default();
        assert!(f.is_empty());
    }

    #[test]
    fn quoted_fields_with_escaped_quotes() {
        let f = TokenFile::parse("t,\"we \"\"quote\"\"\",u1").unwrap_or_default();
        assert_eq!(
            f.authenticate("t").map(|u| u.name),
            Some("we \"quote\"".into())
        );
    }
}
