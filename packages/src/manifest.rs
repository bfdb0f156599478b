//! The package manifest, `flotilla.yaml`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::paths;
use crate::units::{format_duration, parse_bytes, parse_duration};
use crate::version::Version;

/// The manifest's file name inside a package; always the first entry.
pub const MANIFEST_FILE: &str = "flotilla.yaml";
/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Install timeout when the manifest does not give one.
pub const DEFAULT_INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest install timeout a manifest may ask for.
pub const MAX_INSTALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

const MAX_NAME_LEN: usize = 64;
const MAX_DESCRIPTION_LEN: usize = 4096;
const MAX_ATTRIBUTES: usize = 64;
const MAX_ATTRIBUTE_KEY_LEN: usize = 64;
const MAX_ATTRIBUTE_VALUE_LEN: usize = 128;
const MAX_ALLOWED_VALUES: usize = 64;
const MAX_REQUIRED_PACKAGES: usize = 64;
const MAX_SCRIPT_PATH_LEN: usize = 1024;

const NAME_RULE: &str =
    "1 to 64 characters from lowercase letters, digits, `.`, `_`, `+` and `-`, \
                         starting with a letter or digit";
const KEY_RULE: &str =
    "1 to 64 characters from lowercase letters, digits, `.`, `_` and `-`, starting with a letter";
const VALUE_RULE: &str = "1 to 128 printable ASCII characters without spaces";

/// A package manifest: what the package is, where it may go and how it
/// installs.
///
/// ```yaml
/// name: webapp
/// version: 1.4.0
/// description: The web front end.
/// requirements:
///   attributes:
///     os: linux
///     arch: x86_64
///     role: [web, api]
///   min_free_disk: 500MiB
///   packages:
///     - name: libfoo
///       min_version: "1.2"
/// install: scripts/install.sh
/// uninstall: scripts/uninstall.sh
/// install_timeout: 60s
/// ```
///
/// Unknown fields are errors, so a misspelt requirement is never silently
/// ignored. Build one with [`Manifest::from_yaml`] or
/// [`Manifest::from_file`], which also [`validate`](Manifest::validate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The package name; see [`Manifest::validate`] for the allowed form.
    pub name: String,
    /// The package version.
    pub version: Version,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What a host needs before it may install the package.
    #[serde(default)]
    pub requirements: Requirements,
    /// Path of the install script inside the package, run with `/bin/sh`
    /// from the unpacked package's root.
    pub install: String,
    /// Path of the uninstall script inside the package, if the package has
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninstall: Option<String>,
    /// How long the install script may run; `60s`, `5m`, `1h`, or a number
    /// of seconds. Defaults to [`DEFAULT_INSTALL_TIMEOUT`].
    #[serde(
        default = "default_install_timeout",
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub install_timeout: Duration,
}

/// What a host needs before it may install a package (the design's Rp).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Host attributes that must match: each key must be set on the host to
    /// one of the allowed values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, AllowedValues>,
    /// Free disk space the host must have, in bytes. The manifest may write
    /// a number of bytes or a size such as `500MiB`.
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "deserialize_bytes"
    )]
    pub min_free_disk: u64,
    /// Packages that must already be installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<PackageRequirement>,
}

/// A package that must already be installed, optionally at least at some
/// version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRequirement {
    /// The package's name.
    pub name: String,
    /// The lowest acceptable installed version; any version if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Version>,
}

/// The values an attribute may have: written as one value (`os: linux`) or
/// a list (`role: [web, api]`). Never empty once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedValues(pub Vec<String>);

impl AllowedValues {
    /// Whether `value` is one of the allowed values.
    pub fn allows(&self, value: &str) -> bool {
        self.0.iter().any(|v| v == value)
    }
}

