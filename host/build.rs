//! Compiles the standard WASI WIT Berth serves (that of the
//! wasmtime-wasi-http crate it links) into the binary, for `berth wit` and
//! the templates of `berth new`: `$OUT_DIR/wasi_wit.rs` holds
//! `WASI: &[(&str, &str)]`, file name and text of each package.

use std::path::PathBuf;

include!("wasi_wit.rs");

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("host/ is in the workspace");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-changed=wasi_wit.rs");
    let mut files = Vec::new();
    match wasi_http_wit(root) {
        Some(wit) => {
            for entry in std::fs::read_dir(wit.join("deps"))
                .expect("readable WIT")
                .flatten()
            {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "wit") {
                    files.push((entry.file_name().to_string_lossy().into_owned(), path));
                }
            }
        }
        None => println!(
            "cargo:warning=the WIT of wasmtime-wasi-http is not in cargo's source cache: `berth wit` and `berth new` will lack the WASI packages"
        ),
    }
    files.sort();
    let mut out = String::from(
        "/// The WASI packages Berth serves: file name and text.\npub const WASI: &[(&str, &str)] = &[\n",
    );
    for (name, path) in &files {
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out_dir.join("wasi_wit.rs"), out).expect("cannot write wasi_wit.rs");
}
