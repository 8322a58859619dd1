//! The HTTP API, as API Gateway (HTTP API, payload format 2.0) serves it: a request matches one of
//! the routes the template's `HttpApi` events declare and goes to that function as an API Gateway
//! v2 event; the function's result becomes the response. Like API Gateway, an unknown route is
//! `404 {"message":"Not Found"}` and a failed function `500 {"message":"Internal Server Error"}`.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::front::Front;
use super::lambda::Outcome;

/// A route of the template: method, path pattern (`/runs/{run_id}`), function name.
#[derive(Clone, Debug)]
pub struct ApiRoute {
    pub method: String,
    pub pattern: String,
    pub function: String,
}

#[derive(Clone)]
pub struct Api {
    pub front: Front,
    pub routes: Arc<Vec<ApiRoute>>,
    pub domain: String,
}

fn matches(pattern: &str, path: &str) -> Option<Map<String, Value>> {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    if p.len() != s.len() {
        return None;
    }
    let mut params = Map::new();
    for (a, b) in p.iter().zip(&s) {
        match a.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            Some(name) if !b.is_empty() => {
                params.insert(name.into(), Value::String((*b).into()));
            }
            Some(_) => return None,
            None if a != b => return None,
            None => {}
        }
    }
    Some(params)
}

fn plain(status: u16, msg: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(json!({ "message": msg }).to_string()))
        .unwrap_or_default()
}

pub async fn handle(State(api): State<Api>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // API Gateway's payload limit.
    let Ok(body) = to_bytes(body, 10 * 1024 * 1024).await else {
        return plain(413, "Request Entity Too Large");
    };
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let Some((route, params)) = api.routes.iter().find_map(|r| {
        (r.method == method)
            .then(|| matches(&r.pattern, &path))
            .flatten()
            .map(|p| (r, p))
    }) else {
        return plain(404, "Not Found");
    };
    let mut headers = Map::new();
    for (k, v) in parts.headers.iter() {
        if let Ok(v) = v.to_str() {
            let k = k.as_str().to_ascii_lowercase();
            let merged = match headers.get(&k).and_then(Value::as_str) {
                Some(prev) => format!("{prev},{v}"),
                None => v.to_string(),
            };
            headers.insert(k, Value::String(merged));
        }
    }
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let query: Map<String, Value> = tokenops::http::parse_query(&raw_query)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let (body_text, b64) = match std::str::from_utf8(&body) {
        Ok(t) => (t.to_string(), false),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&body),
            true,
        ),
    };
    let now = tokenops::ids::now();
    let request_id = ulid::Ulid::new().to_string();
    let route_key = format!("{} {}", route.method, route.pattern);
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": super::template::ACCOUNT,
            "apiId": "emulator",
            "domainName": api.domain,
            "domainPrefix": "emulator",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("user-agent").cloned().unwrap_or(Value::String(String::new())),
            },
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": tokenops::ids::rfc3339(now),
            "timeEpoch": now.unix_timestamp() * 1000,
        },
        "isBase64Encoded": b64,
    });
    if !params.is_empty() {
        event["pathParameters"] = Value::Object(params);
    }
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    if !body.is_empty() {
        event["body"] = Value::String(body_text);
    }
    let payload = event.to_string().into_bytes();
    match api.front.invoke(&route.function, payload).await {
        Some(Outcome::Ok(out)) => proxy_result(&out),
        Some(Outcome::FunctionError { error_type, .. }) => {
            tracing::warn!(function = %route.function, %error_type, "function error behind the API");
            plain(500, "Internal Server Error")
        }
        None => plain(500, "Internal Server Error"),
    }
}

/// `{statusCode, headers, body, isBase64Encoded, cookies}` → HTTP response.
fn proxy_result(out: &[u8]) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(out) else {
        return plain(500, "Internal Server Error");
    };
    let status = v["statusCode"].as_u64().unwrap_or(200) as u16;
    let body = match v["body"].as_str() {
        Some(b) if v["isBase64Encoded"] == true => base64::engine::general_purpose::STANDARD
            .decode(b)
            .unwrap_or_default(),
        Some(b) => b.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let mut b = Response::builder().status(status);
    if let Some(h) = v["headers"].as_object() {
        for (k, val) in h {
            if let Some(s) = val.as_str() {
                b = b.header(k, s);
            }
        }
    }
    if let Some(cookies) = v["cookies"].as_array() {
        for c in cookies.iter().filter_map(Value::as_str) {
            b = b.header("set-cookie", c);
        }
    }
    b.body(Body::from(body)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns_bind_path_parameters() {
        let p = matches("/runs/{run_id}/cancel", "/runs/run_1/cancel").unwrap();
        assert_eq!(p["run_id"], "run_1");
        assert!(matches("/runs/{run_id}", "/runs/").is_none());
        assert!(matches("/runs/{run_id}", "/runs/a/b").is_none());
        assert!(matches("/ledger/verify", "/ledger/verify")
            .unwrap()
            .is_empty());
    }
}
