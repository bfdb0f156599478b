//! Flotilla's client protocol: what `monitor` and `mgmtd` say to each other.
//!
//! The monitor links this crate and nothing of the daemon. It holds:
//!
//! - [`message`]: the requests and the server's messages, with their bounds;
//! - [`frame`]: versioned, length-prefixed postcard frames;
//! - [`transport`]: connections over a Unix socket (checked by peer
//!   credentials) or TCP (both sides prove they hold the cluster key, see
//!   [`auth`], and the session is sealed);
//! - [`tracker`]: the M and NR sets of a command, pure and tested;
//! - [`follow`]: following a job's answer to its report;
//! - [`loopback`]: free ports for fleets on one machine (`monitor demo`,
//!   the tests);
//! - the vocabulary both sides share: [`JobId`], [`Outcome`], and the
//!   cluster key file ([`key`]).
//!
//! # Example
//!
//! ```no_run
//! use flotilla_client::{follow, Connection, JobId, Request, Simex, Targets};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut connection = Connection::connect_unix("/run/flotilla/mgmtd.sock".as_ref()).await?;
//! let job = JobId::random()?;
//! connection
//!     .send(&Request::Simex(Simex {
//!         job,
//!         targets: Targets::All,
//!         timeout: None,
//!         stream: false,
//!         command: "uname -a".into(),
//!     }))
//!     .await?;
//! let report = follow::follow(&mut connection, |_event, _tracker| {}).await?;
//! println!("{} hosts, all ok: {}", report.hosts.len(), report.all_ok());
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod follow;
pub mod frame;
pub mod job;
pub mod key;
pub mod loopback;
pub mod message;
pub mod outcome;
pub mod report_error;
pub mod tracker;
pub mod transport;

pub use follow::{follow, FollowEvent, JobReport};
pub use frame::{FrameError, PROTOCOL_VERSION};
pub use job::{JobId, ParseJobIdError, MIN_PREFIX};
pub use key::{ClusterKey, KeyError};
pub use message::{
    Accepted, ErrorKind, HostStatus, Member, Request, RequestError, ServerMessage, Simex, Targets,
    Unfinished, MAX_FRAME,
};
pub use outcome::{
    Captured, ChdirOutcome, ExecOutcome, ExecStatus, Outcome, PackageOutcome, PackageStatus, Stream,
};
pub use report_error::error_chain;
pub use tracker::{resolve_targets, HostState, Tracker};
pub use transport::{
    AcceptError, ClientError, ClientIdentity, Connection, Endpoint, PackageData, ServerConnection,
    UploadFrame,
};
