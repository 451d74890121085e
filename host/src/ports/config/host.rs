//! WIT glue for `berth:infra/config`: a component sees only the keys its
//! manifest grants it.

use crate::bindings::ports::config::{self as wit, Error};
use crate::metrics::Port;
use crate::state::InstanceState;

impl wit::Host for InstanceState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, Error>> {
        Ok(self.config_get(key))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, Error>> {
        Ok(self.config_get_all())
    }
}

impl InstanceState {
    /// The value of granted key `key`: the one implementation behind
    /// `berth:infra/config` and the standard `wasi:config` versions.
    pub(crate) fn config_get(&mut self, key: String) -> Result<Option<String>, Error> {
        let started = crate::metrics::Started::now();
        let r = if self.env.grants.config.contains(&key) {
            Ok(self.env.config.get(&key).map(|v| v.expose().to_string()))
        } else {
            crate::audit::refused(
                &self.env.app,
                &self.env.component,
                "config.not-granted",
                &key,
            );
            Err(Error::NotGranted(key.clone()))
        };
        self.meter(Port::Config, "get", &key, started, &r, key.len(), |v| {
            v.as_ref().map_or(0, String::len)
        });
        r
    }

    /// Every granted key and its value.
    pub(crate) fn config_get_all(&mut self) -> Result<Vec<(String, String)>, Error> {
        let started = crate::metrics::Started::now();
        let r: Result<_, Error> = Ok(self
            .env
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect::<Vec<_>>());
        self.meter(Port::Config, "get-all", "", started, &r, 0, |all| {
            all.iter().map(|(k, v)| k.len() + v.len()).sum()
        });
        r
    }
}
