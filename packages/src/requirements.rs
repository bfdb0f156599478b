//! Whether a host may install a package, and if not, why.

use std::collections::BTreeMap;
use std::fmt;

use crate::manifest::{AllowedValues, Requirements};
use crate::units::format_bytes;
use crate::version::Version;

/// What a server knows about its host when it decides eligibility.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Host attributes such as `os`, `arch`, `role`.
    pub attributes: BTreeMap<String, String>,
    /// Free space, in bytes, where packages are staged and installed.
    pub free_disk_bytes: u64,
    /// Installed packages and their versions.
    pub installed: BTreeMap<String, Version>,
}

/// One requirement the host does not meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unmet {
    /// The attribute is missing on the host (`have` is `None`) or has a
    /// value that is not allowed.
    Attribute {
        /// The attribute.
        key: String,
        /// The host's value, if it has one.
        have: Option<String>,
        /// The values the package accepts.
        wanted: AllowedValues,
    },
    /// Not enough free disk.
    FreeDisk {
        /// Free bytes on the host.
        have: u64,
        /// Bytes the package needs.
        wanted: u64,
    },
    /// A required package is missing (`installed` is `None`) or older than
    /// the minimum.
    Package {
        /// The required package.
        name: String,
        /// The lowest acceptable version, if any.
        min_version: Option<Version>,
        /// The installed version, if any.
        installed: Option<Version>,
    },
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmet::Attribute {
                key,
                have: Some(have),
                wanted,
            } => write!(f, "{key}={have}, wanted {wanted}"),
            Unmet::Attribute {
                key,
                have: None,
                wanted,
            } => write!(f, "{key} is not set, wanted {wanted}"),
            Unmet::FreeDisk { have, wanted } => {
                let (mut have_text, mut wanted_text) = (format_bytes(*have), format_bytes(*wanted));
                if have_text == wanted_text {
                    // Rounding hid the difference; be exact.
                    (have_text, wanted_text) = (format!("{have} bytes"), format!("{wanted} bytes"));
                }
                write!(f, "free disk {have_text}, wanted {wanted_text}")
            }
            Unmet::Package {
                name,
                min_version,
                installed,
            } => {
                match min_version {
                    Some(min) => write!(f, "needs package {name} >= {min}, ")?,
                    None => write!(f, "needs package {name}, ")?,
                }
                match installed {
                    Some(version) => write!(f, "installed {version}"),
                    None => f.write_str("not installed"),
                }
            }
        }
    }
}

/// The host does not meet a package's requirements. Lists every unmet
/// requirement, in the order: attributes (by key), free disk, packages (in
/// manifest order).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct NotEligible {
    /// Every requirement the host misses; never empty.
    pub unmet: Vec<Unmet>,
}

impl fmt::Display for NotEligible {
    /// The reasons joined with `; `, e.g.
    /// `arch=aarch64, wanted x86_64; free disk 120 MiB, wanted 500 MiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, unmet) in self.unmet.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{unmet}")?;
        }
        Ok(())
    }
}

impl Requirements {
    /// Checks every requirement against `host` and lists all that are not
    /// met.
    pub fn check(&self, host: &HostFacts) -> Result<(), NotEligible> {
        let mut unmet = Vec::new();
        for (key, wanted) in &self.attributes {
            let have = host.attributes.get(key);
            if !have.is_some_and(|value| wanted.allows(value)) {
                unmet.push(Unmet::Attribute {
                    key: key.clone(),
                    have: have.cloned(),
                    wanted: wanted.clone(),
                });
            }
        }
        if host.free_disk_bytes < self.min_free_disk {
            unmet.push(Unmet::FreeDisk {
                have: host.free_disk_bytes,
                wanted: self.min_free_disk,
            });
        }
        for required in &self.packages {
            let installed = host.installed.get(&required.name);
            let ok = match (installed, &required.min_version) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(have), Some(min)) => have >= min,
            };
            if !ok {
                unmet.push(Unmet::Package {
                    name: required.name.clone(),
                    min_version: required.min_version.clone(),
                    installed: installed.cloned(),
                });
            }
        }
        if unmet.is_empty() {
            Ok(())
        } else {
            Err(NotEligible { unmet })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn requirements() -> Requirements {
        Manifest::from_yaml(
            "name: webapp\nversion: 1\ninstall: i.sh\nrequirements:\n  attributes:\n    os: linux\n    \
             arch: x86_64\n    role: [web, api]\n  min_free_disk: 500MiB\n  packages:\n    \
             - {name: libfoo, min_version: '1.2'}\n    - {name: base}\n",
        )
        .unwrap()
        .requirements
    }

    fn host(arch: &str, role: Option<&str>, free: u64, libfoo: Option<&str>) -> HostFacts {
        let mut facts = HostFacts::default();
        facts.attributes.insert("os".into(), "linux".into());
        facts.attributes.insert("arch".into(), arch.into());
        if let Some(role) = role {
            facts.attributes.insert("role".into(), role.into());
        }
        facts.free_disk_bytes = free;
        if let Some(v) = libfoo {
            facts.installed.insert("libfoo".into(), v.parse().unwrap());
        }
        facts
            .installed
            .insert("base".into(), "0.1".parse().unwrap());
        facts
    }

    #[test]
    fn eligible_host_passes() {
        requirements()
            .check(&host("x86_64", Some("api"), 600 << 20, Some("1.2.0")))
            .unwrap();
        requirements()
            .check(&host("x86_64", Some("web"), 500 << 20, Some("1.10")))
            .unwrap();
    }

    #[test]
    fn every_unmet_requirement_is_listed_in_words() {
        let err = requirements()
            .check(&host("aarch64", None, 120 << 20, Some("1.0")))
            .unwrap_err();
        assert_eq!(err.unmet.len(), 4);
        assert_eq!(
            err.to_string(),
            "arch=aarch64, wanted x86_64; role is not set, wanted one of web, api; \
             free disk 120 MiB, wanted 500 MiB; needs package libfoo >= 1.2, installed 1.0"
        );
    }

    #[test]
    fn wrong_list_value_and_missing_package() {
        let err = requirements()
            .check(&host("x86_64", Some("db"), 1 << 40, None))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "role=db, wanted one of web, api; needs package libfoo >= 1.2, not installed"
        );
        let mut facts = host("x86_64", Some("web"), 1 << 40, Some("2"));
        facts.installed.remove("base");
        assert_eq!(
            requirements().check(&facts).unwrap_err().to_string(),
            "needs package base, not installed"
        );
    }

    #[test]
    fn disk_shortfall_hidden_by_rounding_is_shown_exactly() {
        let err = requirements()
            .check(&host("x86_64", Some("web"), (500 << 20) - 1, Some("2")))
            .unwrap_err();
        assert_eq!(err.to_string(), "free disk 499.9 MiB, wanted 500 MiB");
        let unmet = Unmet::FreeDisk {
            have: (500 << 20) + 1,
            wanted: (500 << 20) + 2,
        };
        assert_eq!(
            unmet.to_string(),
            "free disk 524288001 bytes, wanted 524288002 bytes"
        );
    }

    #[test]
    fn no_requirements_means_everyone() {
        Requirements::default()
            .check(&HostFacts::default())
            .unwrap();
    }
}
