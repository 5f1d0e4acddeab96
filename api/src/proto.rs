//! The proxy ⇄ control-plane protocol (`proto/ringmesh/v1/discovery.proto`), the management API
//! the `ringmesh` CLI speaks (`proto/ringmesh/v1/admin.proto`, same package), the version
//! window, and conversions between wire messages and the compiler's types.
//!
//! Both sides announce [`PROTOCOL_VERSION`]. A control plane serves proxies whose version lies in
//! `MIN_SUPPORTED_VERSION..=PROTOCOL_VERSION` (the current and the previous one) and refuses any
//! other with a message naming both versions; the proxy logs it and keeps its last good config.

#![allow(missing_docs, unreachable_pub, clippy::all)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::registry::{ExtraEndpoint, RegistryEndpoint};

tonic::include_proto!("ringmesh.v1");

/// The gRPC codec of both services: prost with small buffers. tonic's default starts every
/// stream's encode and decode buffers at 8 KiB and batches messages until 32 KiB before it
/// yields a chunk; the encode buffer then keeps the capacity of the largest batch for the life
/// of the stream. The control plane holds one stream per proxy, so that was ~60 KiB of a
/// ~140 KiB per-proxy cost (measured with massif on `ringmesh-control-bench`). Here buffers
/// start at 2 KiB and every chunk of 4 KiB or more goes out at once, so a stream keeps about
/// one message of capacity (deltas are small; a whole config is sent in parts of
/// [`crate::delta::PART_BYTES`]).
#[derive(Debug)]
pub struct SmallBufferCodec<T, U>(std::marker::PhantomData<(T, U)>);

/// Buffer sizes of [`SmallBufferCodec`]: initial capacity, yield threshold.
pub const CODEC_BUFFERS: (usize, usize) = (2 * 1024, 4 * 1024);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(tonic::codec::BufferSettings::new(
            CODEC_BUFFERS.0,
            CODEC_BUFFERS.1,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(tonic::codec::BufferSettings::new(
            CODEC_BUFFERS.0,
            CODEC_BUFFERS.1,
        ))
    }
}

/// The protocol version this build speaks. 2: whole snapshots as `SharedSnapshot`; 3: deltas
/// and whole snapshots in parts as `SharedDelta` (`delta.rs`).
pub const PROTOCOL_VERSION: u32 = 3;

/// The first protocol version that understands `SharedDelta`.
pub const DELTA_VERSION: u32 = 3;

/// The oldest protocol version this build still serves (the window is current and previous).
pub const MIN_SUPPORTED_VERSION: u32 = if PROTOCOL_VERSION > 1 { PROTOCOL_VERSION - 1 } else { 1 };

/// Why a peer's protocol version is refused, worded for the person reading either log.
pub fn skew_refusal(peer: u32) -> Option<String> {
    if (MIN_SUPPORTED_VERSION..=PROTOCOL_VERSION).contains(&peer) {
        return None;
    }
    Some(format!(
        "protocol version {peer} is not supported by this control plane (it speaks version {PROTOCOL_VERSION} \
         and serves versions {MIN_SUPPORTED_VERSION} to {PROTOCOL_VERSION}); {}",
        if peer > PROTOCOL_VERSION {
            "upgrade the control plane"
        } else {
            "upgrade the proxy"
        }
    ))
}

/// A wire endpoint that does not fit the compiler's types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The address is not an IP address.
    #[error("endpoint {host}: address {address:?} is not an IP address")]
    Address {
        /// Service host.
        host: String,
        /// The address as sent.
        address: String,
    },
    /// A port is not in 1..=65535.
    #[error("endpoint {host}: port {name}={port} is out of range")]
    Port {
        /// Service host.
        host: String,
        /// Port name.
        name: String,
        /// The port as sent.
        port: u32,
    },
}

impl TryFrom<&Endpoint> for ExtraEndpoint {
    type Error = EndpointError;

