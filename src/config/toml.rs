//! TOML reading: a strict pre-pass in front of nanoserde.
//!
//! [`nanoserde`]'s TOML parser (0.2) is small, but it reads some valid TOML wrongly without an
//! error. The pre-pass walks the text first: it checks the TOML structure line by line, records
//! the line of every key (for error messages), decodes strings and re-emits a normalised
//! document (every key quoted, every string a plain basic string, every number a decimal) that
//! nanoserde parses exactly; the caller then compares the two key sets, so a disagreement is an
//! error, never a silently wrong value. What it works around, each shown on nanoserde itself by
//! a test in `tests` below (`nanoserde_*`, which fail once nanoserde stops doing it):
//! * an empty string `""` opens a string that runs on past the end of its line, so an empty
//!   value is an error (`nanoserde_empty_string_swallows_the_next_line`);
//! * keys after a `[[table]]` and a later `[section]` land in the wrong table
//!   (`nanoserde_misscopes_keys_after_an_array_table`);
//! * `true`/`false` inside an array is a syntax error (`nanoserde_rejects_booleans_in_arrays`);
//! * literal strings `'…'` are a syntax error, and an escape in a basic string silently loses
//!   its backslash (`"x\ty"` reads as `xty`) (`nanoserde_reads_literal_strings_and_escapes_wrongly`);
//! * a duplicate key silently overwrites the first (`nanoserde_keeps_duplicate_keys`);
//! * hexadecimal, octal and binary integers are a syntax error
//!   (`nanoserde_rejects_hex_octal_and_binary_integers`).
//!
//! Pure text processing (no I/O).

use std::collections::{BTreeMap, BTreeSet};

use super::{ConfigError, Warning, WarningKind};

/// A header or key under `users`: its parts as written, its line, whether it is a header.
pub(super) type UserItem = (Vec<String>, usize, bool);

pub(super) struct Prepass {
    pub(super) out: String,
    pub(super) keys: BTreeMap<String, usize>,
    pub(super) warnings: Vec<Warning>,
    /// Table headers and keys under `users`, in document order: their parts as written
    /// (`[users."bob.smith"]` is `["users", "bob.smith"]`, where the dotted key loses the
    /// quoting), their line, and whether it is a header.
    pub(super) users: Vec<UserItem>,
}

struct Pre {
    c: Vec<char>,
    p: usize,
    line: usize,
    out: String,
    skipping: bool,
    section: String,
    section_parts: Vec<String>,
    keys: BTreeMap<String, usize>,
    users: Vec<UserItem>,
    tables: BTreeSet<String>,
    warnings: Vec<Warning>,
}

pub(super) fn prepass(text: &str) -> Result<Prepass, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut pre = Pre {
        c: text.chars().collect(),
        p: 0,
        line: 1,
        out: String::with_capacity(text.len() + 64),
        skipping: false,
        section: String::new(),
        section_parts: Vec::new(),
        keys: BTreeMap::new(),
        users: Vec::new(),
        tables: BTreeSet::new(),
        warnings: Vec::new(),
    };
    pre.run()?;
    Ok(Prepass {
        out: pre.out,
        keys: pre.keys,
        warnings: pre.warnings,
        users: pre.users,
    })
}

