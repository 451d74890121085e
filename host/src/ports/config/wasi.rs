//! The standard `wasi:config/store` interface, at the two versions other
//! hosts serve (`0.2.0-rc.1`, wasmtime's; `0.2.0-draft-2024-09-27`,
//! Spin's), so a component written against either runs on Berth unchanged.
//! Both answer from the same granted keys as `berth:infra/config`, metered
//! and audited alike; a key the manifest does not grant is an `upstream`
//! error naming it.

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::ports::config::Error as BerthError;
use crate::state::InstanceState;

mod rc1 {
    wasmtime::component::bindgen!({
        path: "../wit/std/config-0.2.0-rc.1",
        world: "wasi:config/imports",
        imports: { default: trappable },
    });
}

mod draft {
    wasmtime::component::bindgen!({
        path: "../wit/std/config-0.2.0-draft-2024-09-27",
        world: "wasi:config/imports",
        imports: { default: trappable },
    });
}

/// The versions linked, for messages naming what this host provides.
pub const VERSIONS: &[&str] = &["0.2.0-rc.1", "0.2.0-draft-2024-09-27"];

/// Links both versions of `wasi:config/store`.
pub fn add_to_linker(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
    rc1::wasi::config::store::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
        .map_err(anyhow::Error::from)?;
    draft::wasi::config::store::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
        .map_err(anyhow::Error::from)?;
    Ok(())
}

/// The standard error's message for a Berth config error.
fn message(e: BerthError) -> String {
    match e {
        BerthError::NotGranted(key) => {
            format!("config key `{key}` is not granted to this component")
        }
        BerthError::Unavailable(why) => why,
    }
}

macro_rules! store_host {
    ($version:ident) => {
        impl $version::wasi::config::store::Host for InstanceState {
            fn get(
                &mut self,
                key: String,
            ) -> wasmtime::Result<Result<Option<String>, $version::wasi::config::store::Error>>
            {
                Ok(self
                    .config_get(key)
                    .map_err(|e| $version::wasi::config::store::Error::Upstream(message(e))))
            }

            fn get_all(
                &mut self,
            ) -> wasmtime::Result<
                Result<Vec<(String, String)>, $version::wasi::config::store::Error>,
            > {
                Ok(self
                    .config_get_all()
                    .map_err(|e| $version::wasi::config::store::Error::Upstream(message(e))))
            }
        }
    };
}

store_host!(rc1);
store_host!(draft);