    fn try_from(e: &Endpoint) -> Result<Self, Self::Error> {
        let address: IpAddr = e.address.parse().map_err(|_| EndpointError::Address {
            host: e.host.clone(),
            address: e.address.clone(),
        })?;
        let mut ports = BTreeMap::new();
        for (name, port) in &e.ports {
            let p = u16::try_from(*port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| EndpointError::Port {
                    host: e.host.clone(),
                    name: name.clone(),
                    port: *port,
                })?;
            ports.insert(name.clone(), p);
        }
        Ok(ExtraEndpoint {
            host: e.host.clone(),
            endpoint: RegistryEndpoint {
                address,
                ports,
                labels: e.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                weight: e.weight.max(1),
            },
        })
    }
}

impl From<&ExtraEndpoint> for Endpoint {
    fn from(e: &ExtraEndpoint) -> Self {
        Endpoint {
            host: e.host.clone(),
            address: e.endpoint.address.to_string(),
            ports: e
                .endpoint
                .ports
                .iter()
                .map(|(k, v)| (k.clone(), u32::from(*v)))
                .collect(),
            labels: e.endpoint.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            weight: e.endpoint.weight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn version_window_is_current_and_previous() {
        assert_eq!(skew_refusal(PROTOCOL_VERSION), None);
        assert_eq!(skew_refusal(MIN_SUPPORTED_VERSION), None);
        let newer = skew_refusal(PROTOCOL_VERSION + 1).unwrap();
        assert!(
            newer.contains(&format!("protocol version {}", PROTOCOL_VERSION + 1)),
            "{newer}"
        );
        assert!(newer.contains(&format!("speaks version {PROTOCOL_VERSION}")), "{newer}");
        assert!(newer.contains("upgrade the control plane"), "{newer}");
        let older = skew_refusal(0).unwrap();
        assert!(older.contains("upgrade the proxy"), "{older}");
    }

    #[test]
    fn endpoints_round_trip_through_the_wire() {
        let wire = Endpoint {
            host: "reviews.default.svc.cluster.local".into(),
            address: "10.0.0.7".into(),
            ports: [("http".to_string(), 9080u32)].into_iter().collect(),
            labels: [("version".to_string(), "v2".to_string())].into_iter().collect(),
            weight: 0,
        };
        let bytes = wire.encode_to_vec();
        let decoded = Endpoint::decode(bytes.as_slice()).unwrap();
        let extra = ExtraEndpoint::try_from(&decoded).unwrap();
        assert_eq!(extra.endpoint.ports.get("http"), Some(&9080));
        assert_eq!(extra.endpoint.weight, 1, "weight 0 on the wire means the default");
        let back = Endpoint::from(&extra);
        assert_eq!(back.address, "10.0.0.7");
        assert_eq!(back.labels.get("version").map(String::as_str), Some("v2"));
    }

    #[test]
    fn bad_endpoints_are_named() {
        let mut e = Endpoint {
            host: "a".into(),
            address: "not-an-ip".into(),
            ..Default::default()
        };
        assert!(ExtraEndpoint::try_from(&e)
            .unwrap_err()
            .to_string()
            .contains("not-an-ip"));
        e.address = "::1".into();
        e.ports.insert("http".into(), 70000);
        assert!(ExtraEndpoint::try_from(&e)
            .unwrap_err()
            .to_string()
            .contains("http=70000"));
    }

    #[test]
    fn messages_decode_what_they_encode() {
        let hello = ProxyMessage {
            message: Some(proxy_message::Message::Hello(Hello {
                node_id: "n1".into(),
                workload: Some(Workload {
                    name: "reviews".into(),
                    namespace: "shop".into(),
                    ..Default::default()
                }),
                proxy_version: "0.1.0".into(),
                protocol_version: PROTOCOL_VERSION,
                serving_version: 7,
                credential: "rmt1.x.y".into(),
            })),
        };
        let back = ProxyMessage::decode(hello.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, hello);
    }
}
