//! # std_config_guest: portability of the standard `wasi:config`
//!
//! Bindings come from the standard WIT alone (`wit/std/`), as a component
//! written for another host would have them. `std_config_guest <key>...`
//! reads each key through both versions and prints one line per read:
//! `<version> get <key> = <value>`, `… = none` or `… error <message>`, then
//! `<version> get-all <k>=<v>,…`.

mod rc1 {
    wit_bindgen::generate!({
        path: "../../wit/std/config-0.2.0-rc.1",
        world: "wasi:config/imports",
    });
}

mod draft {
    wit_bindgen::generate!({
        path: "../../wit/std/config-0.2.0-draft-2024-09-27",
        world: "wasi:config/imports",
    });
}

macro_rules! read_all {
    ($version:ident, $name:literal, $keys:expr) => {{
        use $version::wasi::config::store;
        for key in $keys {
            match store::get(key) {
                Ok(Some(value)) => println!("{} get {key} = {value}", $name),
                Ok(None) => println!("{} get {key} = none", $name),
                Err(store::Error::Upstream(m) | store::Error::Io(m)) => {
                    println!("{} get {key} error {m}", $name)
                }
            }
        }
        match store::get_all() {
            Ok(all) => {
                let pairs: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("{} get-all {}", $name, pairs.join(","));
            }
            Err(e) => println!("{} get-all error {e:?}", $name),
        }
    }};
}

fn main() {
    let keys: Vec<String> = std::env::args().skip(1).collect();
    read_all!(rc1, "0.2.0-rc.1", &keys);
    read_all!(draft, "0.2.0-draft-2024-09-27", &keys);
}
