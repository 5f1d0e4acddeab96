//! HTTP protocol handling on the worker: the HTTP/1.1 codec (`h1`), body streaming (`body`),
//! the per-connection loop (`proxy`) and upstream forwarding with retries (`forward`).
//! Nothing here locks or blocks; bodies stream through owned buffers.

pub mod body;
pub(crate) mod forward;
pub mod h1;
pub mod proxy;
pub(crate) mod send;
