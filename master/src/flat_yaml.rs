//! The YAML of Mooncake's master config files (its `conf/master.yaml`, the k8s ConfigMap of
//! its deployment): one `key: scalar` per line at the left margin, `#` comments, blank lines,
//! an optional leading `---`. [`parse`] reads exactly that into the JSON object that
//! `config_file` takes, every scalar a string (the flag's own parser gives it a type) except
//! `~`/`null`/nothing, which is null. Everything else YAML allows (nesting, lists, flow
//! collections, block scalars, anchors, tags, several documents) is an error naming its line:
//! no master setting needs it, and Mooncake flattens nested keys into names no flag has.

use serde_json::{Map, Value};

/// Why a config file is not flat YAML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("YAML line {line}: {why}")]
pub struct YamlError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub why: String,
}

/// The `key: scalar` lines of `text` as a JSON object.
pub fn parse(text: &str) -> Result<Map<String, Value>, YamlError> {
    let mut out = Map::new();
    let mut first_line_of: Vec<(String, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |why: String| YamlError { line, why };
        let l = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = l.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if is_marker(trimmed, "---") {
            if out.is_empty() {
                continue;
            }
            return Err(err("a second document: one mapping of settings only".into()));
        }
        if l.starts_with([' ', '\t']) {
            return Err(err(
                "an indented line: nested settings are not master flags".into(),
            ));
        }
        if l.starts_with('-') {
            return Err(err(
                "a list item: the file must map flag names to values".into()
            ));
        }
        let (key, rest) = split_key(l).ok_or_else(|| err("expected `key: value`".into()))?;
        let value = scalar(rest).map_err(err)?;
        if let Some((_, first)) = first_line_of.iter().find(|(k, _)| k == key) {
            return Err(err(format!("key {key:?} already set on line {first}")));
        }
        first_line_of.push((key.to_string(), line));
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// Whether `t` is the marker, alone or followed by a comment.
fn is_marker(t: &str, marker: &str) -> bool {
    t.strip_prefix(marker)
        .is_some_and(|r| r.is_empty() || r.trim_start().starts_with('#'))
}

/// `key` and what follows its `:` for a plain key of flag-name characters.
fn split_key(l: &str) -> Option<(&str, &str)> {
    let colon = l.find(':')?;
    let (key, rest) = (&l[..colon], &l[colon + 1..]);
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let separated = rest.is_empty() || rest.starts_with([' ', '\t']);
    (key_ok && separated).then_some((key, rest))
}

/// The value after `key:`, with any trailing comment.
fn scalar(rest: &str) -> Result<Value, String> {
    let v = rest.trim_start();
    match v.chars().next() {
        None | Some('#') => Ok(Value::Null),
        Some('"') => quoted(&v[1..], '"'),
        Some('\'') => quoted(&v[1..], '\''),
        Some(c @ ('[' | '{' | '|' | '>' | '&' | '*' | '!' | '%' | '@' | '`')) => Err(format!(
            "a value starting with {c:?} (flow collection, block scalar, anchor, alias, tag or \
             reserved): write a plain or quoted scalar"
        )),
        Some(_) => {
            let end = v.find(" #").or_else(|| v.find("\t#")).unwrap_or(v.len());
            let plain = v[..end].trim_end();
            Ok(match plain {
                "~" | "null" | "Null" | "NULL" => Value::Null,
                p => Value::String(p.to_string()),
            })
        }
    }
}

/// A quoted scalar whose opening `quote` is consumed; only a comment may follow it.
fn quoted(body: &str, quote: char) -> Result<Value, String> {
    let mut out = String::new();
    let mut chars = body.char_indices();
    let end = loop {
        let Some((i, c)) = chars.next() else {
            return Err(format!("no closing {quote}"));
        };
        match (quote, c) {
            ('\'', '\'') => {
                // '' is a quote inside a single-quoted scalar.
                if body[i + 1..].starts_with('\'') {
                    chars.next();
                    out.push('\'');
                } else {
                    break i + 1;
                }
            }
            ('"', '"') => break i + 1,
            ('"', '\\') => out.push(escape(&mut chars)?),
            (_, c) => out.push(c),
        }
    };
    let after = body[end..].trim_start();
    if !after.is_empty() && !after.starts_with('#') {
        return Err(format!("text after the closing {quote}: {after:?}"));
    }
    Ok(Value::String(out))
}

/// The character a backslash escape in a double-quoted scalar stands for.
fn escape(chars: &mut std::str::CharIndices<'_>) -> Result<char, String> {
    let (_, c) = chars.next().ok_or("a backslash at the end of the line")?;
    Ok(match c {
        '\\' | '"' | '/' => c,
        'n' => '\n',
        't' => '\t',
        'r' => '\r',
        '0' => '\0',
        'u' => {
            let hex: String = (0..4)
                .filter_map(|_| chars.next().map(|(_, h)| h))
                .collect();
            u32::from_str_radix(&hex, 16)
                .ok()
                .filter(|_| hex.len() == 4)
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad escape \\u{hex}"))?
        }
        other => return Err(format!("unsupported escape \\{other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    #[test]
    fn reads_a_master_config() {
        let text = "---\n\
            # RPC\n\
            rpc_port: 50051\n\
            rpc_address: \"0.0.0.0\"   # bind all\n\
            rpc_interface: \"\"\r\n\
            \n\
            eviction_ratio: 0.1\n\
            enable_ha: false\n\
            etcd_endpoints: 'http://e1:2379;http://e2:2379'\n\
            cluster_id: it''s\n\
            label: 'it''s'\n\
            tab:\t\"a\\tb\\u00e9\"\n\
            root_fs_dir:\n\
            quota_bytes: ~ # none\n\
            plain: a#b # comment\n";
        let m = parse(text).unwrap();
        let want: Vec<(&str, Value)> = vec![
            ("rpc_port", s("50051")),
            ("rpc_address", s("0.0.0.0")),
            ("rpc_interface", s("")),
            ("eviction_ratio", s("0.1")),
            ("enable_ha", s("false")),
            ("etcd_endpoints", s("http://e1:2379;http://e2:2379")),
            ("cluster_id", s("it''s")),
            ("label", s("it's")),
            ("tab", s("a\tb\u{e9}")),
            ("root_fs_dir", Value::Null),
            ("quota_bytes", Value::Null),
            ("plain", s("a#b")),
        ];
        assert_eq!(m.len(), want.len());
        for (k, v) in want {
            assert_eq!(m.get(k), Some(&v), "{k}");
        }
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# only comments\n\n").unwrap().is_empty());
    }

    #[test]
    fn anything_beyond_flat_scalars_is_an_error_naming_its_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("a: 1\nmaster:\n  rpc_port: 1\n", 3, "indented"),
            ("a: 1\n\tb: 2\n", 2, "indented"),
            ("- a\n", 1, "list item"),
            ("a: [1, 2]\n", 1, "flow collection"),
            ("a: {b: 1}\n", 1, "flow collection"),
            ("a: |\n", 1, "block scalar"),
            ("a: &x 1\n", 1, "anchor"),
            ("a: *x\n", 1, "alias"),
            ("a: !!str 1\n", 1, "tag"),
            ("a: 1\n---\nb: 2\n", 2, "second document"),
            ("a 1\n", 1, "expected `key: value`"),
            ("a:1\n", 1, "expected `key: value`"),
            ("\"a\": 1\n", 1, "expected `key: value`"),
            ("a: \"open\n", 1, "no closing \""),
            ("a: 'open\n", 1, "no closing '"),
            ("a: \"x\" y\n", 1, "text after the closing"),
            ("a: \"\\q\"\n", 1, "unsupported escape"),
            ("a: \"\\u12\"\n", 1, "bad escape"),
            ("a: 1\nb: 2\na: 3\n", 3, "already set on line 1"),
        ];
        for (text, line, why) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.why.contains(why), "{text:?}: {e}");
        }
    }
}
