//! WIT glue for `berth:infra/config`: a component sees only the keys its
//! manifest grants it.

use crate::bindings::ports::config::{self as wit, Error};
use crate::state::InstanceState;

impl wit::Host for InstanceState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, Error>> {
        if !self.env.grants.config.contains(&key) {
            crate::audit::refused(
                &self.env.app,
                &self.env.component,
                "config.not-granted",
                &key,
            );
            return Ok(Err(Error::NotGranted(key)));
        }
        Ok(Ok(self
            .env
            .config
            .get(&key)
            .map(|v| v.expose().to_string())))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, Error>> {
        Ok(Ok(self
            .env
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect()))
    }
}
