//! Transparent traffic capture for a sidecar: `ringmesh iptables`, ringmesh's `istio-iptables`.
//!
//! Outbound TCP from the pod is redirected to the proxy's outbound port (`--envoy-port`, 15001)
//! and inbound TCP to its inbound port (`--inbound-capture-port`, 15006), in the `nat` table, with
//! REDIRECT. Everything here is a pure function from the flags (and, for re-applying and
//! cleaning up, the current `iptables-save -t nat` text) to the input of `iptables-restore`;
//! [`crate::cli`] only parses the flags and runs the tools.
//!
//! **Why `iptables-restore`.** No maintained Rust crate drives both the nft and the legacy
//! back-ends (the `iptables` crate builds `iptables -A ...` command lines, one process and one
//! kernel transaction per rule). `iptables-restore --noflush` takes the whole rule set for one
//! address family as text on stdin and commits it as one transaction: a pod never sees half of
//! the rules, a bad rule leaves the table as it was, and `--noflush` keeps every rule that is not
//! ours. The same text works with `iptables-nft-restore` and `iptables-legacy-restore`, and
//! `--dry-run` prints exactly that text.
//!
//! **Our rules.** Four chains of our own, named like Istio's: `RINGMESH_OUTPUT` (jumped to from
//! `OUTPUT` for TCP), `RINGMESH_REDIRECT` (REDIRECT to the outbound port), `RINGMESH_INBOUND`
//! (jumped to from `PREROUTING` for TCP, when inbound capture is on) and `RINGMESH_IN_REDIRECT`
//! (REDIRECT to the inbound port). `RINGMESH_OUTPUT` follows istio-iptables' order:
//!
//! 1. excluded outbound ports (`-o`) RETURN;
//! 2. `127.0.0.6` (`::6`) over `lo` RETURNs (the proxy's inbound passthrough source address);
//! 3. for the proxy's UID, then its GID: traffic *by the proxy* over `lo` to a non-loopback
//!    address (the pod calling its own IP, e.g. through a service VIP that picked this pod) goes
//!    to `RINGMESH_IN_REDIRECT`, so it is handled as inbound; traffic *by the application* over
//!    `lo` RETURNs (an app calling its own pod IP is not captured); all other traffic by the proxy
//!    RETURNs, so the proxy never loops into itself;
//! 4. traffic to `127.0.0.1/32` (`::1/128`) RETURNs;
//! 5. excluded outbound CIDRs (`-x`) RETURN;
//! 6. included outbound ports (`-q`) go to `RINGMESH_REDIRECT` whatever the address;
//! 7. included CIDRs (`-i`; `*`: everything) go to `RINGMESH_REDIRECT`.
//!
//! `RINGMESH_INBOUND`: first, for each `--kube-virt-interfaces` interface (traffic from a VM
//! behind it is that VM's outbound traffic): excluded CIDRs RETURN, included CIDRs go to
//! `RINGMESH_REDIRECT`, the rest RETURNs. Istio inserts these at the head of `PREROUTING`; we keep
//! them in our chain so that cleaning up cannot touch a rule of someone else's. Then, with `-b *`,
//! the proxy's own ports (15000, 15020, 15021, 15090 and the two capture ports) and `-d` RETURN
//! and every other TCP port goes to `RINGMESH_IN_REDIRECT`; with a list, only those ports (less
//! the excluded ones) do; with an empty `-b`, `PREROUTING` does not jump to us at all.
//!
//! **Applying twice and cleaning up.** Applying declares our four chains (`:CHAIN - [0:0]`, which
//! with `--noflush` creates a chain or empties an existing one), deletes (`-D`) every jump to one
//! of them from `OUTPUT` / `PREROUTING` found in the current `iptables-save -t nat`, and appends
//! the rules: one transaction, so applying twice leaves one copy. Cleaning up flushes our chains
//! that exist, deletes those jumps and deletes the chains (`-X`), in one transaction; nothing of
//! ours present means nothing is run, so cleaning up twice, or where we never applied, succeeds.
//!
//! **Pod annotations** map onto the flags as in Istio (`inject/annotations.rs` passes them to the init container):
//! `traffic.sidecar.istio.io/includeOutboundIPRanges` → `-i`, `excludeOutboundIPRanges` → `-x`,
//! `includeInboundPorts` → `-b`, `excludeInboundPorts` → `-d`, `includeOutboundPorts` → `-q`,
//! `excludeOutboundPorts` → `-o`, `traffic.sidecar.istio.io/kubevirtInterfaces` → `-c`.
//! `sidecar.istio.io/interceptionMode: TPROXY` is not supported (REDIRECT only).

use std::fmt::Write as _;
use std::net::IpAddr;

