//! Link flags for the binaries of the packages that name this file as their build script
//! (`ringmesh-proxy`, `ringmesh-bench`, which runs the proxy embedded), and of
//! `ringmesh-control`, whose own build script calls [`main`] too.

use std::fmt::Write as _;
use std::path::Path;

pub(crate) fn main() {
    println!("cargo:rerun-if-changed=../build/link.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
        || std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu")
    {
        return;
    }
    // Packed relative relocations (DT_RELR, glibc 2.36+): a position-independent binary needs
    // tens of thousands of relative relocations; as RELA entries they are ~480 KiB that the
    // loader reads, and keeps resident, at every start. Packed they take a few KiB. Idle RSS of
    // ringmesh-proxy, the same build with and without, side by side: 8.5–8.8 MiB and 7.7 MiB.
    // ASLR stays.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    if std::env::var("CARGO_PKG_NAME").as_deref() == Ok("ringmesh-proxy") {
        symbol_order();
    }
}

/// The proxy's functions laid out in the order of `dataplane/link-order/symbols.txt`: the ones
/// a proxy runs (start-up, config, the request path, admin) packed together at the front of
/// its text, most executed first.
///
/// Why: a file mapping's page fault maps the 64 KiB around the page (the kernel's fault-around,
/// which no `madvise` turns off), and in the default layout the ~1,500 functions a proxy runs
/// are spread over 9 MB of text, so touching 2.4 MiB of pages made 5.3 MiB resident. Packed,
/// they fill few windows, and the request path's hot functions share pages and TLB entries.
///
/// How: a linker script that LLD (the toolchain's linker) takes beside its default layout
/// (`INSERT`) lists the functions' input sections (`-ffunction-sections`, rustc's default, with
/// LLVM's `unlikely`/`hot` prefixes) at the head of `.text`; every other function follows in
/// the usual order, in the same section (profilers and debuggers see one `.text`). Each name is
/// matched exactly, then with its symbol hash left open: the hash changes with the features
/// Cargo unifies for a build (`-p ringmesh-proxy` alone, or beside the bench or the control
/// plane), and a name's other instantiations are close kin. A name the binary no longer has is
/// simply not matched. The list is refreshed from a profile by `dataplane/link-order/refresh.sh`.
///
/// Only in release builds for x86_64 Linux with the toolchain's own LLD (Rust ≥ 1.90): a
/// linker the user chose (mold has no linker scripts) or GNU ld is left alone.
fn symbol_order() {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("link-order/symbols.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let chosen_linker = std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || std::env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"));
    if std::env::var("PROFILE").as_deref() != Ok("release")
        || std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64")
        || chosen_linker
        || !rustc_links_with_lld()
    {
        return;
    }
    let Ok(names) = std::fs::read_to_string(&list) else {
        return;
    };
    let script = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("link-order.ld");
    std::fs::write(&script, linker_script(&names)).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}

/// The linker script for `names` (mangled, one a line): each exact name, then each name with
/// its hash open (legacy `17h<16 hex>E` and v0 crate disambiguators `Cs<base62>_`), in order.
fn linker_script(names: &str) -> String {
    let names: Vec<&str> = names
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.$".contains(&b)))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut s = String::from(
        "/* Written by build/link.rs from dataplane/link-order/symbols.txt. */\nSECTIONS {\n  .text : {\n",
    );
    let exact = names.iter().map(|n| n.to_string());
    let open = names.iter().map(|n| open_hash(n));
    for pattern in exact.chain(open) {
        if seen.insert(pattern.clone()) {
            let _ = writeln!(s, "    *(.text.{pattern} .text.unlikely.{pattern} .text.hot.{pattern})");
        }
    }
    s.push_str("  }\n} INSERT AFTER .init;\n");
    s
}

/// `name` with its hashes replaced by `*`.
fn open_hash(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while !rest.is_empty() {
        // Legacy: "17h" + 16 hex digits + "E", then anything (an LLVM clone's ".123").
        if let Some(tail) = rest.strip_prefix("17h") {
            if tail.len() >= 17
                && tail.as_bytes()[..16].iter().all(u8::is_ascii_hexdigit)
                && tail.as_bytes()[16] == b'E'
            {
                out.push_str("17h*E*");
                return out;
            }
        }
        // v0: a crate root "Cs" + base-62 disambiguator + "_".
        if let Some(tail) = rest.strip_prefix("Cs") {
            let len = tail.bytes().take_while(u8::is_ascii_alphanumeric).count();
            if len > 0 && tail.as_bytes().get(len) == Some(&b'_') {
                out.push_str("Cs*_");
                rest = &tail[len + 1..];
                continue;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Rust 1.90 and later link `x86_64-unknown-linux-gnu` with their own LLD by default.
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("-V").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let mut parts = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (1, 90)
}
