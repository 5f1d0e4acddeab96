//! Counters of captured connections (`spec.capture`), per worker; declared once with their
//! Prometheus names, as the security counters are.

counter_set! {
    /// One worker's capture counters.
    CaptureStats,
    /// Capture counters summed over workers.
    CaptureTotals {
    outbound_service => "ringmesh_capture_outbound_service_total", "Captured outbound connections to a service's virtual IP and port.";
    outbound_endpoint => "ringmesh_capture_outbound_endpoint_total", "Captured outbound connections to a service endpoint's own address (a pod IP), sent to it as TCP (mTLS to its proxy).";
    passthrough => "ringmesh_capture_passthrough_total", "Captured outbound connections to a destination no service declares, passed through as TCP (outboundTrafficPolicy ALLOW_ANY; Istio's PassthroughCluster).";
    registry_only_refused => "ringmesh_capture_registry_only_refused_total", "Captured outbound connections to a destination no service declares, closed (outboundTrafficPolicy REGISTRY_ONLY; Istio's BlackHoleCluster).";
    inbound_app_port => "ringmesh_capture_inbound_app_port_total", "Captured inbound connections to a port the config names (HTTP routed to the app).";
    inbound_passthrough => "ringmesh_capture_inbound_passthrough_total", "Captured inbound connections to a port the config does not name, passed to the app as TCP.";
    loop_refused => "ringmesh_capture_loop_refused_total", "Connections to a capture port that were not redirected (made to the port itself), refused so the proxy never loops into itself.";
    no_original_dst => "ringmesh_capture_no_original_dst_total", "Connections to a capture port without an original destination (no REDIRECT rule or conntrack), refused.";
}
}
