//! HTTP protocol handling on the worker: the HTTP/1.1 codec (`h1`), HTTP/2 (`h2`) and gRPC
//! (`grpc`), body streaming (`body`),
//! the per-connection loop (`proxy`) over a client connection (`downstream`) and the request
//! as routing sees it (`route_view`), and upstream forwarding (`forward`) with the request body
//! kept for every try (`request_body`) and retries (`retry`); routes' and listeners' token buckets
//! (`local_rate_limit`).
//! Nothing here locks or blocks; bodies stream through owned buffers.

pub mod body;
pub(crate) mod downstream;
pub(crate) mod fault;
pub(crate) mod forward;
pub(crate) mod grpc;
pub mod h1;
pub mod h2;
pub mod local_rate_limit;
pub(crate) mod mirror;
pub mod proxy;
pub(crate) mod request_body;
pub(crate) mod retry;
pub(crate) mod route_view;
pub(crate) mod send;
