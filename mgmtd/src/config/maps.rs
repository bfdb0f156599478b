//! The `maps:` and `testing:` sections of the configuration.
//!
//! ```yaml
//! maps:
//!   # The fleet's hosts: names (their node ids derived as for `node_id`)
//!   # or node ids. The same list on every host: the replicated maps accept
//!   # updates only in a component holding a majority of it.
//!   hosts: [web-1, web-2, db-1, 17]
//!   # Maps written to local files, atomically, on every applied update.
//!   render:
//!     - map: hosts
//!       file: /etc/flotilla/hosts
//!       template: "{value} {key}"
//! # Test-only: the daemon re-reads DATA_DIR/faults and drops all traffic
//! # to and from the peer addresses listed there. Never in production.
//! testing:
//!   fault_control: true
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::{derive_node_id, is_node_name, scalar, ConfigError, PathText, Scalar};

/// The most hosts `maps.hosts` may name.
const MAX_MAP_HOSTS: usize = 4096;
/// The most `maps.render` entries.
const MAX_RENDERS: usize = 256;

/// The replicated maps' settings. Maps are off (every map request is
/// refused, saying so) when the configuration has no `maps:` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapsConfig {
    /// The fleet's hosts, as node ids, sorted, without duplicates. Empty:
    /// maps are off.
    pub hosts: Vec<u32>,
    /// Maps rendered to files.
    pub render: Vec<RenderConfig>,
}

impl MapsConfig {
    /// Whether the replicated maps run on this server.
    pub fn enabled(&self) -> bool {
        !self.hosts.is_empty()
    }
}

/// One `maps.render` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// The map.
    pub map: String,
    /// The file, absolute.
    pub file: PathBuf,
    /// The line template.
    pub template: String,
}

/// Test-only settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TestingConfig {
    /// The daemon re-reads `DATA_DIR/faults` and drops traffic to and from
    /// the peers listed there (see `mgmtd::faults`).
    pub fault_control: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with hosts and render")]
pub(super) struct RawMaps {
    hosts: Option<Vec<HostRef>>,
    render: Option<Vec<RawRender>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with map, file and template"
)]
struct RawRender {
    map: Option<String>,
    file: Option<PathText>,
    template: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with fault_control")]
pub(super) struct RawTesting {
    fault_control: Option<bool>,
}

const EXPECT_HOST: &str = "a host name like \"web-1\" or a node id from 0 to 4294967295";

scalar_type!(
    /// A `maps.hosts` entry: a node id, or a host name to derive it from.
    HostRef(u32),
    EXPECT_HOST,
    |v| match v {
        Scalar::Int(n) => u32::try_from(*n).ok(),
        Scalar::Str(s) if is_node_name(s) => Some(derive_node_id(s)),
        _ => None,
    }
);

pub(super) fn settle_maps(
    file: &Path,
    base: &Path,
    raw: Option<RawMaps>,
) -> Result<MapsConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(MapsConfig::default());
    };
    let mut hosts: Vec<u32> = raw
        .hosts
        .ok_or_else(|| {
            ConfigError::missing(
                file,
                "maps.hosts",
                "the list of the fleet's hosts (names or node ids)",
            )
        })?
        .into_iter()
        .map(|h| h.0)
        .collect();
    if hosts.is_empty() || hosts.len() > MAX_MAP_HOSTS {
        return Err(ConfigError::invalid(
            file,
            "maps.hosts",
            format!("expected 1 to {MAX_MAP_HOSTS} hosts, found {}", hosts.len()),
        ));
    }
    hosts.sort_unstable();
    hosts.dedup();
    let raw_render = raw.render.unwrap_or_default();
    if raw_render.len() > MAX_RENDERS {
        return Err(ConfigError::invalid(
            file,
            "maps.render",
            format!(
                "expected at most {MAX_RENDERS} entries, found {}",
                raw_render.len()
            ),
        ));
    }
    let mut render = Vec::with_capacity(raw_render.len());
    for (i, r) in raw_render.into_iter().enumerate() {
        let key = |k: &str| format!("maps.render[{i}].{k}");
        let map = r
            .map
            .ok_or_else(|| ConfigError::missing(file, &key("map"), "the name of a map"))?;
        if let Err(e) = ::maps::bounds::validate_map_name(&map) {
            return Err(ConfigError::invalid(
                file,
                &key("map"),
                format!("expected a map name, found {map:?}: {e}"),
            ));
        }
        let path = r
            .file
            .ok_or_else(|| ConfigError::missing(file, &key("file"), "the file to write"))?
            .resolve(base);
        let template = r.template.ok_or_else(|| {
            ConfigError::missing(
                file,
                &key("template"),
                "a line template like \"{value} {key}\"",
            )
        })?;
        if let Err(e) = ::maps::Template::parse(&template) {
            return Err(ConfigError::invalid(
                file,
                &key("template"),
                format!(
                    "expected a line template like \"{{value}} {{key}}\", found {template:?}: {e}"
                ),
            ));
        }
        render.push(RenderConfig {
            map,
            file: path,
            template,
        });
    }
    Ok(MapsConfig { hosts, render })
}

pub(super) fn settle_testing(raw: Option<RawTesting>) -> TestingConfig {
    TestingConfig {
        fault_control: raw.and_then(|t| t.fault_control).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "name: web-1\nlisten: 0.0.0.0:1\ncluster_key: k\ndata_dir: /d\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::from_yaml_with(
            &format!("{BASE}{extra}"),
            Path::new("/etc/flotilla/mgmtd.yaml"),
            Default::default(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn maps_section_settles_hosts_and_renders() {
        let c = parse(
            "maps:\n  hosts: [web-1, 17, web-1]\n  render:\n    - map: hosts\n      file: out/hosts\n      template: \"{value} {key}\"\ntesting:\n  fault_control: true\n",
        )
        .unwrap();
        let mut hosts = vec![17, derive_node_id("web-1")];
        hosts.sort_unstable();
        assert_eq!(c.maps.hosts, hosts);
        assert!(c.maps.enabled());
        assert_eq!(c.maps.render[0].file, Path::new("/etc/flotilla/out/hosts"));
        assert!(c.testing.fault_control);
        let off = parse("").unwrap();
        assert!(!off.maps.enabled());
        assert!(!off.testing.fault_control);
    }

    #[test]
    fn maps_errors_name_the_key() {
        let e = parse("maps:\n  hosts: [web-1]\n  rendr: []\n").unwrap_err();
        assert!(e.contains("maps: unknown key \"rendr\""), "{e}");
        let e = parse("maps:\n  render: []\n").unwrap_err();
        assert!(e.contains("missing required key \"maps.hosts\""), "{e}");
        let e = parse("maps:\n  hosts: [\"bad name!\"]\n").unwrap_err();
        assert!(e.contains("maps.hosts[0]: expected a host name"), "{e}");
        let e = parse(
            "maps:\n  hosts: [a]\n  render:\n    - map: m\n      file: f\n      template: \"{nope}\"\n",
        )
        .unwrap_err();
        assert!(e.contains("maps.render[0].template"), "{e}");
        let e = parse("testing:\n  fault_contrl: true\n").unwrap_err();
        assert!(e.contains("testing: unknown key \"fault_contrl\""), "{e}");
    }
}
