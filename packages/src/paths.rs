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

/// Why a symlink's target is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SymlinkProblem {
    /// The target is an absolute path.
    Absolute,
    /// The target's leading `..` components climb above the staging root.
    OutsideRoot,
    /// The target has `..` after a name (`a/../b`). Refused even when it
    /// looks harmless: if the name is itself a symlink, the kernel climbs
    /// from wherever that symlink points, which no lexical check can see.
    ParentAfterName,
    /// The target is empty, too long, not UTF-8 or has control characters.
    Invalid(String),
}

impl fmt::Display for SymlinkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SymlinkProblem::Absolute => f.write_str("the target is absolute"),
            SymlinkProblem::OutsideRoot => {
                f.write_str("the target resolves outside the staging root")
            }
            SymlinkProblem::ParentAfterName => f.write_str(
                "the target has `..` after a name; only leading `..` components are allowed",
            ),
            SymlinkProblem::Invalid(reason) => write!(f, "the target {reason}"),
        }
    }
}

/// Checks a symlink target, relative to the directory holding the link
/// (`link_dir`, components from the staging root).
///
/// Accepted targets are relative, may start with `..` components as long
/// as those stay inside the root, and have no `..` after a name. The last
/// rule is what makes a lexical check sound: `..` after a name that is
/// itself a symlink would climb from wherever that symlink points, not from
/// where the text says. Leading `..`s climb from the link's own directory,
/// which is a real directory inside the root.
pub(crate) fn check_symlink_target(
    link_dir: &[String],
    target: &[u8],
    max_len: usize,
) -> Result<(), SymlinkProblem> {
    if target.is_empty() {
        return Err(SymlinkProblem::Invalid(PathProblem::Empty.to_string()));
    }
    if target.len() > max_len {
        return Err(SymlinkProblem::Invalid(
            PathProblem::TooLong {
                len: target.len(),
                max: max_len,
            }
            .to_string(),
        ));
    }
    let text = std::str::from_utf8(target)
        .map_err(|_| SymlinkProblem::Invalid(PathProblem::NotUtf8.to_string()))?;
    if text.chars().any(char::is_control) {
        return Err(SymlinkProblem::Invalid(
            PathProblem::ControlCharacter.to_string(),
        ));
    }
    if text.starts_with('/') {
        return Err(SymlinkProblem::Absolute);
    }
    let mut depth = link_dir.len();
    let mut seen_name = false;
    for component in text.split('/') {
        match component {
            "" | "." => {}
            ".." if seen_name => return Err(SymlinkProblem::ParentAfterName),
            ".." => depth = depth.checked_sub(1).ok_or(SymlinkProblem::OutsideRoot)?,
            name if name.len() > MAX_COMPONENT_LEN => {
                return Err(SymlinkProblem::Invalid(
                    PathProblem::ComponentTooLong.to_string(),
                ));
            }
            _ => seen_name = true,
        }
    }
    Ok(())
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

    #[test]
    fn symlink_targets() {
        let dir = comps(&["a", "b"]);
        assert_eq!(check_symlink_target(&dir, b"c", 100), Ok(()));
        assert_eq!(check_symlink_target(&dir, b"../c", 100), Ok(()));
        assert_eq!(check_symlink_target(&dir, b"../../c/d", 100), Ok(()));
        assert_eq!(check_symlink_target(&dir, b"../..", 100), Ok(()));
        assert_eq!(
            check_symlink_target(&dir, b"../../../etc", 100),
            Err(SymlinkProblem::OutsideRoot)
        );
        assert_eq!(
            check_symlink_target(&dir, b"/etc/passwd", 100),
            Err(SymlinkProblem::Absolute)
        );
        assert_eq!(
            check_symlink_target(&dir, b"c/../d", 100),
            Err(SymlinkProblem::ParentAfterName)
        );
        assert_eq!(
            check_symlink_target(&[], b"..", 100),
            Err(SymlinkProblem::OutsideRoot)
        );
        assert_eq!(
            check_symlink_target(&[], b"", 100),
            Err(SymlinkProblem::Invalid(PathProblem::Empty.to_string()))
        );
    }
}
