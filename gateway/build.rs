//! Embeds the console: generates `$OUT_DIR/console_assets.rs`, a table of every file
//! under `assets/console` (compiled from `client-ts/console` and committed, so building
//! the gateway needs no Node) as `(path, include_bytes!(…))`, sorted by path.

// Cargo reads a build script's instructions from its standard output.
#![allow(clippy::print_stdout)]

use std::{
    env, fs,
    path::{Path, PathBuf},
};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.join("assets").join("console");
    // A directory: cargo re-runs this script when any file below it changes.
    println!("cargo:rerun-if-changed=assets/console");
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    assert!(
        files.iter().any(|f| f == "index.html"),
        "{} has no index.html: run `npm run console:assets` in client-ts",
        root.display()
    );
    files.sort();
    let mut out = String::from("/// The console's files: (path below `/console/`, contents), sorted by path.\n");
    out.push_str("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for rel in &files {
        let abs = root.join(rel);
        out.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", abs.to_string_lossy()));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("console_assets.rs");
    fs::write(&dest, out).expect("write console_assets.rs");
}

/// Collects the paths of the files below `dir`, relative to `root`, `/`-separated.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("below the root");
            let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            out.push(parts.join("/"));
        }
    }
}
