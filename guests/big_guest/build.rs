//! Generates `FUNCTIONS` distinct small functions, a table that keeps every
//! one alive, and `DATA_BYTES` of pseudo-random data.

use std::fmt::Write as _;

const FUNCTIONS: usize = 9_000;
const DATA_BYTES: usize = 1 << 20;

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let mut code = String::new();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..FUNCTIONS {
        let (a, b, c) = (next(), next() | 1, next());
        let (r, l) = (next() % 63 + 1, next() % 63 + 1);
        writeln!(
            code,
            "#[inline(never)] fn f{i}(x: u64) -> u64 {{ let y = (x ^ {a}).wrapping_mul({b}); (y ^ (y >> {r})).rotate_left({l}).wrapping_add({c}) }}"
        )
        .unwrap();
    }
    write!(
        code,
        "pub static FUNCTIONS: [fn(u64) -> u64; {FUNCTIONS}] = ["
    )
    .unwrap();
    for i in 0..FUNCTIONS {
        write!(code, "f{i},").unwrap();
    }
    code.push_str("];\n");
    std::fs::write(out.join("generated.rs"), code).unwrap();
    let data: Vec<u8> = (0..DATA_BYTES).map(|_| next() as u8).collect();
    std::fs::write(out.join("data.bin"), data).unwrap();
    println!("cargo:rerun-if-changed=build.rs");
}
