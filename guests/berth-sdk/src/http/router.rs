//! Routing requests to handlers by method and path pattern.

use super::{Request, Response};
use crate::Result;

type Handler = Box<dyn Fn(&Request) -> Result<Response>>;

/// Routes by method and path pattern to handlers.
///
/// Patterns are matched segment by segment: literal segments match
/// themselves, `{name}` matches any one segment (read it with
/// [`Request::param`]), and a final `...` matches the rest of the path.
/// Routes are tried in the order they were added. A path no route matches
/// gets `404`; a path matched for another method gets `405`. A handler's
/// `Err` becomes the response of [`Response::from`]`(Error)`.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

struct Route {
    method: String,
    pattern: Vec<Segment>,
    handler: Handler,
}

enum Segment {
    Literal(String),
    Param(String),
    Rest,
}

impl Router {
    /// A router without routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `method` requests matching `pattern` to `handler`.
    pub fn route(
        mut self,
        method: &str,
        pattern: &str,
        handler: impl Fn(&Request) -> Result<Response> + 'static,
    ) -> Self {
        self.routes.push(Route {
            method: method.to_ascii_uppercase(),
            pattern: parse(pattern),
            handler: Box::new(handler),
        });
        self
    }

    /// Routes `GET` (and `HEAD`) requests.
    pub fn get(
        self,
        pattern: &str,
        handler: impl Fn(&Request) -> Result<Response> + 'static,
    ) -> Self {
        self.route("GET", pattern, handler)
    }

    /// Routes `POST` requests.
    pub fn post(
        self,
        pattern: &str,
        handler: impl Fn(&Request) -> Result<Response> + 'static,
    ) -> Self {
        self.route("POST", pattern, handler)
    }

    /// Routes `PUT` requests.
    pub fn put(
        self,
        pattern: &str,
        handler: impl Fn(&Request) -> Result<Response> + 'static,
    ) -> Self {
        self.route("PUT", pattern, handler)
    }

    /// Routes `DELETE` requests.
    pub fn delete(
        self,
        pattern: &str,
        handler: impl Fn(&Request) -> Result<Response> + 'static,
    ) -> Self {
        self.route("DELETE", pattern, handler)
    }

    /// The response of the first route matching `request`.
    pub fn handle(&self, mut request: Request) -> Response {
        let segments: Vec<String> = split(&request.path).map(str::to_owned).collect();
        let mut path_matched = false;
        for route in &self.routes {
            let Some(params) = matches(&route.pattern, &segments) else {
                continue;
            };
            path_matched = true;
            let method_ok = route.method == request.method
                || (route.method == "GET" && request.method == "HEAD");
            if !method_ok {
                continue;
            }
            request.params = params;
            return (route.handler)(&request).unwrap_or_else(Response::from);
        }
        if path_matched {
            Response::text(405, "method not allowed")
        } else {
            Response::not_found()
        }
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn parse(pattern: &str) -> Vec<Segment> {
    split(pattern)
        .map(|s| {
            if s == "..." {
                Segment::Rest
            } else if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Segment::Param(name.to_owned())
            } else {
                Segment::Literal(s.to_owned())
            }
        })
        .collect()
}

fn matches(pattern: &[Segment], path: &[String]) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    for (i, segment) in pattern.iter().enumerate() {
        match segment {
            Segment::Rest => {
                params.push((
                    "...".to_owned(),
                    path.get(i..).unwrap_or_default().join("/"),
                ));
                return Some(params);
            }
            Segment::Literal(lit) => {
                if path.get(i) != Some(lit) {
                    return None;
                }
            }
            Segment::Param(name) => params.push((name.clone(), path.get(i)?.clone())),
        }
    }
    (pattern.len() == path.len()).then_some(params)
}
