//! Flotilla's software packages: everything `siminst` needs that does not
//! touch the network.
//!
//! A package is a gzip-compressed tar whose first entry is a YAML manifest,
//! [`MANIFEST_FILE`]. This crate
//!
//! - parses and validates the manifest ([`Manifest`], [`Version`],
//!   [`Requirements`]);
//! - builds packages deterministically ([`build`]) and lists them
//!   ([`inspect`]);
//! - decides whether a host may install a package
//!   ([`Requirements::check`] against [`HostFacts`]), with reasons a user can
//!   read;
//! - verifies a package's SHA-256 digest while streaming it
//!   ([`verify_digest`]);
//! - unpacks an archive into a staging directory without letting anything
//!   leave it ([`unpack`]);
//! - runs install and uninstall scripts with a timeout, in their own process
//!   group, with captured and capped output ([`run_script`]);
//! - keeps the host's installed-packages database ([`PackageDb`]).
//!
//! The order a server follows for one installation is: receive the file,
//! [`verify_digest`], [`unpack`] into an empty staging directory, read the
//! staged manifest with [`Manifest::from_file`], [`run_script`] the install
//! script from inside the staging directory, and only when all of that
//! succeeded, [`PackageDb::record`]. [`unpack_verified`] does the first two
//! in one pass over the data (a package arriving in parts is unpacked as
//! they come); the script still runs only after its digest matched.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use packages::{HostFacts, Manifest};
//!
//! let manifest = Manifest::from_yaml(
//!     "name: webapp\n\
//!      version: 1.4.0\n\
//!      requirements:\n  attributes:\n    arch: x86_64\n  min_free_disk: 500MiB\n\
//!      install: install.sh\n",
//! )?;
//! let mut host = HostFacts::default();
//! host.attributes.insert("arch".into(), "aarch64".into());
//! host.free_disk_bytes = 120 * 1024 * 1024;
//! let refusal = manifest.requirements.check(&host).unwrap_err();
//! assert_eq!(
//!     refusal.to_string(),
//!     "arch=aarch64, wanted x86_64; free disk 120 MiB, wanted 500 MiB"
//! );
//! # Ok(())
//! # }
//! ```

mod archive;
mod build;
mod db;
mod digest;
mod manifest;
mod paths;
mod requirements;
mod script;
mod units;
mod unpack;
mod version;

pub use build::{
    build, inspect, BuildError, BuiltPackage, EntryKind, FileInfo, InspectError, Inspection,
};
pub use db::{DbError, InstallOutcome, InstalledPackage, PackageDb, DB_FILE};
pub use digest::{
    sha256_file, sha256_reader, verify_digest, verify_file_digest, DigestMismatch,
    ParseDigestError, Sha256Digest, Sha256Stream, VerifyError,
};
pub use manifest::{
    AllowedValues, Manifest, ManifestError, PackageRequirement, Requirements,
    DEFAULT_INSTALL_TIMEOUT, MANIFEST_FILE, MAX_INSTALL_TIMEOUT, MAX_MANIFEST_BYTES,
};
pub use paths::SymlinkProblem;
pub use requirements::{HostFacts, NotEligible, Unmet};
pub use script::{
    run_script, run_script_with_env, Captured, ExitStatus, ScriptError, ScriptOutcome, KILL_GRACE,
};
pub use units::{format_bytes, parse_bytes, parse_duration, ParseUnitError};
pub use unpack::{
    unpack, unpack_buffered, unpack_verified, Limits, UnpackError, Unpacked, VerifiedUnpackError,
};
pub use version::{ParseVersionError, Version};
