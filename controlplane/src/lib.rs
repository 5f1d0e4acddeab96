//! ringmesh control plane and the `ringmesh` command line.
//!
//! The control plane keeps the registry and the users' resources, compiles them per proxy with
//! the compiler in `ringmesh-api`, and streams the results out. The `ringmesh` CLI drives it and
//! also works offline: `ringmesh analyze` runs the very compiler the proxy and the control plane
//! use, so a config that passes `analyze` is never refused for a reason `analyze` could see.

pub mod admin;
pub mod analyze;
pub mod ca;
pub mod capture;
pub mod cli;
pub mod etcd;
pub mod inject;
pub mod kubernetes;
pub mod metrics;
pub mod scope;
pub mod server;
pub mod store;
