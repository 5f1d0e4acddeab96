//! ringmesh's resource model and its one compiler.
//!
//! Users write Istio-shaped resources (`ServiceEntry`, `VirtualService`, `DestinationRule`, ...)
//! plus ringmesh's own `ProxyConfig`. This crate parses them from YAML, validates them with
//! errors that name the file, line, resource and field, and compiles them into the immutable
//! [`snapshot::Snapshot`] that proxy workers read. The proxy (standalone), the control plane
//! and `ringmesh analyze` all run this same code, so a config that compiles in one compiles in all.
#![warn(missing_docs)]

pub mod access_log;
pub mod authz;
pub mod compile;
pub mod delta;
pub mod diagnostic;
pub mod duration;
pub mod hash_table;
pub mod hgrm;
pub mod load;
mod locate;
pub mod matcher;
pub mod normalize;
pub mod otlp;
mod port_hint;
pub mod proto;
pub mod registry;
pub mod resources;
pub mod route_index;
mod schema;
pub mod snapshot;

pub use compile::{compile, compile_files, CompileInput, Compiled};
pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use duration::parse_duration;
pub use load::{documents, load_files, load_str, yaml_files_under};
pub use resources::ResourceMeta;