fn is_bare_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl Pre {
    fn peek(&self) -> Option<char> {
        self.c.get(self.p).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.c.get(self.p + n).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.p += 1;
        }
        c
    }

    fn emit(&mut self, s: &str) {
        if !self.skipping {
            self.out.push_str(s);
        }
    }

    fn emit_quoted(&mut self, s: &str) {
        if self.skipping {
            return;
        }
        if s.is_empty() {
            // nanoserde reads `""` as the start of a string that runs to the next quote; an
            // empty triple-quoted string is read correctly (it eats the one following space).
            self.out.push_str("\"\"\"\"\"\" ");
            return;
        }
        self.out.push('"');
        for c in s.chars() {
            if c == '"' || c == '\\' {
                self.out.push('\\');
            }
            self.out.push(c);
        }
        self.out.push('"');
    }

    fn err(&self, key: Option<&str>, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            line: Some(self.line),
            key: key.map(str::to_string),
            msg: msg.into(),
        }
    }

    fn newline(&mut self) {
        self.line += 1;
        self.out.push('\n');
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.p += 1;
        }
    }

    fn skip_comment(&mut self) {
        while !matches!(self.peek(), None | Some('\n')) {
            self.p += 1;
        }
    }

    /// After a header or a value: only spaces and a comment may follow on the line.
    fn end_of_line(&mut self, key: Option<&str>) -> Result<(), ConfigError> {
        self.skip_spaces();
        match self.peek() {
            None | Some('\n') => Ok(()),
            Some('#') => {
                self.skip_comment();
                Ok(())
            }
            Some('\r') if self.peek_at(1) == Some('\n') => {
                self.p += 1;
                Ok(())
            }
            Some(c) => Err(self.err(
                key,
                format!(
                    "unexpected {c:?}: expected the end of the line (one key = value per line)"
                ),
            )),
        }
    }

    fn run(&mut self) -> Result<(), ConfigError> {
        loop {
            match self.peek() {
                None => return Ok(()),
                Some('\n') => {
                    self.p += 1;
                    self.newline();
                }
                Some(' ' | '\t' | '\r') => self.p += 1,
                Some('#') => self.skip_comment(),
                Some('[') => self.header()?,
                Some(_) => self.key_value()?,
            }
        }
    }

    fn header(&mut self) -> Result<(), ConfigError> {
        self.p += 1;
        let array = self.peek() == Some('[');
        if array {
            self.p += 1;
        }
        let parts = self.key_path(None)?;
        let name = parts.join(".");
        self.skip_spaces();
        let close = if array { "]]" } else { "]" };
        for _ in 0..close.len() {
            if self.bump() != Some(']') {
                return Err(self.err(
                    None,
                    format!("invalid TOML: table header [{name}] is missing `{close}`"),
                ));
            }
        }
        self.end_of_line(None)?;
        if array {
            self.skipping = true;
            self.warnings.push(Warning {
                kind: WarningKind::UnknownKey,
                file: None,
                line: Some(self.line),
                key: name,
                msg: "array of tables [[...]] is not a config section mtpx knows; ignored".into(),
            });
            return Ok(());
        }
        self.skipping = false;
        if !self.tables.insert(name.clone()) {
            return Err(self.err(Some(&name), "invalid TOML: this table is defined twice"));
        }
        self.out.push('[');
        self.emit_quoted(&name);
        self.out.push(']');
        if parts[0] == "users" {
            self.users.push((parts.clone(), self.line, true));
        }
        self.section = name;
        self.section_parts = parts;
        Ok(())
    }

    /// A dotted key: bare or quoted parts separated by dots (at least one part).
    fn key_path(&mut self, ctx: Option<&str>) -> Result<Vec<String>, ConfigError> {
        let mut parts = Vec::new();
        loop {
            self.skip_spaces();
            let part = match self.peek() {
                Some('"') => self.basic_string(ctx)?,
                Some('\'') => self.literal_string(ctx)?,
                Some(c) if is_bare_key_char(c) => {
                    let mut s = String::new();
                    while let Some(c) = self.peek().filter(|&c| is_bare_key_char(c)) {
                        s.push(c);
                        self.p += 1;
                    }
                    s
                }
                Some(c) => {
                    return Err(self.err(
                        ctx,
                        format!("invalid TOML: unexpected {c:?} where a key was expected"),
                    ));
                }
                None => return Err(self.err(ctx, "invalid TOML: a key is missing")),
            };
            parts.push(part);
            self.skip_spaces();
            if self.peek() == Some('.') {
                self.p += 1;
            } else {
                return Ok(parts);
            }
        }
    }

    fn key_value(&mut self) -> Result<(), ConfigError> {
        let line = self.line;
        let parts = self.key_path(None)?;
        let key = parts.join(".");
        if !self.skipping && self.section_parts.first().unwrap_or(&parts[0]) == "users" {
            let mut all = self.section_parts.clone();
            all.extend(parts);
            self.users.push((all, line, false));
        }
        let full = if self.section.is_empty() {
            key.clone()
        } else {
            format!("{}.{key}", self.section)
        };
        self.skip_spaces();
        if self.bump() != Some('=') {
            return Err(self.err(
                Some(&full),
                "invalid TOML: expected `=` after the key (key = value)",
            ));
        }
        if !self.skipping && self.keys.insert(full.clone(), line).is_some() {
            return Err(self.err(Some(&full), "invalid TOML: this key is set twice"));
        }
        self.emit_quoted(&key);
        self.emit(" = ");
        self.skip_spaces();
        self.value(&full, 0)?;
        self.end_of_line(Some(&full))
    }

    fn skip_array_space(&mut self) {
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\r') => self.p += 1,
                Some('\n') => {
                    self.p += 1;
                    self.newline();
                }
                Some('#') => self.skip_comment(),
                _ => return,
            }
        }
    }

    fn value(&mut self, key: &str, depth: usize) -> Result<(), ConfigError> {
        if depth > 16 {
            return Err(self.err(Some(key), "arrays are nested too deeply"));
        }
        match self.peek() {
            None | Some('\n' | '\r' | '#') => {
                Err(self.err(Some(key), "a value is missing after `=`"))
            }
            Some('"') => {
                let s = self.basic_string(Some(key))?;
                self.emit_quoted(&s);
                Ok(())
            }
            Some('\'') => {
                let s = self.literal_string(Some(key))?;
                self.emit_quoted(&s);
                Ok(())
            }
            Some('[') => {
                self.p += 1;
                self.emit("[");
                loop {
                    self.skip_array_space();
                    match self.peek() {
                        Some(']') => {
                            self.p += 1;
                            self.emit("]");
                            return Ok(());
                        }
                        None => return Err(self.err(Some(key), "the array is missing its `]`")),
                        _ => {}
                    }
                    self.value(key, depth + 1)?;
                    self.skip_array_space();
                    match self.bump() {
                        Some(',') => self.emit(","),
                        Some(']') => {
                            self.emit("]");
                            return Ok(());
                        }
                        None => return Err(self.err(Some(key), "the array is missing its `]`")),
                        Some(c) => {
                            return Err(self.err(
                                Some(key),
                                format!("unexpected {c:?} in an array (expected `,` or `]`)"),
                            ));
                        }
                    }
                }
            }
            Some('{') => Err(self.err(
                Some(key),
                "inline tables ({ ... }) are not supported; use a [section]",
            )),
            Some(_) => {
                let mut tok = String::new();
                while let Some(c) = self.peek().filter(|&c| {
                    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.' | ':')
                }) {
                    tok.push(c);
                    self.p += 1;
                }
                match normalize_bare(&tok) {
                    Some(v) => {
                        self.emit(&v);
                        self.emit(" ");
                        Ok(())
                    }
                    None if tok.is_empty() => {
                        let c = self.peek().unwrap_or(' ');
                        Err(self.err(Some(key), format!("unexpected {c:?} where a value was expected")))
                    }
                    None => Err(self.err(
                        Some(key),
                        format!(
                            "{tok} is not a valid value (text must be quoted: \"{tok}\"; booleans are true/false)"
                        ),
                    )),
                }
            }
        }
    }

    fn basic_string(&mut self, key: Option<&str>) -> Result<String, ConfigError> {
        self.p += 1;
        if self.peek() == Some('"') {
            if self.peek_at(1) == Some('"') {
                return Err(self.err(key, "multi-line strings (\"\"\") are not supported"));
            }
            self.p += 1;
            return Ok(String::new());
        }
        let mut s = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => {
                    return Err(self.err(key, "the string is missing its closing `\"`"));
                }
                Some('"') => return Ok(s),
                Some('\\') => {
                    let c = match self.bump() {
                        Some('b') => '\u{8}',
                        Some('t') => '\t',
                        Some('n') => '\n',
                        Some('f') => '\u{c}',
                        Some('r') => '\r',
                        Some('e') => '\u{1b}',
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some(u @ ('u' | 'U')) => {
                            let n = if u == 'u' { 4 } else { 8 };
                            let mut v = 0u32;
                            for _ in 0..n {
                                let d =
                                    self.bump().and_then(|c| c.to_digit(16)).ok_or_else(|| {
                                        self.err(key, format!("invalid \\{u} escape in a string"))
                                    })?;
                                v = v.wrapping_mul(16).wrapping_add(d);
                            }
                            match char::from_u32(v) {
                                Some(c) if c != '\0' => c,
                                _ => {
                                    return Err(self.err(
                                        key,
                                        format!("\\{u}{v:x} is not an allowed character"),
                                    ));
                                }
                            }
                        }
                        Some(c) => {
                            return Err(self.err(
                                key,
                                format!(
                                    "invalid escape \\{c} in a string (use \\\\ for a backslash)"
                                ),
                            ));
                        }
                        None => return Err(self.err(key, "the string is missing its closing `\"`")),
                    };
                    s.push(c);
                }
                Some(c) if c.is_control() && c != '\t' => {
                    return Err(self.err(key, "control characters are not allowed in strings"));
                }
                Some(c) => s.push(c),
            }
        }
    }

    fn literal_string(&mut self, key: Option<&str>) -> Result<String, ConfigError> {
        self.p += 1;
        if self.peek() == Some('\'') {
            if self.peek_at(1) == Some('\'') {
                return Err(self.err(key, "multi-line strings (''') are not supported"));
            }
            self.p += 1;
            return Ok(String::new());
        }
        let mut s = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => {
                    return Err(self.err(key, "the string is missing its closing `'`"));
                }
                Some('\'') => return Ok(s),
                Some(c) if c.is_control() && c != '\t' => {
                    return Err(self.err(key, "control characters are not allowed in strings"));
                }
                Some(c) => s.push(c),
            }
        }
    }
}