impl fmt::Display for AllowedValues {
    /// `x86_64`, or `one of web, api`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => f.write_str(one),
            many => write!(f, "one of {}", many.join(", ")),
        }
    }
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML, has a field of the wrong type, misses a
    /// required field or has one this version does not know. The message
    /// gives the line and column.
    #[error("the manifest is not valid: {0}")]
    Yaml(#[source] serde_yaml::Error),
    /// A field parsed but its value breaks a rule.
    #[error("manifest field `{field}` is `{value}`: expected {expected}")]
    Invalid {
        /// The field, as a path: `requirements.packages[1].name`.
        field: String,
        /// The offending value, shortened and escaped for printing.
        value: String,
        /// What the field must look like.
        expected: String,
    },
    /// The manifest is larger than [`MAX_MANIFEST_BYTES`].
    #[error("the manifest is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The manifest file could not be read.
    #[error("could not read manifest {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn invalid(field: impl Into<String>, value: &str, expected: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        field: field.into(),
        value: paths::display_path(value.as_bytes()),
        expected: expected.into(),
    }
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn from_yaml(text: &str) -> Result<Manifest, ManifestError> {
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                max: MAX_MANIFEST_BYTES,
            });
        }
        let manifest: Manifest = serde_yaml::from_str(text).map_err(ManifestError::Yaml)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Reads, parses and validates a manifest file of at most
    /// [`MAX_MANIFEST_BYTES`].
    pub fn from_file(path: &Path) -> Result<Manifest, ManifestError> {
        let read_error = |source| ManifestError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        Self::from_reader(file).map_err(|e| match e {
            ManifestError::Read { source, .. } => read_error(source),
            other => other,
        })
    }

    /// Reads at most [`MAX_MANIFEST_BYTES`] from `reader`, then parses and
    /// validates them.
    pub(crate) fn from_reader<R: Read>(reader: R) -> Result<Manifest, ManifestError> {
        let mut bytes = Vec::new();
        reader
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ManifestError::Read {
                path: PathBuf::from(MANIFEST_FILE),
                source,
            })?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                max: MAX_MANIFEST_BYTES,
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| invalid("(file)", "", "UTF-8 text"))?;
        Self::from_yaml(&text)
    }

    /// The manifest as YAML, in the form [`Manifest::from_yaml`] reads.
    pub fn to_yaml(&self) -> Result<String, ManifestError> {
        serde_yaml::to_string(self).map_err(ManifestError::Yaml)
    }

    /// Checks every rule the types cannot express:
    ///
    /// - `name` and required package names: 1 to 64 characters from
    ///   lowercase letters, digits, `.`, `_`, `+`, `-`, starting with a letter
    ///   or digit;
    /// - `description`: at most 4096 bytes, no control characters other
    ///   than newline and tab;
    /// - attribute keys: 1 to 64 characters from lowercase letters, digits,
    ///   `.`, `_`, `-`, starting with a letter; at most 64 of them;
    /// - attribute values: 1 to 128 printable ASCII characters, no spaces;
    ///   1 to 64 allowed values per attribute;
    /// - at most 64 required packages, each named once;
    /// - `install` and `uninstall`: relative paths inside the package, no
    ///   `..`, not the manifest itself;
    /// - `install_timeout`: more than zero, at most a day.
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_name("name", &self.name)?;
        if self.description.len() > MAX_DESCRIPTION_LEN
            || self
                .description
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(invalid(
                "description",
                &self.description,
                "at most 4096 bytes without control characters",
            ));
        }
        self.requirements.validate()?;
        check_script_path("install", &self.install)?;
        if let Some(uninstall) = &self.uninstall {
            check_script_path("uninstall", uninstall)?;
        }
        if self.install_timeout.is_zero() || self.install_timeout > MAX_INSTALL_TIMEOUT {
            return Err(invalid(
                "install_timeout",
                &format_duration(self.install_timeout),
                "more than zero and at most 24h",
            ));
        }
        Ok(())
    }

    /// Where the install script is once the package is unpacked at `root`.
    pub fn install_script(&self, root: &Path) -> PathBuf {
        root.join(&self.install)
    }

    /// Where the uninstall script is once the package is unpacked at
    /// `root`, if the package has one.
    pub fn uninstall_script(&self, root: &Path) -> Option<PathBuf> {
        self.uninstall.as_ref().map(|u| root.join(u))
    }
}

impl Requirements {
    fn validate(&self) -> Result<(), ManifestError> {
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(invalid(
                "requirements.attributes",
                &format!("{} attributes", self.attributes.len()),
                "at most 64 attributes",
            ));
        }
        for (key, values) in &self.attributes {
            let field = format!(
                "requirements.attributes.{}",
                paths::display_path(key.as_bytes())
            );
            let key_ok = !key.is_empty()
                && key.len() <= MAX_ATTRIBUTE_KEY_LEN
                && key.starts_with(|c: char| c.is_ascii_lowercase())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            if !key_ok {
                return Err(invalid(format!("{field} (the key)"), key, KEY_RULE));
            }
            if values.0.is_empty() || values.0.len() > MAX_ALLOWED_VALUES {
                return Err(invalid(
                    &field,
                    &values.0.join(", "),
                    "1 to 64 allowed values",
                ));
            }
            for value in &values.0 {
                let value_ok = !value.is_empty()
                    && value.len() <= MAX_ATTRIBUTE_VALUE_LEN
                    && value.bytes().all(|b| b.is_ascii_graphic());
                if !value_ok {
                    return Err(invalid(&field, value, VALUE_RULE));
                }
            }
        }
        if self.packages.len() > MAX_REQUIRED_PACKAGES {
            return Err(invalid(
                "requirements.packages",
                &format!("{} packages", self.packages.len()),
                "at most 64 packages",
            ));
        }
        for (i, package) in self.packages.iter().enumerate() {
            let field = format!("requirements.packages[{i}].name");
            check_name(&field, &package.name)?;
            if self.packages[..i].iter().any(|p| p.name == package.name) {
                return Err(invalid(field, &package.name, "each package named once"));
            }
        }
        Ok(())
    }
}

