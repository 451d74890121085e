//! `[app_config]` of the host config: the operator's config values per app.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[app_config]`: per app, config keys and their values. Derefs to the
/// map; its `Debug` shows the keys only, since a value may be a literal
/// secret, so no `?host` in a log line or an error can print one.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct AppConfigValues(pub BTreeMap<String, BTreeMap<String, String>>);

impl std::ops::Deref for AppConfigValues {
    type Target = BTreeMap<String, BTreeMap<String, String>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for AppConfigValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(app, values)| (app, values.keys().collect::<Vec<_>>())),
            )
            .finish()
    }
}