/// A bare TOML value (boolean or number) re-emitted in a form nanoserde reads exactly:
/// numbers always as decimals with a `.`, so they take its float path.
fn normalize_bare(tok: &str) -> Option<String> {
    match tok {
        "true" | "false" => return Some(tok.to_string()),
        "inf" | "+inf" => return Some("inf".into()),
        "-inf" => return Some("-inf".into()),
        "nan" | "+nan" | "-nan" => return Some("nan".into()),
        _ => {}
    }
    let digits_ok = |s: &str, radix: u32| {
        !s.is_empty()
            && !s.starts_with('_')
            && !s.ends_with('_')
            && !s.contains("__")
            && s.chars().all(|c| c == '_' || c.is_digit(radix))
    };
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = tok.strip_prefix(prefix) {
            if !digits_ok(rest, radix) {
                return None;
            }
            let v = u64::from_str_radix(&rest.replace('_', ""), radix).ok()?;
            return Some(format!("{v}.0"));
        }
    }
    let body = tok.strip_prefix(['+', '-']).unwrap_or(tok);
    if !body.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    // Every `_` must sit between two digits.
    let b = body.as_bytes();
    for (i, &ch) in b.iter().enumerate() {
        if ch == b'_'
            && !(i > 0 && b[i - 1].is_ascii_digit() && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            return None;
        }
    }
    if !body
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '_' | '.' | 'e' | 'E' | '+' | '-'))
    {
        return None;
    }
    let v: f64 = tok.replace('_', "").parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    let mut s = format!("{v}");
    if !s.contains('.') {
        s.push_str(".0");
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    //! nanoserde's own behaviour on valid TOML, which the pre-pass exists for. Each test fails
    //! once nanoserde reads its input right (then the workaround may go), and shows that the
    //! pre-pass's normalised output of the same input reads right.
    use nanoserde::{Toml, TomlParser};

    use super::prepass;

    fn raw(text: &str) -> Result<std::collections::HashMap<String, Toml>, String> {
        TomlParser::parse(text)
            .map(|m| m.into_iter().collect())
            .map_err(|e| e.to_string())
    }

    /// What nanoserde reads from the pre-pass's normalised text.
    fn normalised(text: &str) -> std::collections::HashMap<String, Toml> {
        let pre = prepass(text).unwrap_or_else(|e| panic!("pre-pass refused {text:?}: {e}"));
        raw(&pre.out).unwrap_or_else(|e| panic!("nanoserde refused {:?}: {e}", pre.out))
    }

    fn s(v: &str) -> Toml {
        Toml::Str(v.into())
    }

    #[test]
    fn nanoserde_empty_string_swallows_the_next_line() {
        // `""` opens a string that runs on to the next quote: an empty value is an error, or
        // with more quotes later, part of another line.
        let text = "a = \"\"\nb = \"x\"\n";
        assert!(raw(text).is_err(), "{:?}", raw(text));
        assert!(raw("a = \"\"\n").is_err());
        let m = normalised(text);
        assert_eq!((m.get("a"), m.get("b")), (Some(&s("")), Some(&s("x"))));
    }

    #[test]
    fn nanoserde_misscopes_keys_after_an_array_table() {
        // `[s]` after `[[t]]` does not end the array table: `s.y` lands inside `t`'s element.
        let text = "[[t]]\nx = \"1\"\n[s]\ny = \"2\"\n";
        let m = raw(text).unwrap();
        assert!(!m.contains_key("s.y"), "{m:?}");
        let Some(Toml::Array(t)) = m.get("t") else {
            panic!("{m:?}")
        };
        assert_eq!(t[0].get("s.y"), Some(&s("2")), "{m:?}");
        // After a `[section]`, keys of a following `[[t]]` are prefixed with the section.
        let m = raw("[s]\ny = \"2\"\n[[t]]\nx = \"1\"\n").unwrap();
        let Some(Toml::Array(t)) = m.get("t") else {
            panic!("{m:?}")
        };
        assert!(t[0].contains_key("s.x") && !t[0].contains_key("x"), "{m:?}");
    }

    #[test]
    fn nanoserde_rejects_booleans_in_arrays() {
        assert!(raw("a = [true, false]\n").is_err());
    }

    #[test]
    fn nanoserde_reads_literal_strings_and_escapes_wrongly() {
        assert!(raw("a = 'lit'\n").is_err());
        // `\t` loses its backslash and becomes a plain `t`: a wrong value, no error.
        assert_eq!(raw("a = \"x\\ty\"\n").unwrap().get("a"), Some(&s("xty")));
        let m = normalised("a = 'l\\it'\nb = \"x\\ty\"\n");
        assert_eq!(
            (m.get("a"), m.get("b")),
            (Some(&s("l\\it")), Some(&s("x\ty")))
        );
    }

    #[test]
    fn nanoserde_keeps_duplicate_keys() {
        // The second value silently wins; the pre-pass refuses the document.
        assert_eq!(
            raw("a = \"1\"\na = \"2\"\n").unwrap().get("a"),
            Some(&s("2"))
        );
        assert!(prepass("a = \"1\"\na = \"2\"\n").is_err());
    }

    #[test]
    fn nanoserde_rejects_hex_octal_and_binary_integers() {
        for text in ["a = 0x10\n", "a = 0o20\n", "a = 0b10000\n"] {
            assert!(raw(text).is_err(), "{text:?}");
            assert_eq!(
                normalised(text).get("a"),
                Some(&Toml::Num(16.0)),
                "{text:?}"
            );
        }
    }
}
