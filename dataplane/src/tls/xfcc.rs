//! The `x-forwarded-client-cert` element an inbound listener appends for the peer of a
//! mutual-TLS connection, in the form Istio's sidecars write (Envoy's `APPEND_FORWARD` with
//! `set_current_client_cert_details {subject, uri, dns}`):
//!
//! `By=<this proxy's SPIFFE id>;Hash=<hex SHA-256 of the peer's leaf DER>;Subject="";URI=<peer's SPIFFE id>`
//!
//! Made once per connection, at the handshake, and kept with the connection
//! (`InboundConn::xfcc`): everything in it is a fact of the connection (the certificate the peer
//! proved, the one this proxy served), so hashing the certificate and formatting the element
//! per request would redo the same work for every request of a long-lived HTTP/2 connection.
//! Per request the encoders only add the ready value (`http::h1::Xfcc`), with no formatting.
//!
//! `Subject=""` and no `DNS=`: mesh certificates name a workload by their URI SAN alone, with
//! an empty subject and no DNS name (ringmesh's CA issues them so, as Istio's does), and that is
//! what Istio's sidecars write for them. A certificate of the user's own PKI
//! (`spec.identity` files) that does carry a subject is still written `Subject=""`; Envoy would
//! print its distinguished name there.

use http::HeaderValue;
use ring::digest;

use super::PeerIdentity;

/// The element for a peer that proved `peer` with the leaf certificate `leaf_der`, on a
/// connection served by the workload `by` (omitted when `None`). `None` when the SPIFFE ids hold
/// bytes a field value cannot carry (a URI SAN is an IA5String, which allows control bytes):
/// such a connection's requests then carry no XFCC at all rather than a broken one.
pub(crate) fn element(by: Option<&str>, leaf_der: &[u8], peer: &PeerIdentity) -> Option<HeaderValue> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = digest::digest(&digest::SHA256, leaf_der);
    let mut s = String::with_capacity(
        by.map_or(0, |b| b.len() + 4) + 6 + 2 * hash.as_ref().len() + 12 + 4 + peer.spiffe().len(),
    );
    if let Some(by) = by {
        s.push_str("By=");
        s.push_str(by);
        s.push(';');
    }
    s.push_str("Hash=");
    for b in hash.as_ref() {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s.push_str(";Subject=\"\";URI=");
    s.push_str(peer.spiffe());
    HeaderValue::try_from(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of the three bytes `abc` (FIPS 180-2, appendix B.1).
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn the_element_names_this_proxy_the_certificate_and_the_peer() {
        let peer = PeerIdentity::parse("spiffe://cluster.local/ns/default/sa/client").unwrap();
        let v = element(Some("spiffe://cluster.local/ns/default/sa/server"), b"abc", &peer).unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            format!(
                "By=spiffe://cluster.local/ns/default/sa/server;Hash={ABC_SHA256};Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/client"
            )
        );
    }

    #[test]
    fn without_an_own_id_by_is_left_out() {
        let peer = PeerIdentity::parse("spiffe://td/ns/a/sa/b").unwrap();
        let v = element(None, b"abc", &peer).unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            format!("Hash={ABC_SHA256};Subject=\"\";URI=spiffe://td/ns/a/sa/b")
        );
    }

    #[test]
    fn an_id_that_cannot_be_a_field_value_makes_no_element() {
        let peer = PeerIdentity::parse("spiffe://td/ns/a\r\nx-evil: 1/sa/b").unwrap();
        assert!(element(None, b"abc", &peer).is_none());
    }
}