/// Our chains, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    "RINGMESH_INBOUND",
    "RINGMESH_IN_REDIRECT",
    "RINGMESH_OUTPUT",
    "RINGMESH_REDIRECT",
];
/// Outbound capture chain.
pub const OUTPUT_CHAIN: &str = "RINGMESH_OUTPUT";
/// REDIRECT to the outbound port.
pub const REDIRECT_CHAIN: &str = "RINGMESH_REDIRECT";
/// Inbound capture chain.
pub const INBOUND_CHAIN: &str = "RINGMESH_INBOUND";
/// REDIRECT to the inbound port.
pub const IN_REDIRECT_CHAIN: &str = "RINGMESH_IN_REDIRECT";
/// The proxy's own ports never captured inbound (admin, health, readiness, metrics), besides
/// the two capture ports.
pub const PROXY_PORTS: [u16; 4] = [15000, 15020, 15021, 15090];

/// An address family: one `iptables-restore` transaction each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `iptables-restore`.
    V4,
    /// `ip6tables-restore`.
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
    /// The proxy's inbound passthrough source address (Istio's 127.0.0.6 and ::6).
    fn passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }
    /// "IPv4" or "IPv6".
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// A CIDR, its address masked to the prefix (as `iptables-save` prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    fn family(&self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `*` or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<T> {
    /// Everything.
    All,
    /// Only these (empty: nothing).
    Only(Vec<T>),
}

