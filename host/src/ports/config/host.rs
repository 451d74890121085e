//! WIT glue for `berth:infra/config`: a component sees only the keys its
//! manifest grants it.

use crate::bindings::ports::config::{self as wit, Error};
use crate::metrics::Port;
use crate::state::InstanceState;

impl wit::Host for InstanceState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, Error>> {
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
        Ok(r)
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, Error>> {
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
        Ok(r)
    }
}
