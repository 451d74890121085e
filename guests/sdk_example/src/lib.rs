//! A Berth HTTP component written with `berth-sdk`: the `UserRepository`
//! of a layered application in a few lines, plus the other ports.
//!
//! | Route | Port |
//! |---|---|
//! | `POST /users` (`name,email`), `GET /users`, `GET /users/{id}`, `DELETE /users/{id}` | SQL through [`Repository`] |
//! | `POST /users/batch` (one `name,email` per line, all or nothing) | SQL transaction |
//! | `GET /visits` | key-value counter |
//! | `PUT /files/{name}`, `GET /files/{name}` | blob |
//! | `GET /config/{key}` | config |
//! | `GET /upstream` | outbound HTTP to the `upstream_url` config value |

use berth_sdk::http::{Request, Response, Router};
use berth_sdk::sql::{Database, FromRow, Row, Transaction, Value};
use berth_sdk::{blob, config, http, kv, params, Entity, Error, Repository, Result};
use serde_json::json;

/// A row of `users`.
struct User {
    id: i64,
    name: String,
    email: String,
}

impl FromRow for User {
    fn from_row(row: &Row<'_>) -> Result<Self> {
        Ok(User {
            id: row.get("id")?,
            name: row.get("name")?,
            email: row.get("email")?,
        })
    }
}

impl Entity for User {
    const TABLE: &'static str = "users";
    const COLUMNS: &'static [&'static str] = &["id", "name", "email"];

    fn values(&self) -> Vec<Value> {
        params![self.id, &self.name, &self.email].to_vec()
    }
}

impl User {
    fn to_json(&self) -> serde_json::Value {
        json!({ "id": self.id, "name": self.name, "email": self.email })
    }

    /// Parses `name,email`, with a fresh id from the `counters` bucket.
    fn parse(line: &str) -> Result<Self> {
        let (name, email) = line
            .split_once(',')
            .map(|(n, e)| (n.trim(), e.trim()))
            .filter(|(n, e)| !n.is_empty() && e.contains('@'))
            .ok_or_else(|| Error::BadRequest(format!("`{line}` is not `name,email`")))?;
        let id = kv::Bucket::open("counters")?.increment("user-id", 1)?;
        Ok(User {
            id,
            name: name.to_owned(),
            email: email.to_owned(),
        })
    }
}

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS users (id BIGINT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE)";

fn users() -> Result<Repository<User>> {
    let db = Database::open("main")?;
    db.execute(SCHEMA, &[])?;
    Ok(Repository::new(db))
}

fn create_user(req: &Request) -> Result<Response> {
    let user = User::parse(req.text()?)?;
    users()?.insert(&user)?;
    Ok(Response::json(201, user.to_json().to_string()))
}

fn list_users(_: &Request) -> Result<Response> {
    let all: Vec<_> = users()?.all()?.iter().map(User::to_json).collect();
    Ok(Response::json(200, json!(all).to_string()))
}

fn get_user(req: &Request) -> Result<Response> {
    Ok(match users()?.find(req.param_as::<i64>("id")?)? {
        Some(user) => Response::json(200, user.to_json().to_string()),
        None => Response::not_found(),
    })
}

fn delete_user(req: &Request) -> Result<Response> {
    let deleted = users()?.delete(req.param_as::<i64>("id")?)?;
    Ok(Response::empty(if deleted { 204 } else { 404 }))
}

/// Inserts every line in one transaction: a bad line or a duplicate email
/// leaves the table as it was.
fn create_batch(req: &Request) -> Result<Response> {
    let repository = users()?;
    let count = repository.database().transaction(|tx: &Transaction| {
        let mut count = 0;
        for line in req.text()?.lines().filter(|l| !l.trim().is_empty()) {
            let user = User::parse(line)?;
            tx.execute(
                "INSERT INTO users (id, name, email) VALUES (?, ?, ?)",
                &user.values(),
            )?;
            count += 1;
        }
        Ok(count)
    })?;
    Ok(Response::json(201, json!({ "created": count }).to_string()))
}

fn visits(_: &Request) -> Result<Response> {
    let n = kv::Bucket::open("counters")?.increment("visits", 1)?;
    Ok(Response::text(200, n.to_string()))
}

fn put_file(req: &Request) -> Result<Response> {
    let info = blob::Container::open("files")?.put(&name_param(req)?, req.body())?;
    Ok(Response::json(
        201,
        json!({ "size": info.size }).to_string(),
    ))
}

fn get_file(req: &Request) -> Result<Response> {
    // A missing object is `Error::Blob(NotFound)`, which the router answers
    // with 404.
    let data = blob::Container::open("files")?.get(&name_param(req)?)?;
    Ok(Response::bytes(200, "application/octet-stream", data))
}

fn name_param(req: &Request) -> Result<String> {
    req.param_as("name")
}

fn get_config(req: &Request) -> Result<Response> {
    let key = req.param("key").unwrap_or_default();
    Ok(match config::get(key) {
        Ok(Some(value)) => Response::text(200, value),
        Ok(None) => Response::not_found(),
        Err(Error::Config(config::ConfigError::NotGranted(_))) => {
            Response::text(403, format!("config key `{key}` is not granted"))
        }
        Err(e) => return Err(e),
    })
}

fn upstream(_: &Request) -> Result<Response> {
    let url = config::require("upstream_url")?;
    let response = http::get(&format!("{url}/ping"))?;
    Ok(Response::text(
        200,
        format!("{} {}", response.status(), response.text_body()?),
    ))
}

fn handle(req: Request) -> Response {
    Router::new()
        .post("/users", create_user)
        .get("/users", list_users)
        .post("/users/batch", create_batch)
        .get("/users/{id}", get_user)
        .delete("/users/{id}", delete_user)
        .get("/visits", visits)
        .put("/files/{name}", put_file)
        .get("/files/{name}", get_file)
        .get("/config/{key}", get_config)
        .get("/upstream", upstream)
        .handle(req)
}

berth_sdk::http_handler!(handle);