/// Whether `name` is a valid package name (see [`Manifest::validate`]).
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._+-".contains(&b))
}

fn check_name(field: &str, name: &str) -> Result<(), ManifestError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(field, name, NAME_RULE))
    }
}

fn check_script_path(field: &str, path: &str) -> Result<(), ManifestError> {
    const RULE: &str = "a relative path to a file inside the package, without `..`";
    match paths::normalize(path.as_bytes(), MAX_SCRIPT_PATH_LEN) {
        Ok(components) if components.is_empty() => Err(invalid(field, path, RULE)),
        Ok(components) if components == [MANIFEST_FILE] => Err(invalid(
            field,
            path,
            format!("{RULE}, other than {MANIFEST_FILE}"),
        )),
        Ok(_) => Ok(()),
        Err(problem) => Err(invalid(field, path, format!("{RULE} (this one {problem})"))),
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_install_timeout() -> Duration {
    DEFAULT_INSTALL_TIMEOUT
}

fn serialize_duration<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*d))
}

fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn deserialize_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct BytesVisitor;

    impl serde::de::Visitor<'_> for BytesVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number of bytes or a size such as 500MiB")
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            parse_bytes(v).map_err(E::custom)
        }
    }

    deserializer.deserialize_any(BytesVisitor)
}

impl Serialize for AllowedValues {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for AllowedValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValuesVisitor;

        const NUMBER_HINT: &str =
            "this value was read as a decimal number, which may not be what was \
                                   written (1.10 reads as 1.1); write it in quotes, e.g. \"22.04\"";