/// A bad flag value; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {value:?}: {reason}")]
pub struct FlagError {
    /// The flag, e.g. `--inbound-ports-include`.
    pub flag: &'static str,
    /// The offending value.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

fn flag_error(flag: &'static str, value: &str, reason: impl Into<String>) -> FlagError {
    FlagError {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `*`: everything, where the flag takes it.
fn everything<T>(flag: &'static str, value: &str, allow_all: bool) -> Result<Selection<T>, FlagError> {
    if allow_all {
        Ok(Selection::All)
    } else {
        Err(flag_error(flag, value, "`*` is not allowed here"))
    }
}

/// Parses a comma-separated port list (`allow_all`: `*` too); each port is 1..=65535.
pub fn parse_ports(flag: &'static str, value: &str, allow_all: bool) -> Result<Selection<u16>, FlagError> {
    if value.trim() == "*" {
        return everything(flag, value, allow_all);
    }
    let mut ports = Vec::new();
    for item in items(value) {
        match item.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => {
                let p = p as u16;
                if !ports.contains(&p) {
                    ports.push(p);
                }
            }
            Ok(_) => return Err(flag_error(flag, value, format!("port {item} is not in 1..=65535"))),
            Err(_) => return Err(flag_error(flag, value, format!("{item:?} is not a port number"))),
        }
    }
    Ok(Selection::Only(ports))
}

/// Parses a comma-separated CIDR list (`allow_all`: `*` too); a bare address is a /32 or /128.
/// IPv4 and IPv6 may be mixed: each family's rules take their own.
pub fn parse_cidrs(flag: &'static str, value: &str, allow_all: bool) -> Result<Selection<Cidr>, FlagError> {
    if value.trim() == "*" {
        return everything(flag, value, allow_all);
    }
    let mut cidrs = Vec::new();
    for item in items(value) {
        let (addr, prefix) = match item.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (item, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| flag_error(flag, value, format!("{item:?} is not an IP address or CIDR")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(flag_error(flag, value, format!("{item:?} has a bad prefix length"))),
            },
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        let cidr = Cidr { addr, prefix };
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    Ok(Selection::Only(cidrs))
}

/// Parses a comma-separated list of interface names.
pub fn parse_interfaces(flag: &'static str, value: &str) -> Result<Vec<String>, FlagError> {
    let mut out = Vec::new();
    for item in items(value) {
        if item.len() > 15 || item.contains(['/', ' ', '\t', '"', '\'']) || item == "." || item == ".." {
            return Err(flag_error(flag, value, format!("{item:?} is not an interface name")));
        }
        out.push(item.to_string());
    }
    Ok(out)
}

/// What to capture: istio-iptables' flags, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// `-p/--envoy-port`: where outbound TCP goes.
    pub envoy_port: u16,
    /// `-z/--inbound-capture-port`: where inbound TCP goes.
    pub inbound_capture_port: u16,
    /// `-u/--proxy-uid`: the proxy's user, never captured.
    pub proxy_uid: u32,
    /// `-g/--proxy-gid`: the proxy's group, never captured.
    pub proxy_gid: u32,
    /// `-i/--outbound-ip-ranges-include`.
    pub outbound_ranges_include: Selection<Cidr>,
    /// `-x/--outbound-ip-ranges-exclude`.
    pub outbound_ranges_exclude: Vec<Cidr>,
    /// `-b/--inbound-ports-include`.
    pub inbound_ports_include: Selection<u16>,
    /// `-d/--inbound-ports-exclude`.
    pub inbound_ports_exclude: Vec<u16>,
    /// `-q/--outbound-ports-include`.
    pub outbound_ports_include: Vec<u16>,
    /// `-o/--outbound-ports-exclude`.
    pub outbound_ports_exclude: Vec<u16>,
    /// `-c/--kube-virt-interfaces`.
    pub kube_virt_interfaces: Vec<String>,
}

impl Default for CaptureConfig {
    /// istio-iptables' defaults: capture everything both ways, proxy UID and GID 1337.
    fn default() -> Self {
        CaptureConfig {
            envoy_port: 15001,
            inbound_capture_port: 15006,
            proxy_uid: 1337,
            proxy_gid: 1337,
            outbound_ranges_include: Selection::All,
            outbound_ranges_exclude: Vec::new(),
            inbound_ports_include: Selection::All,
            inbound_ports_exclude: Vec::new(),
            outbound_ports_include: Vec::new(),
            outbound_ports_exclude: Vec::new(),
            kube_virt_interfaces: Vec::new(),
        }
    }
}

/// The list-valued flags as given on the command line (strings, parsed by
/// [`CaptureConfig::from_flags`]). The default is the command's: everything captured both ways,
/// nothing excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFlags {
    /// `-i`.
    pub outbound_ip_ranges_include: String,
    /// `-x`.
    pub outbound_ip_ranges_exclude: String,
    /// `-b`.
    pub inbound_ports_include: String,
    /// `-d`.
    pub inbound_ports_exclude: String,
    /// `-q`.
    pub outbound_ports_include: String,
    /// `-o`.
    pub outbound_ports_exclude: String,
    /// `-c`.
    pub kube_virt_interfaces: String,
}

impl Default for ListFlags {
    fn default() -> Self {
        ListFlags {
            outbound_ip_ranges_include: "*".into(),
            outbound_ip_ranges_exclude: String::new(),
            inbound_ports_include: "*".into(),
            inbound_ports_exclude: String::new(),
            outbound_ports_include: String::new(),
            outbound_ports_exclude: String::new(),
            kube_virt_interfaces: String::new(),
        }
    }
}

fn only<T>(s: Selection<T>) -> Vec<T> {
    match s {
        Selection::All => Vec::new(),
        Selection::Only(v) => v,
    }
}

impl CaptureConfig {
    /// Builds the config from the ports, the IDs and the list flags; a bad value is an error
    /// naming its flag.
    pub fn from_flags(
        envoy_port: u16,
        inbound_capture_port: u16,
        proxy_uid: u32,
        proxy_gid: Option<u32>,
        lists: &ListFlags,
    ) -> Result<Self, FlagError> {
        if envoy_port == 0 {
            return Err(flag_error("--envoy-port", "0", "port 0 is not in 1..=65535"));
        }
        if inbound_capture_port == 0 {
            return Err(flag_error("--inbound-capture-port", "0", "port 0 is not in 1..=65535"));
        }
        Ok(CaptureConfig {
            envoy_port,
            inbound_capture_port,
            proxy_uid,
            proxy_gid: proxy_gid.unwrap_or(proxy_uid),
            outbound_ranges_include: parse_cidrs(
                "--outbound-ip-ranges-include",
                &lists.outbound_ip_ranges_include,
                true,
            )?,
            outbound_ranges_exclude: only(parse_cidrs(
                "--outbound-ip-ranges-exclude",
                &lists.outbound_ip_ranges_exclude,
                false,
            )?),
            inbound_ports_include: parse_ports("--inbound-ports-include", &lists.inbound_ports_include, true)?,
            inbound_ports_exclude: only(parse_ports(
                "--inbound-ports-exclude",
                &lists.inbound_ports_exclude,
                false,
            )?),
            outbound_ports_include: only(parse_ports(
                "--outbound-ports-include",
                &lists.outbound_ports_include,
                false,
            )?),
            outbound_ports_exclude: only(parse_ports(
                "--outbound-ports-exclude",
                &lists.outbound_ports_exclude,
                false,
            )?),
            kube_virt_interfaces: parse_interfaces("--kube-virt-interfaces", &lists.kube_virt_interfaces)?,
        })
    }

    /// Inbound ports never captured: the proxy's own and `-d`, sorted.
    fn inbound_excluded(&self) -> Vec<u16> {
        let mut v: Vec<u16> = PROXY_PORTS.to_vec();
        v.extend([self.envoy_port, self.inbound_capture_port]);
        v.extend(&self.inbound_ports_exclude);
        v.sort_unstable();
        v.dedup();
        v
    }

    fn inbound_on(&self) -> bool {
        match &self.inbound_ports_include {
            Selection::All => true,
            Selection::Only(ports) => ports.iter().any(|p| !self.inbound_excluded().contains(p)),
        }
    }

    /// The rules (`-A` lines, jumps from `OUTPUT`/`PREROUTING` first) for one family.
    pub fn rules(&self, family: Family) -> Vec<String> {
        let mut r = Vec::new();
        let of_family = |c: &&Cidr| c.family() == family;
        r.push(format!("-A OUTPUT -p tcp -j {OUTPUT_CHAIN}"));
        if self.inbound_on() {
            r.push(format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"));
        }
        // Inbound.
        for iface in &self.kube_virt_interfaces {
            for c in self.outbound_ranges_exclude.iter().filter(of_family) {
                r.push(format!("-A {INBOUND_CHAIN} -d {c} -i {iface} -j RETURN"));
            }
            match &self.outbound_ranges_include {
                Selection::All => r.push(format!("-A {INBOUND_CHAIN} -i {iface} -j {REDIRECT_CHAIN}")),
                Selection::Only(cidrs) => {
                    for c in cidrs.iter().filter(of_family) {
                        r.push(format!("-A {INBOUND_CHAIN} -d {c} -i {iface} -j {REDIRECT_CHAIN}"));
                    }
                }
            }
            r.push(format!("-A {INBOUND_CHAIN} -i {iface} -j RETURN"));
        }
        let excluded = self.inbound_excluded();
        match &self.inbound_ports_include {
            Selection::All => {
                for p in &excluded {
                    r.push(format!("-A {INBOUND_CHAIN} -p tcp -m tcp --dport {p} -j RETURN"));
                }
                r.push(format!("-A {INBOUND_CHAIN} -p tcp -j {IN_REDIRECT_CHAIN}"));
            }
            Selection::Only(ports) => {
                for p in ports.iter().filter(|p| !excluded.contains(p)) {
                    r.push(format!(
                        "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {p} -j {IN_REDIRECT_CHAIN}"
                    ));
                }
            }
        }
        r.push(format!(
            "-A {IN_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_capture_port
        ));
        // Outbound.
        for p in &self.outbound_ports_exclude {
            r.push(format!("-A {OUTPUT_CHAIN} -p tcp -m tcp --dport {p} -j RETURN"));
        }
        r.push(format!(
            "-A {OUTPUT_CHAIN} -s {} -o lo -j RETURN",
            family.passthrough_source()
        ));
        let lo = family.loopback();
        for (what, id) in [("uid", self.proxy_uid), ("gid", self.proxy_gid)] {
            r.push(format!(
                "-A {OUTPUT_CHAIN} ! -d {lo} -o lo -m owner --{what}-owner {id} -j {IN_REDIRECT_CHAIN}"
            ));
            r.push(format!(
                "-A {OUTPUT_CHAIN} -o lo -m owner ! --{what}-owner {id} -j RETURN"
            ));
            r.push(format!("-A {OUTPUT_CHAIN} -m owner --{what}-owner {id} -j RETURN"));
        }
        r.push(format!("-A {OUTPUT_CHAIN} -d {lo} -j RETURN"));
        for c in self.outbound_ranges_exclude.iter().filter(of_family) {
            r.push(format!("-A {OUTPUT_CHAIN} -d {c} -j RETURN"));
        }
        for p in &self.outbound_ports_include {
            r.push(format!(
                "-A {OUTPUT_CHAIN} -p tcp -m tcp --dport {p} -j {REDIRECT_CHAIN}"
            ));
        }
        match &self.outbound_ranges_include {
            Selection::All => r.push(format!("-A {OUTPUT_CHAIN} -j {REDIRECT_CHAIN}")),
            Selection::Only(cidrs) => {
                for c in cidrs.iter().filter(of_family) {
                    r.push(format!("-A {OUTPUT_CHAIN} -d {c} -j {REDIRECT_CHAIN}"));
                }
            }
        }
        r.push(format!(
            "-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.envoy_port
        ));
        r
    }

    /// The `iptables-restore --noflush` input that (re)applies our rules for one family, given
    /// the current `iptables-save -t nat` text (empty: a table without our rules).
    pub fn apply_script(&self, family: Family, current: &str) -> String {
        let mut s = String::from("*nat\n");
        for c in CHAINS {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        for j in our_jumps(current) {
            let _ = writeln!(s, "-D {j}");
        }
        for rule in self.rules(family) {
            s.push_str(&rule);
            s.push('\n');
        }
        s.push_str("COMMIT\n");
        s
    }
}

/// Our chains present in an `iptables-save -t nat` text.
pub fn our_chains(current: &str) -> Vec<&'static str> {
    CHAINS
        .into_iter()
        .filter(|c| {
            current
                .lines()
                .any(|l| l.strip_prefix(':').and_then(|l| l.split_whitespace().next()) == Some(c))
        })
        .collect()
}

/// The rules of `OUTPUT` and `PREROUTING` jumping to one of our chains, as `iptables-save` prints
/// them without the leading `-A ` (e.g. `OUTPUT -p tcp -j RINGMESH_OUTPUT`).
pub fn our_jumps(current: &str) -> Vec<String> {
    current
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .filter(|l| l.starts_with("OUTPUT ") || l.starts_with("PREROUTING "))
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && CHAINS.contains(&w[1]))
        })
        .map(str::to_string)
        .collect()
}

