//! Integration tests: the guests of `guests/` run against the host's
//! embedded backends. One binary (like wasmtime's test suite) so the host
//! is linked once.
//!
//! Test names follow `<port>_<scenario>_<backend>`.

mod bad_input;
mod blob;
mod broker_checks;
mod brokers;
mod canary;
mod cli;
mod custom_paths;
mod docs;
mod email_config;
mod example_app;
mod hostile_tenants;
mod http;
mod kv;
mod kv_backends;
mod messaging;
mod metering;
mod portability;
mod scale;
mod sdk;
mod services;
mod serving;
mod sql;
mod sql_mysql;
mod sql_postgres;
mod sql_tenancy;
mod templates;
mod tenants;