        impl<'de> serde::de::Visitor<'de> for ValuesVisitor {
            type Value = AllowedValues;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of allowed values")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AllowedValues, E> {
                Ok(AllowedValues(vec![v.to_owned()]))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<AllowedValues, E> {
                Ok(AllowedValues(vec![v.to_string()]))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<AllowedValues, E> {
                Ok(AllowedValues(vec![v.to_string()]))
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<AllowedValues, E> {
                Ok(AllowedValues(vec![v.to_string()]))
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<AllowedValues, E> {
                Err(E::custom(NUMBER_HINT))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AllowedValues, A::Error> {
                let mut values = Vec::new();
                // `String` asks YAML for the scalar as written, so list items
                // such as 1.10 keep their text.
                while let Some(value) = seq.next_element::<String>()? {
                    if values.len() >= MAX_ALLOWED_VALUES {
                        return Err(serde::de::Error::custom("more than 64 allowed values"));
                    }
                    values.push(value);
                }
                Ok(AllowedValues(values))
            }
        }

        deserializer.deserialize_any(ValuesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "\
name: webapp
version: 1.4.0
description: The web front end.
requirements:
  attributes:
    os: linux
    arch: x86_64
    role: [web, api]
    distro_version: [\"22.04\", 24.04.1]
  min_free_disk: 500MiB
  packages:
    - name: libfoo
      min_version: \"1.2\"
    - name: base
install: scripts/install.sh
uninstall: scripts/uninstall.sh
install_timeout: 60s
";

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::from_yaml(FULL).unwrap();
        assert_eq!(m.name, "webapp");
        assert_eq!(m.version.to_string(), "1.4.0");
        assert_eq!(m.requirements.min_free_disk, 500 << 20);
        assert_eq!(
            m.requirements.attributes["os"],
            AllowedValues(vec!["linux".into()])
        );
        assert_eq!(
            m.requirements.attributes["role"],
            AllowedValues(vec!["web".into(), "api".into()])
        );
        assert_eq!(
            m.requirements.attributes["distro_version"],
            AllowedValues(vec!["22.04".into(), "24.04.1".into()])
        );
        assert_eq!(
            m.requirements.packages[0]
                .min_version
                .as_ref()
                .unwrap()
                .to_string(),
            "1.2"
        );
        assert_eq!(m.requirements.packages[1].min_version, None);
        assert_eq!(m.install_timeout, Duration::from_secs(60));
        assert_eq!(
            m.install_script(Path::new("/s")),
            PathBuf::from("/s/scripts/install.sh")
        );
    }

    #[test]
    fn round_trips_through_yaml() {
        let m = Manifest::from_yaml(FULL).unwrap();
        let again = Manifest::from_yaml(&m.to_yaml().unwrap()).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = Manifest::from_yaml("name: a\nversion: 1\ninstall: i.sh\n").unwrap();
        assert_eq!(m.install_timeout, DEFAULT_INSTALL_TIMEOUT);
        assert_eq!(m.requirements, Requirements::default());
        assert_eq!(m.uninstall, None);
        let m = Manifest::from_yaml(
            "name: a\nversion: 1\ninstall: i.sh\nrequirements: {min_free_disk: 4096}\n",
        )
        .unwrap();
        assert_eq!(m.requirements.min_free_disk, 4096);
    }

    fn error_of(yaml: &str) -> String {
        Manifest::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = error_of("name: a\nversion: 1\ninstall: i.sh\ninstal_timeout: 5s\n");
        assert!(e.contains("unknown field `instal_timeout`"), "{e}");
        let e = error_of("name: a\nversion: 1\ninstall: i.sh\nrequirements: {min_disk: 5}\n");
        assert!(e.contains("unknown field `min_disk`"), "{e}");
    }

    #[test]
    fn errors_name_the_field_and_the_rule() {
        let e = error_of("name: Web App\nversion: 1\ninstall: i.sh\n");
        assert!(
            e.contains("field `name` is `Web App`") && e.contains("lowercase letters"),
            "{e}"
        );
        let e = error_of("name: a\nversion: 1\ninstall: ../i.sh\n");
        assert!(e.contains("field `install`") && e.contains("`..`"), "{e}");
        let e = error_of("name: a\nversion: 1\ninstall: /bin/sh\n");
        assert!(
            e.contains("field `install`") && e.contains("is absolute"),
            "{e}"
        );
        let e = error_of("name: a\nversion: 1\ninstall: flotilla.yaml\n");
        assert!(e.contains("other than flotilla.yaml"), "{e}");
        let e =
            error_of("name: a\nversion: 1\ninstall: i.sh\nrequirements: {attributes: {Arch: x}}\n");
        assert!(e.contains("requirements.attributes.Arch (the key)"), "{e}");
        let e = error_of(
            "name: a\nversion: 1\ninstall: i.sh\nrequirements: {attributes: {role: []}}\n",
        );
        assert!(e.contains("1 to 64 allowed values"), "{e}");
        let e = error_of(
            "name: a\nversion: 1\ninstall: i.sh\nrequirements: {attributes: {os: 'a b'}}\n",
        );
        assert!(e.contains("without spaces"), "{e}");
        let e = error_of(
            "name: a\nversion: 1\ninstall: i.sh\nrequirements: {attributes: {ver: 22.04}}\n",
        );
        assert!(e.contains("write it in quotes"), "{e}");
        let e = error_of("name: a\nversion: 1\ninstall: i.sh\nrequirements: {packages: [{name: x}, {name: x}]}\n");
        assert!(
            e.contains("requirements.packages[1].name") && e.contains("once"),
            "{e}"
        );
        let e = error_of("name: a\nversion: one\ninstall: i.sh\n");
        assert!(e.contains("invalid version `one`"), "{e}");
        let e = error_of("name: a\nversion: 1\ninstall: i.sh\ninstall_timeout: 0s\n");
        assert!(e.contains("install_timeout"), "{e}");
        let e = error_of("name: a\nversion: 1\ninstall: i.sh\ninstall_timeout: 2d\n");
        assert!(e.contains("unknown unit `d`"), "{e}");
        let e =
            error_of("name: a\nversion: 1\ninstall: i.sh\nrequirements: {min_free_disk: 5 lots}\n");
        assert!(e.contains("unknown unit `lots`"), "{e}");
        let e = error_of(&format!(
            "name: {}\nversion: 1\ninstall: i.sh\n",
            "a".repeat(65)
        ));
        assert!(e.contains("1 to 64 characters"), "{e}");
        let e = error_of("version: 1\ninstall: i.sh\n");
        assert!(e.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn oversized_manifest_is_refused() {
        let big = format!(
            "name: a\nversion: 1\ninstall: i.sh\ndescription: {}\n",
            "x".repeat(70_000)
        );
        assert!(matches!(
            Manifest::from_yaml(&big),
            Err(ManifestError::TooLarge { .. })
        ));
    }
}
