//! Lexical checks on the paths inside an archive. No file system access.

use std::fmt;

/// Longest single path component, as on Linux file systems.
pub(crate) const MAX_COMPONENT_LEN: usize = 255;

/// Why an archive path is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathProblem {
    Empty,
    Absolute,
    ParentComponent,
    TooLong { len: usize, max: usize },
    ComponentTooLong,
    NotUtf8,
    ControlCharacter,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathProblem::Empty => f.write_str("is empty"),
            PathProblem::Absolute => f.write_str("is absolute"),
            PathProblem::ParentComponent => f.write_str("contains a `..` component"),
            PathProblem::TooLong { len, max } => {
                write!(f, "is {len} bytes long, more than the limit of {max}")
            }
            PathProblem::ComponentTooLong => {
                write!(f, "has a component longer than {MAX_COMPONENT_LEN} bytes")
            }
            PathProblem::NotUtf8 => f.write_str("is not valid UTF-8"),
            PathProblem::ControlCharacter => f.write_str("contains a control character"),
        }
    }
}

/// A path for error messages: lossy UTF-8, control characters escaped,
/// bounded in length.
pub(crate) fn display_path(bytes: &[u8]) -> String {
    const MAX_SHOWN: usize = 300;
    let text = String::from_utf8_lossy(bytes);
    let mut shown: String = text
        .chars()
        .take(MAX_SHOWN)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > MAX_SHOWN {
        shown.push_str("...");
    }
    shown
}

/// Splits an archive path into its components, dropping empty and `.`
/// components. `./a//b/` gives `["a", "b"]`; `./` gives `[]`.
///
/// Refuses absolute paths, any `..`, control characters, non-UTF-8 and
/// over-long paths or components.
pub(crate) fn normalize(bytes: &[u8], max_len: usize) -> Result<Vec<String>, PathProblem> {
    if bytes.is_empty() {
        return Err(PathProblem::Empty);
    }
    if bytes.len() > max_len {
        return Err(PathProblem::TooLong {
            len: bytes.len(),
            max: max_len,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| PathProblem::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(PathProblem::ControlCharacter);
    }
    if text.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    let mut components = Vec::new();
    for component in text.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(PathProblem::ParentComponent),
            name if name.len() > MAX_COMPONENT_LEN => return Err(PathProblem::ComponentTooLong),
            name => components.push(name.to_owned()),
        }
    }
    Ok(components)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn normalizes_harmless_forms() {
        assert_eq!(normalize(b"./a//b/", 100), Ok(comps(&["a", "b"])));
        assert_eq!(normalize(b"./", 100), Ok(vec![]));
        assert_eq!(normalize(b"a/./b", 100), Ok(comps(&["a", "b"])));
    }

    #[test]
    fn refuses_escapes_and_junk() {
        assert_eq!(normalize(b"/etc/passwd", 100), Err(PathProblem::Absolute));
        assert_eq!(normalize(b"../x", 100), Err(PathProblem::ParentComponent));
        assert_eq!(
            normalize(b"a/../../x", 100),
            Err(PathProblem::ParentComponent)
        );
        assert_eq!(normalize(b"a/..", 100), Err(PathProblem::ParentComponent));
        assert_eq!(normalize(b"", 100), Err(PathProblem::Empty));
        assert_eq!(normalize(b"a\nb", 100), Err(PathProblem::ControlCharacter));
        assert_eq!(normalize(b"a\xffb", 100), Err(PathProblem::NotUtf8));
        assert_eq!(
            normalize(b"abcdef", 5),
            Err(PathProblem::TooLong { len: 6, max: 5 })
        );
        let long = vec![b'x'; 256];
        assert_eq!(normalize(&long, 1000), Err(PathProblem::ComponentTooLong));
    }
}