/// The `iptables-restore --noflush` input that removes our jumps and chains, and nothing else,
/// from the table `current` (an `iptables-save -t nat` text); `None` when nothing of ours is
/// there.
pub fn cleanup_script(current: &str) -> Option<String> {
    let chains = our_chains(current);
    let jumps = our_jumps(current);
    if chains.is_empty() && jumps.is_empty() {
        return None;
    }
    let mut s = String::from("*nat\n");
    for c in &chains {
        let _ = writeln!(s, "-F {c}");
    }
    for j in &jumps {
        let _ = writeln!(s, "-D {j}");
    }
    for c in &chains {
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Which iptables implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft-restore` (nf_tables).
    Nft,
    /// `iptables-legacy-restore` (x_tables).
    Legacy,
    /// Plain `iptables-restore` (neither variant is installed).
    Default,
}

impl Backend {
    /// The restore and save programs for a family.
    pub fn tools(self, family: Family) -> (String, String) {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let variant = match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Default => "",
        };
        (format!("{base}{variant}-restore"), format!("{base}{variant}-save"))
    }
}

/// Where a program is: `$PATH`, then `/usr/sbin` and `/sbin` (not on a user's `$PATH` on every
/// distribution).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `auto`: like Istio, the back-end that already holds rules (the most `-A` lines in its
/// `-save` output, IPv4 and IPv6 together), else nft; plain `iptables-restore` when neither
/// variant is installed.
pub fn detect_backend() -> Backend {
    let installed = |b: Backend| find_program(&b.tools(Family::V4).0).is_some();
    let rules = |b: Backend| -> usize {
        [Family::V4, Family::V6]
            .into_iter()
            .filter_map(|f| find_program(&b.tools(f).1))
            .filter_map(|p| {
                std::process::Command::new(p)
                    .stderr(std::process::Stdio::null())
                    .output()
                    .ok()
            })
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .count()
            })
            .sum()
    };
    match (installed(Backend::Nft), installed(Backend::Legacy)) {
        (true, true) => {
            if rules(Backend::Legacy) > rules(Backend::Nft) {
                Backend::Legacy
            } else {
                Backend::Nft
            }
        }
        (true, false) => Backend::Nft,
        (false, true) => Backend::Legacy,
        (false, false) => Backend::Default,
    }
}

/// A failed tool run: the message names the program and carries its stderr.
#[derive(Debug, thiserror::Error)]
#[error("{program}: {message}")]
pub struct ToolError {
    /// The program.
    pub program: String,
    /// What went wrong (the tool's stderr, or why it could not run).
    pub message: String,
}

fn run_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ToolError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let err = |message: String| ToolError {
        program: program.to_string(),
        message,
    };
    let path = find_program(program).ok_or_else(|| err("not found".into()))?;
    let mut child = Command::new(path)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(err(format!("{} ({})", stderr, out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The current `nat` table of one family (`<save> -t nat`).
pub fn save_nat(backend: Backend, family: Family) -> Result<String, ToolError> {
    run_tool(&backend.tools(family).1, &["-t", "nat"], None)
}

/// Runs `<restore> --noflush` with `script` on stdin.
pub fn restore(backend: Backend, family: Family, script: &str) -> Result<(), ToolError> {
    run_tool(&backend.tools(family).0, &["--noflush"], Some(script)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> ListFlags {
        ListFlags::default()
    }

    fn config(f: impl FnOnce(&mut ListFlags)) -> CaptureConfig {
        let mut l = lists();
        f(&mut l);
        CaptureConfig::from_flags(15001, 15006, 1337, None, &l).unwrap()
    }

    /// The rules `rules` has beyond the defaults' (in order), and the defaults' it lacks.
    fn diff(c: &CaptureConfig, family: Family) -> (Vec<String>, Vec<String>) {
        let base = CaptureConfig::default().rules(family);
        let got = c.rules(family);
        (
            got.iter().filter(|r| !base.contains(r)).cloned().collect(),
            base.iter().filter(|r| !got.contains(r)).cloned().collect(),
        )
    }

    const GOLDEN_V4: &str = "*nat
:RINGMESH_INBOUND - [0:0]
:RINGMESH_IN_REDIRECT - [0:0]
:RINGMESH_OUTPUT - [0:0]
:RINGMESH_REDIRECT - [0:0]
-A OUTPUT -p tcp -j RINGMESH_OUTPUT
-A PREROUTING -p tcp -j RINGMESH_INBOUND
-A RINGMESH_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A RINGMESH_INBOUND -p tcp -m tcp --dport 15001 -j RETURN
-A RINGMESH_INBOUND -p tcp -m tcp --dport 15006 -j RETURN
-A RINGMESH_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A RINGMESH_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A RINGMESH_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A RINGMESH_INBOUND -p tcp -j RINGMESH_IN_REDIRECT
-A RINGMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A RINGMESH_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A RINGMESH_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j RINGMESH_IN_REDIRECT
-A RINGMESH_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A RINGMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A RINGMESH_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j RINGMESH_IN_REDIRECT
-A RINGMESH_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A RINGMESH_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A RINGMESH_OUTPUT -d 127.0.0.1/32 -j RETURN
-A RINGMESH_OUTPUT -j RINGMESH_REDIRECT
-A RINGMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

    #[test]
    fn defaults_golden_both_families() {
        let c = config(|_| {});
        assert_eq!(c, CaptureConfig::default());
        assert_eq!(c.apply_script(Family::V4, ""), GOLDEN_V4);
        let v6 = GOLDEN_V4
            .replace("127.0.0.6/32", "::6/128")
            .replace("127.0.0.1/32", "::1/128");
        assert_eq!(c.apply_script(Family::V6, ""), v6);
        assert!(c
            .apply_script(Family::V6, "")
            .contains("-A RINGMESH_OUTPUT -d ::1/128 -j RETURN\n"));
    }

    #[test]
    fn ports_and_ids() {
        let c = CaptureConfig::from_flags(16001, 16006, 1000, Some(2000), &lists()).unwrap();
        let r = c.rules(Family::V4);
        assert!(r.contains(&"-A RINGMESH_REDIRECT -p tcp -j REDIRECT --to-ports 16001".to_string()));
        assert!(r.contains(&"-A RINGMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006".to_string()));
        assert!(r.contains(&"-A RINGMESH_INBOUND -p tcp -m tcp --dport 16001 -j RETURN".to_string()));
        assert!(r.contains(&"-A RINGMESH_INBOUND -p tcp -m tcp --dport 16006 -j RETURN".to_string()));
        assert!(r.contains(&"-A RINGMESH_OUTPUT -m owner --uid-owner 1000 -j RETURN".to_string()));
        assert!(r.contains(&"-A RINGMESH_OUTPUT -m owner --gid-owner 2000 -j RETURN".to_string()));
        assert!(!r.iter().any(|l| l.contains("1337")));
    }

    #[test]
    fn outbound_ranges_include_split_by_family() {
        let c = config(|l| l.outbound_ip_ranges_include = "10.0.0.0/8, 192.168.1.7,fd00::/8".into());
        let (added, removed) = diff(&c, Family::V4);
        assert_eq!(
            added,
            [
                "-A RINGMESH_OUTPUT -d 10.0.0.0/8 -j RINGMESH_REDIRECT",
                "-A RINGMESH_OUTPUT -d 192.168.1.7/32 -j RINGMESH_REDIRECT",
            ]
        );
        assert_eq!(removed, ["-A RINGMESH_OUTPUT -j RINGMESH_REDIRECT"]);
        let (added, removed) = diff(&c, Family::V6);
        assert_eq!(added, ["-A RINGMESH_OUTPUT -d fd00::/8 -j RINGMESH_REDIRECT"]);
        assert_eq!(removed, ["-A RINGMESH_OUTPUT -j RINGMESH_REDIRECT"]);
        // An empty include list captures no outbound traffic.
        let c = config(|l| l.outbound_ip_ranges_include = String::new());
        assert!(!c.rules(Family::V4).iter().any(|r| r.ends_with("-j RINGMESH_REDIRECT")));
    }

    #[test]
    fn outbound_ranges_exclude_before_the_catch_all() {
        let c = config(|l| l.outbound_ip_ranges_exclude = "10.1.2.3/16,2001:db8::1/32".into());
        let (added, removed) = diff(&c, Family::V4);
        assert_eq!(added, ["-A RINGMESH_OUTPUT -d 10.1.0.0/16 -j RETURN"]);
        assert!(removed.is_empty());
        let r = c.rules(Family::V4);
        let pos = |s: &str| r.iter().position(|l| l == s).unwrap();
        assert!(pos("-A RINGMESH_OUTPUT -d 10.1.0.0/16 -j RETURN") < pos("-A RINGMESH_OUTPUT -j RINGMESH_REDIRECT"));
        assert_eq!(
            diff(&c, Family::V6).0,
            ["-A RINGMESH_OUTPUT -d 2001:db8::/32 -j RETURN"]
        );
    }

    #[test]
    fn inbound_ports_include_list() {
        let c = config(|l| l.inbound_ports_include = "8080,9090,15020".into());
        let (added, removed) = diff(&c, Family::V4);
        // 15020 is the proxy's own: never captured.
        assert_eq!(
            added,
            [
                "-A RINGMESH_INBOUND -p tcp -m tcp --dport 8080 -j RINGMESH_IN_REDIRECT",
                "-A RINGMESH_INBOUND -p tcp -m tcp --dport 9090 -j RINGMESH_IN_REDIRECT",
            ]
        );
        assert!(removed.contains(&"-A RINGMESH_INBOUND -p tcp -j RINGMESH_IN_REDIRECT".to_string()));
        assert!(removed.iter().all(|r| r.starts_with("-A RINGMESH_INBOUND")));
        // Empty: no inbound capture, and no jump from PREROUTING.
        let c = config(|l| l.inbound_ports_include = String::new());
        let r = c.rules(Family::V4);
        assert!(!r
            .iter()
            .any(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A RINGMESH_INBOUND")));
    }

    #[test]
    fn inbound_ports_exclude() {
        let c = config(|l| l.inbound_ports_exclude = "22,8443".into());
        let (added, removed) = diff(&c, Family::V4);
        assert_eq!(
            added,
            [
                "-A RINGMESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
                "-A RINGMESH_INBOUND -p tcp -m tcp --dport 8443 -j RETURN",
            ]
        );
        assert!(removed.is_empty());
        // Excluded from an include list too.
        let c = config(|l| {
            l.inbound_ports_include = "22,80".into();
            l.inbound_ports_exclude = "22".into();
        });
        let r = c.rules(Family::V4);
        assert!(r.contains(&"-A RINGMESH_INBOUND -p tcp -m tcp --dport 80 -j RINGMESH_IN_REDIRECT".to_string()));
        assert!(!r.iter().any(|l| l.contains("--dport 22 ")));
    }

    #[test]
    fn outbound_ports() {
        let c = config(|l| {
            l.outbound_ports_include = "3306".into();
            l.outbound_ports_exclude = "25,587".into();
        });
        let r = c.rules(Family::V4);
        let (added, removed) = diff(&c, Family::V4);
        assert_eq!(
            added,
            [
                "-A RINGMESH_OUTPUT -p tcp -m tcp --dport 25 -j RETURN",
                "-A RINGMESH_OUTPUT -p tcp -m tcp --dport 587 -j RETURN",
                "-A RINGMESH_OUTPUT -p tcp -m tcp --dport 3306 -j RINGMESH_REDIRECT",
            ]
        );
        assert!(removed.is_empty());
        // Excluded ports come first in the chain; included ones after the loopback RETURN.
        let first = r.iter().position(|l| l.starts_with("-A RINGMESH_OUTPUT")).unwrap();
        assert_eq!(r[first], "-A RINGMESH_OUTPUT -p tcp -m tcp --dport 25 -j RETURN");
        let pos = |s: &str| r.iter().position(|l| l == s).unwrap();
        assert!(
            pos("-A RINGMESH_OUTPUT -d 127.0.0.1/32 -j RETURN")
                < pos("-A RINGMESH_OUTPUT -p tcp -m tcp --dport 3306 -j RINGMESH_REDIRECT")
        );
    }

    #[test]
    fn kube_virt_interfaces() {
        let c = config(|l| {
            l.kube_virt_interfaces = "k6t-eth0".into();
            l.outbound_ip_ranges_exclude = "10.96.0.0/12".into();
        });
        let (added, _) = diff(&c, Family::V4);
        assert_eq!(
            added,
            [
                "-A RINGMESH_INBOUND -d 10.96.0.0/12 -i k6t-eth0 -j RETURN",
                "-A RINGMESH_INBOUND -i k6t-eth0 -j RINGMESH_REDIRECT",
                "-A RINGMESH_INBOUND -i k6t-eth0 -j RETURN",
                "-A RINGMESH_OUTPUT -d 10.96.0.0/12 -j RETURN",
            ]
        );
        let c = config(|l| {
            l.kube_virt_interfaces = "k6t-eth0".into();
            l.outbound_ip_ranges_include = "10.0.0.0/8".into();
        });
        assert!(c
            .rules(Family::V4)
            .contains(&"-A RINGMESH_INBOUND -d 10.0.0.0/8 -i k6t-eth0 -j RINGMESH_REDIRECT".to_string()));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let bad = |f: fn(&mut ListFlags), flag: &str| {
            let mut l = lists();
            f(&mut l);
            let e = CaptureConfig::from_flags(15001, 15006, 1337, None, &l).unwrap_err();
            assert_eq!(e.flag, flag, "{e}");
            assert!(e.to_string().starts_with(flag), "{e}");
        };
        bad(|l| l.inbound_ports_include = "80,0".into(), "--inbound-ports-include");
        bad(|l| l.inbound_ports_exclude = "65536".into(), "--inbound-ports-exclude");
        bad(|l| l.outbound_ports_include = "http".into(), "--outbound-ports-include");
        bad(|l| l.outbound_ports_exclude = "*".into(), "--outbound-ports-exclude");
        bad(
            |l| l.outbound_ip_ranges_include = "10.0.0.0/33".into(),
            "--outbound-ip-ranges-include",
        );
        bad(
            |l| l.outbound_ip_ranges_exclude = "10.0.0/8".into(),
            "--outbound-ip-ranges-exclude",
        );
        bad(
            |l| l.outbound_ip_ranges_exclude = "fd00::/129".into(),
            "--outbound-ip-ranges-exclude",
        );
        bad(|l| l.kube_virt_interfaces = "a/b".into(), "--kube-virt-interfaces");
        let e = CaptureConfig::from_flags(0, 15006, 1337, None, &lists()).unwrap_err();
        assert_eq!(e.flag, "--envoy-port");
        let e = CaptureConfig::from_flags(15001, 0, 1337, None, &lists()).unwrap_err();
        assert_eq!(e.flag, "--inbound-capture-port");
    }

    const SAVED: &str = "# Generated by iptables-nft-save v1.8.9 (nf_tables) on Mon Dec  7 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:OTHER - [0:0]
:RINGMESH_INBOUND - [0:0]
:RINGMESH_IN_REDIRECT - [0:0]
:RINGMESH_OUTPUT - [0:0]
:RINGMESH_REDIRECT - [0:0]
-A PREROUTING -p tcp -j RINGMESH_INBOUND
-A PREROUTING -j OTHER
-A OUTPUT -p tcp -j RINGMESH_OUTPUT
-A OUTPUT -d 10.0.0.1/32 -j RETURN
-A OTHER -j RINGMESH_REDIRECT_NOT_OURS
-A RINGMESH_OUTPUT -j RINGMESH_REDIRECT
COMMIT
";

    #[test]
    fn cleanup_removes_only_ours() {
        assert_eq!(
            cleanup_script(SAVED).unwrap(),
            "*nat
-F RINGMESH_INBOUND
-F RINGMESH_IN_REDIRECT
-F RINGMESH_OUTPUT
-F RINGMESH_REDIRECT
-D PREROUTING -p tcp -j RINGMESH_INBOUND
-D OUTPUT -p tcp -j RINGMESH_OUTPUT
-X RINGMESH_INBOUND
-X RINGMESH_IN_REDIRECT
-X RINGMESH_OUTPUT
-X RINGMESH_REDIRECT
COMMIT
"
        );
        // Nothing of ours: nothing to run.
        assert_eq!(
            cleanup_script("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j OTHER\nCOMMIT\n"),
            None
        );
        assert_eq!(cleanup_script(""), None);
    }

    #[test]
    fn reapply_deletes_the_old_jumps_first() {
        let s = CaptureConfig::default().apply_script(Family::V4, SAVED);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[5..7],
            [
                "-D PREROUTING -p tcp -j RINGMESH_INBOUND",
                "-D OUTPUT -p tcp -j RINGMESH_OUTPUT"
            ]
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| **l == "-A OUTPUT -p tcp -j RINGMESH_OUTPUT")
                .count(),
            1
        );
    }

    #[test]
    fn tools_per_backend() {
        assert_eq!(
            Backend::Nft.tools(Family::V6),
            ("ip6tables-nft-restore".into(), "ip6tables-nft-save".into())
        );
        assert_eq!(Backend::Legacy.tools(Family::V4).0, "iptables-legacy-restore");
        assert_eq!(Backend::Default.tools(Family::V4).1, "iptables-save");
    }
}
