//! HTTP routing: one function per endpoint.

use berth_bindings::blob::Container;
use berth_bindings::kv::Bucket;
use berth_bindings::logging::Level;
use berth_bindings::{config, log};
use serde::Deserialize;
use serde_json::json;
use wasip2::http::types::{IncomingRequest, Method};

use crate::http::{ApiError, BodyStream, Response};
use crate::repository::{RepoError, UserRepository};
use crate::{avatars, notify};

/// The logical resources this component uses; `berth.toml` grants each one.
const DATABASE: &str = "main";
const AVATARS: &str = "avatars";
const COUNTERS: &str = "counters";

/// How long an avatar URL stays valid.
const AVATAR_URL_SECS: u32 = 3600;

/// Largest accepted JSON request body.
const MAX_JSON_BYTES: usize = 16 * 1024;

/// Routes `request` to its endpoint.
pub fn handle(request: &IncomingRequest) -> Result<Response, ApiError> {
    let path_and_query = request.path_with_query().unwrap_or_default();
    let path = path_and_query.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

    match (request.method(), segments.as_slice()) {
        (Method::Post, ["users"]) => create_user(request),
        (Method::Get, ["users", id]) => get_user(parse_id(id)?),
        (Method::Put, ["users", id, "avatar"]) => put_avatar(request, parse_id(id)?),
        (Method::Get, ["stats"]) => stats(),
        (_, ["users"] | ["users", _] | ["users", _, "avatar"] | ["stats"]) => {
            Err(ApiError::new(405, "method not allowed"))
        }
        _ => Err(ApiError::not_found("no such route")),
    }
}

/// A user id from the path; anything that is not one cannot name a user.
fn parse_id(segment: &str) -> Result<i64, ApiError> {
    segment
        .parse()
        .map_err(|_| ApiError::not_found("no such user"))
}

/// The body of `POST /users`.
#[derive(Deserialize)]
struct NewUser {
    name: String,
    email: String,
}

/// `POST /users`: creates a user, then announces and welcomes them.
fn create_user(request: &IncomingRequest) -> Result<Response, ApiError> {
    let body = BodyStream::open(request)?.read_to_end(MAX_JSON_BYTES)?;
    let new: NewUser = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let (name, email) = (new.name.trim(), new.email.trim());
    if name.is_empty() || !email.contains('@') {
        return Err(ApiError::bad_request(
            "a name and a valid email are required",
        ));
    }

    let users = UserRepository::open(DATABASE)?;
    let user = match users.create(name, email) {
        Ok(user) => user,
        Err(RepoError::DuplicateEmail) => {
            return Err(ApiError::new(409, "a user with this email already exists"));
        }
        Err(RepoError::Sql(e)) => return Err(e.into()),
    };
    log(
        Level::Info,
        "user created",
        &[("user_id", &user.id.to_string())],
    );

    notify::user_created(&user);
    Ok(Response::json(201, &user))
}

/// `GET /users/{id}`.
fn get_user(id: i64) -> Result<Response, ApiError> {
    let users = UserRepository::open(DATABASE)?;
    match users.find(id)? {
        Some(user) => Ok(Response::json(200, &user)),
        None => Err(ApiError::not_found("no such user")),
    }
}

/// `PUT /users/{id}/avatar`: stores the body as the user's avatar.
fn put_avatar(request: &IncomingRequest, id: i64) -> Result<Response, ApiError> {
    if !UserRepository::open(DATABASE)?.exists(id)? {
        return Err(ApiError::not_found("no such user"));
    }
    let container = Container::open(AVATARS)?;
    let key = avatars::key(id);
    let info = avatars::store(&container, &key, BodyStream::open(request)?)?;
    log(
        Level::Info,
        "avatar stored",
        &[
            ("user_id", &id.to_string()),
            ("bytes", &info.size.to_string()),
        ],
    );

    // A time-limited URL the client can fetch the image from directly.
    let url = container.url(&key, AVATAR_URL_SECS)?;
    Ok(Response::json(200, &json!({ "url": url })))
}

/// `GET /stats`: the count kept by `welcome-worker`, and the configured greeting.
fn stats() -> Result<Response, ApiError> {
    let counters = Bucket::open(COUNTERS)?;
    // `kv.increment` stores counters as decimal text; absent means zero.
    let users_created = match counters.get("users_created")? {
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| ApiError::internal("users_created is not a number", bytes))?,
        None => 0,
    };
    let greeting = config::get("greeting")?.unwrap_or_default();
    Ok(Response::json(
        200,
        &json!({ "users_created": users_created, "greeting": greeting }),
    ))
}
