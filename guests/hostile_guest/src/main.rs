//! Misbehaving guest (`wasi:cli/run` command) for the host's sandbox limits.
//!
//! Modes (argv[1]):
//! - `loop`: spins forever; the host must interrupt it (fuel or epoch).
//! - `memory`: allocates 1 MiB chunks until the memory limit stops it.
//! - `recursion`: recurses until the stack overflows.
//! - `host-call-loop`: calls `config::get` forever; host calls must not
//!   escape the time limit.
//! - `not-granted-sql`: opens the ungranted db `forbidden`, expects
//!   not-granted and exits normally.
//! - `handles`: opens connections to `main` a million times, keeping them
//!   all; the host's handle limit must stop it.

use std::hint::black_box;

use berth_bindings::{config, sql};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.get(1..).unwrap_or_default() {
        ["loop"] => spin(),
        ["memory"] => exhaust_memory(),
        ["recursion"] => {
            let depth = recurse(black_box(0));
            println!("hostile: recursion returned {depth}?!");
        }
        ["host-call-loop"] => host_call_loop(),
        ["not-granted-sql"] => not_granted_sql(),
        ["handles"] => hoard_handles(),
        other => panic!("usage: hostile_guest loop|memory|recursion|host-call-loop|not-granted-sql|handles; got {other:?}"),
    }
}

fn hoard_handles() {
    let mut kept = Vec::new();
    for i in 0..1_000_000 {
        match sql::Connection::open("main") {
            Ok(conn) => kept.push(conn),
            Err(e) => {
                println!("hostile: open number {i} failed: {e:?}");
                return;
            }
        }
    }
    println!("hostile: holding {} handles?!", kept.len());
}

fn spin() -> ! {
    println!("hostile: spinning forever");
    let mut counter: u64 = 0;
    loop {
        // black_box hides the counter from the optimizer, so the loop stays.
        counter = black_box(counter.wrapping_add(1));
    }
}

fn exhaust_memory() {
    const MIB: usize = 1024 * 1024;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        println!("hostile: holding {} MiB", hoard.len());
        // Filled, not just reserved, so every page is really touched.
        let chunk = vec![(hoard.len() % 251) as u8 + 1; MIB];
        hoard.push(black_box(chunk));
    }
}

/// Non-tail recursion with a live stack buffer in every frame.
/// The base case exists only to satisfy the compiler; no stack gets there.
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let frame = black_box([depth as u8; 256]);
    let below = recurse(black_box(depth + 1));
    below + u64::from(frame[(depth % 256) as usize])
}

fn host_call_loop() -> ! {
    println!("hostile: calling the host forever");
    loop {
        black_box(config::get("greeting").ok());
    }
}

fn not_granted_sql() {
    match sql::Connection::open("forbidden") {
        Err(sql::Error::NotGranted(_)) => println!("hostile: forbidden db is not-granted ok"),
        Err(e) => panic!("open forbidden: expected NotGranted, got {e:?}"),
        Ok(_) => panic!("open forbidden: expected NotGranted, got a connection"),
    }
}
