//! Rendering a map to a local file: one line per entry, from a template
//! such as `{value} {key}` (a hosts file), written atomically (temporary
//! file, fsync, rename, fsync of the directory) after every applied update.
//!
//! Which map goes to which file comes from the daemon's configuration
//! ([`RenderSpec`]), never from the network: a peer can change a map's
//! content, not where it is written.

use crate::table::MapState;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Longest template, in bytes.
pub const MAX_TEMPLATE: usize = 1024;

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Key,
    Value,
    Version,
}

/// A line template: literal text with the placeholders `{key}`, `{value}`
/// and `{version}` (the map version at which the key was last written);
/// `{{` and `}}` stand for braces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// A template could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Longer than [`MAX_TEMPLATE`].
    #[error("template of {0} bytes, over the limit of {MAX_TEMPLATE}")]
    TooLong(usize),
    /// A placeholder other than `{key}`, `{value}` or `{version}`.
    #[error("unknown placeholder {{{0}}} in the template: use {{key}}, {{value}} or {{version}}")]
    Unknown(String),
    /// A `{` without its `}`, or a lone `}`.
    #[error(
        "unbalanced brace at byte {0} of the template (write {{{{ or }}}} for a literal brace)"
    )]
    Brace(usize),
    /// A newline in the template: each entry is one line.
    #[error("the template contains a line break: each entry renders as one line")]
    LineBreak,
}

impl Template {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.len() > MAX_TEMPLATE {
            return Err(TemplateError::TooLong(text.len()));
        }
        if text.contains(['\n', '\r']) {
            return Err(TemplateError::LineBreak);
        }
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let end = rest.find('}').ok_or(TemplateError::Brace(at))?;
                    let name = &rest[..end];
                    let piece = match name {
                        "key" => Piece::Key,
                        "value" => Piece::Value,
                        "version" => Piece::Version,
                        other if other.contains('{') => return Err(TemplateError::Brace(at)),
                        other => return Err(TemplateError::Unknown(other.to_owned())),
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(piece);
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                '}' => return Err(TemplateError::Brace(at)),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(Template { pieces })
    }

    /// Renders every entry of `map`, in key order, one line each. Control
    /// characters in values (which keys cannot contain) are written as
    /// `\n`, `\t`, `\r` or `\u{..}` so that an entry stays on its line.
    pub fn render(&self, map: &MapState) -> Vec<u8> {
        let mut out = String::with_capacity(map.bytes() + map.len() * 8);
        for (key, e) in map.entries() {
            for p in &self.pieces {
                match p {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Key => out.push_str(key),
                    Piece::Value => escape_into(&e.value, &mut out),
                    Piece::Version => out.push_str(&e.version.to_string()),
                }
            }
            out.push('\n');
        }
        out.into_bytes()
    }
}

fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
}

/// A map to render to a file: from the daemon's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderSpec {
    /// The map.
    pub map: String,
    /// The file to write (replaced atomically).
    pub path: PathBuf,
    /// The line template, e.g. `{value} {key}`.
    pub template: String,
}

/// A rendered map, for the driver to write with
/// [`crate::write_file_atomic`] (or [`Rendered::write`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The map.
    pub map: String,
    /// The map's version rendered.
    pub version: u64,
    /// Where to write it.
    pub path: PathBuf,
    /// The file's content.
    pub contents: Vec<u8>,
}

impl Rendered {
    /// Writes the file atomically and durably.
    pub fn write(&self) -> std::io::Result<()> {
        crate::storage::write_file_atomic(&self.path, &self.contents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::{set, step};
    use crate::table::Tables;
    use crate::update::Op;

    #[test]
    fn templates() {
        let mut t = Tables::new();
        step(&mut t, "hosts", 1, Op::CreateMap);
        step(&mut t, "hosts", 2, set("web1", "10.0.0.1"));
        step(&mut t, "hosts", 3, set("db1", "10.0.0.2\nevil"));
        let tpl = Template::parse("{value} {key}").unwrap();
        let out = String::from_utf8(tpl.render(t.map("hosts").unwrap())).unwrap();
        assert_eq!(out, "10.0.0.2\\nevil db1\n10.0.0.1 web1\n");
        let tpl = Template::parse("{{{key}}}={value}@{version}").unwrap();
        let out = String::from_utf8(tpl.render(t.map("hosts").unwrap())).unwrap();
        assert!(out.ends_with("{web1}=10.0.0.1@2\n"), "{out}");
        assert_eq!(
            Template::parse("{nope}").unwrap_err().to_string(),
            "unknown placeholder {nope} in the template: use {key}, {value} or {version}"
        );
        assert_eq!(Template::parse("{key"), Err(TemplateError::Brace(0)));
        assert_eq!(Template::parse("a}b"), Err(TemplateError::Brace(1)));
        assert_eq!(Template::parse("a\nb"), Err(TemplateError::LineBreak));
    }

    #[test]
    fn rendered_files_are_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let r = Rendered {
            map: "hosts".into(),
            version: 1,
            path: dir.path().join("hosts"),
            contents: b"a\n".to_vec(),
        };
        r.write().unwrap();
        let r2 = Rendered {
            contents: b"b\n".to_vec(),
            ..r.clone()
        };
        r2.write().unwrap();
        assert_eq!(std::fs::read(&r.path).unwrap(), b"b\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
