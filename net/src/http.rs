//! The HTTP API (axum). Handlers only translate: HTTP in, a `node::Request` to the node task,
//! its `Response` back out as HTTP. Keys are raw bytes taken from the percent-encoded path, so
//! keys that are not UTF-8 work.

// Handlers return `Result<_, HttpResponse>` so `?` turns any failure into its HTTP answer; the
// error is built once per request, so its size costs nothing worth boxing.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{any, get, post};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use corecache_core::node::{BatchOp, Condition, ErrorKind, Request, Response};
use serde::Deserialize;
use serde_json::json;

use crate::driver::NodeHandle;
use crate::metrics::Metrics;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Set once the database is open (WAL replayed); until then the node is not ready.
    pub node: Arc<OnceLock<NodeHandle>>,
    pub metrics: Arc<Metrics>,
    pub max_key_bytes: usize,
    pub max_body_bytes: usize,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/kv", get(kv_scan).fallback(method_not_allowed))
        .route("/v1/kv/", any(kv_key))
        .route("/v1/kv/{*key}", any(kv_key))
        .route("/v1/batch", post(batch).fallback(method_not_allowed))
        .route("/add/", post(seed_add).fallback(method_not_allowed))
        .route("/get/", get(seed_get).fallback(method_not_allowed))
        .route("/delete/", post(seed_delete).fallback(method_not_allowed))
        .route("/livez", get(livez).fallback(method_not_allowed))
        .route("/readyz", get(readyz).fallback(method_not_allowed))
        .route("/metrics", get(metrics).fallback(method_not_allowed))
        .route("/v1/status", get(status).fallback(method_not_allowed))
        .fallback(not_found_route)
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    let mut r = (
        status,
        axum::Json(json!({"error": message.into(), "code": code})),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

async fn method_not_allowed() -> HttpResponse {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

async fn not_found_route() -> HttpResponse {
    error(StatusCode::NOT_FOUND, "no_route", "no such route")
}

fn not_ready() -> HttpResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "the node is starting (replaying its log)",
    )
}

/// Decodes `%XX` escapes into bytes; anything malformed is an error.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(format!("bad percent-encoding at byte {i}"));
                };
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Query parameters as raw bytes (values may be any bytes, percent-encoded).
fn query_params(query: Option<&str>) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = String::from_utf8(percent_decode(k, true)?)
            .map_err(|_| "query parameter names must be UTF-8".to_string())?;
        out.push((k, percent_decode(v, true)?));
    }
    Ok(out)
}

fn param<'a>(params: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn http_date(ms: u64) -> HeaderValue {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).unwrap_or(HeaderValue::from_static(""))
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Maps a node response to HTTP.
fn to_http(r: Response) -> HttpResponse {
    match r {
        Response::Value {
            value,
            version,
            created_ms,
            modified_ms,
        } => {
            let mut resp = (StatusCode::OK, value).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(header::ETAG, etag(version));
            h.insert(header::LAST_MODIFIED, http_date(modified_ms));
            h.insert("x-created-at", http_date(created_ms));
            resp
        }
        Response::NotFound => error(StatusCode::NOT_FOUND, "not_found", "key not found"),
        Response::Written { version } => {
            let mut resp =
                (StatusCode::OK, axum::Json(json!({ "version": version }))).into_response();
            resp.headers_mut().insert(header::ETAG, etag(version));
            resp
        }
        Response::Deleted { .. } => StatusCode::NO_CONTENT.into_response(),
        Response::PreconditionFailed { current } => {
            let msg = match current {
                Some(v) => format!("precondition failed: the key's version is {v}"),
                None => "precondition failed: the key does not exist".to_string(),
            };
            error(StatusCode::PRECONDITION_FAILED, "precondition_failed", msg)
        }
        Response::Page { items, next_after } => {
            let items: Vec<_> = items
                .into_iter()
                .map(|i| {
                    json!({
                        "key": STANDARD.encode(&i.key),
                        "value": STANDARD.encode(&i.value),
                        "version": i.version,
                    })
                })
                .collect();
            let continuation = next_after.map(|k| URL_SAFE_NO_PAD.encode(k));
            axum::Json(json!({ "items": items, "continuation": continuation })).into_response()
        }
        Response::Error { kind, message } => match kind {
            ErrorKind::BadRequest => error(StatusCode::BAD_REQUEST, "bad_request", message),
            ErrorKind::TooLarge => error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message),
            ErrorKind::Unavailable => {
                error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            ErrorKind::Internal => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        },
    }
}

fn condition(headers: &HeaderMap) -> Result<Condition, HttpResponse> {
    let bad = |what: &str| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed {what} header"),
        )
    };
    if let Some(v) = headers.get(header::IF_MATCH) {
        let s = v.to_str().map_err(|_| bad("If-Match"))?.trim();
        if s == "*" {
            return Ok(Condition::IfExists);
        }
        let s = s.strip_prefix("W/").unwrap_or(s).trim_matches('"');
        return s
            .parse()
            .map(Condition::IfMatch)
            .map_err(|_| bad("If-Match"));
    }
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if v.to_str().map_err(|_| bad("If-None-Match"))?.trim() == "*" {
            return Ok(Condition::IfAbsent);
        }
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "If-None-Match supports only *",
        ));
    }
    Ok(Condition::None)
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, HttpResponse> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body over the {limit}-byte limit (or unreadable)"),
        )
    })
}

fn node(state: &AppState) -> Result<&NodeHandle, HttpResponse> {
    state.node.get().ok_or_else(not_ready)
}

/// Runs `f`, recording the route, status and latency.
async fn timed<F>(state: &AppState, route: &'static str, f: F) -> HttpResponse
where
    F: std::future::Future<Output = Result<HttpResponse, HttpResponse>>,
{
    let start = Instant::now();
    let resp = f.await.unwrap_or_else(|e| e);
    state
        .metrics
        .observe_request(route, resp.status().as_u16(), start.elapsed());
    resp
}

async fn kv_key(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    let route = match *req.method() {
        Method::GET | Method::HEAD => "kv_get",
        Method::PUT => "kv_put",
        Method::DELETE => "kv_delete",
        _ => "other",
    };
    let st = state.clone();
    timed(&state, route, async move {
        let path = req.uri().path();
        let raw = path.strip_prefix("/v1/kv/").unwrap_or("");
        let key = percent_decode(raw, false).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("bad key: {e}"),
            )
        })?;
        if key.len() > st.max_key_bytes {
            return Err(error(
                StatusCode::URI_TOO_LONG,
                "too_large",
                format!(
                    "key of {} bytes is over the {}-byte limit",
                    key.len(),
                    st.max_key_bytes
                ),
            ));
        }
        let node = node(&st)?;
        let request = match *req.method() {
            Method::GET | Method::HEAD => Request::Get { key },
            Method::PUT => {
                let cond = condition(req.headers())?;
                let value = read_body(req.into_body(), st.max_body_bytes).await?;
                Request::Put {
                    key,
                    value: value.to_vec(),
                    cond,
                }
            }
            Method::DELETE => Request::Delete {
                key,
                cond: condition(req.headers())?,
            },
            _ => return Err(method_not_allowed().await),
        };
        Ok(to_http(node.call(request).await))
    })
    .await
}

async fn kv_scan(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    let st = state.clone();
    timed(&state, "kv_scan", async move {
        let bad = |m: String| error(StatusCode::BAD_REQUEST, "bad_request", m);
        let params = query_params(req.uri().query()).map_err(bad)?;
        let limit = match param(&params, "limit") {
            None => 100,
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad("limit must be a positive integer".into()))?,
        };
        let after = match param(&params, "continuation") {
            None => None,
            Some(t) => Some(
                URL_SAFE_NO_PAD
                    .decode(t)
                    .map_err(|_| bad("malformed continuation token".into()))?,
            ),
        };
        let request = match (param(&params, "prefix"), param(&params, "start")) {
            (Some(_), Some(_)) => return Err(bad("use prefix or start/end, not both".into())),
            (Some(p), None) => Request::scan_prefix(p.to_vec(), after, limit),
            (None, start) => Request::Scan {
                start: start.unwrap_or_default().to_vec(),
                end: param(&params, "end").map(<[u8]>::to_vec),
                after,
                limit,
            },
        };
        Ok(to_http(node(&st)?.call(request).await))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    ops: Vec<BatchOpBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchOpBody {
    op: String,
    key: String,
    value: Option<String>,
}

async fn batch(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    let st = state.clone();
    timed(&state, "batch", async move {
        let bad = |m: String| error(StatusCode::BAD_REQUEST, "bad_request", m);
        let body = read_body(req.into_body(), st.max_body_bytes).await?;
        let parsed: BatchBody =
            serde_json::from_slice(&body).map_err(|e| bad(format!("bad batch JSON: {e}")))?;
        let mut ops = Vec::with_capacity(parsed.ops.len());
        for (i, op) in parsed.ops.into_iter().enumerate() {
            let key = STANDARD
                .decode(&op.key)
                .map_err(|_| bad(format!("op {i}: key is not base64")))?;
            match (op.op.as_str(), op.value) {
                ("put", Some(v)) => {
                    let value = STANDARD
                        .decode(&v)
                        .map_err(|_| bad(format!("op {i}: value is not base64")))?;
                    ops.push(BatchOp::Put(key, value));
                }
                ("put", None) => return Err(bad(format!("op {i}: put needs a value"))),
                ("delete", None) => ops.push(BatchOp::Delete(key)),
                ("delete", Some(_)) => return Err(bad(format!("op {i}: delete takes no value"))),
                (other, _) => return Err(bad(format!("op {i}: unknown op `{other}`"))),
            }
        }
        let n = ops.len() as u64;
        match node(&st)?.call(Request::Batch { ops }).await {
            // The ops take consecutive versions, in order; `version` is the last one.
            Response::Written { version } => {
                let versions: Vec<u64> =
                    (version.saturating_add(1).saturating_sub(n)..=version).collect();
                let mut resp =
                    axum::Json(json!({ "version": version, "versions": versions })).into_response();
                resp.headers_mut().insert(header::ETAG, etag(version));
                Ok(resp)
            }
            other => Ok(to_http(other)),
        }
    })
    .await
}

#[derive(Deserialize)]
struct SeedAdd {
    key: String,
    value: String,
}

fn seed_key(req: &HttpRequest) -> Result<Vec<u8>, HttpResponse> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "bad_request", m);
    let params = query_params(req.uri().query()).map_err(bad)?;
    param(&params, "key")
        .map(<[u8]>::to_vec)
        .ok_or_else(|| bad("missing ?key=".into()))
}

async fn seed_add(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    let st = state.clone();
    timed(&state, "seed_add", async move {
        let body = read_body(req.into_body(), st.max_body_bytes).await?;
        let add: SeedAdd = serde_json::from_slice(&body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected JSON {{\"key\", \"value\"}}: {e}"),
            )
        })?;
        let request = Request::Put {
            key: add.key.clone().into_bytes(),
            value: add.value.clone().into_bytes(),
            cond: Condition::None,
        };
        match node(&st)?.call(request).await {
            Response::Written { version } => Ok(axum::Json(json!({
                "key": add.key, "value": add.value, "version": version,
            }))
            .into_response()),
            other => Ok(to_http(other)),
        }
    })
    .await
}

async fn seed_get(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    let st = state.clone();
    timed(&state, "seed_get", async move {
        let key = seed_key(&req)?;
        if key.len() > st.max_key_bytes {
            return Err(error(StatusCode::URI_TOO_LONG, "too_large", "key too long"));
        }
        match node(&st)?.call(Request::Get { key: key.clone() }).await {
            Response::Value {
                value, modified_ms, ..
            } => Ok(axum::Json(json!({
                "key": String::from_utf8_lossy(&key),
                "value": String::from_utf8_lossy(&value),
                "timestamp": modified_ms as f64 / 1000.0,
                "deleted": false,
            }))
            .into_response()),
            other => Ok(to_http(other)),
        }
    })
    .await
}

async fn seed_delete(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    let st = state.clone();
    timed(&state, "seed_delete", async move {
        let key = seed_key(&req)?;
        if key.len() > st.max_key_bytes {
            return Err(error(StatusCode::URI_TOO_LONG, "too_large", "key too long"));
        }
        let request = Request::Delete {
            key: key.clone(),
            cond: Condition::None,
        };
        match node(&st)?.call(request).await {
            Response::Deleted { .. } => Ok(axum::Json(json!({
                "key": String::from_utf8_lossy(&key), "deleted": true,
            }))
            .into_response()),
            other => Ok(to_http(other)),
        }
    })
    .await
}

async fn livez() -> HttpResponse {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<AppState>) -> HttpResponse {
    match state.node.get() {
        Some(_) => axum::Json(json!({"status": "ready"})).into_response(),
        None => not_ready(),
    }
}

async fn metrics(State(state): State<AppState>) -> HttpResponse {
    let (engine, waiting) = match state.node.get() {
        Some(n) => (n.db().stats(), n.stats().await.waiting_for_persist),
        None => (Default::default(), 0),
    };
    let mut resp = state.metrics.render(&engine, waiting).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

async fn status(State(state): State<AppState>) -> HttpResponse {
    let Some(n) = state.node.get() else {
        return not_ready();
    };
    let s = n.db().stats();
    let Some(c) = n.cluster().await else {
        return not_ready();
    };
    let partitions: serde_json::Map<String, serde_json::Value> = c
        .owners
        .iter()
        .enumerate()
        .map(|(p, owner)| (p.to_string(), json!(owner)))
        .collect();
    axum::Json(json!({
        "node_id": n.node_id(),
        "role": c.role.as_str(),
        "leader": c.leader,
        "epoch": c.epoch,
        "members": c.members,
        "partition_count": c.owners.len(),
        "partition_map_version": c.map_version,
        "partitions": partitions,
        "engine": {
            "last_seq": s.last_seq,
            "memtable_bytes": s.memtable_bytes,
            "immutable_memtables": s.immutable_memtables,
            "tables_per_level": s.tables_per_level,
            "bytes_per_level": s.bytes_per_level,
            "table_bytes_total": s.table_bytes_total,
            "block_cache_bytes": s.block_cache_bytes,
            "flushes": s.flushes,
            "compactions": s.compactions,
            "write_stalls": s.write_stalls,
            "wal_syncs": s.wal_syncs,
            "background_errors": s.background_errors,
            "last_background_error": s.last_background_error,
        },
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict_and_byte_exact() {
        assert_eq!(
            percent_decode("a%2Fb%FF%00", false).unwrap(),
            b"a/b\xff\x00"
        );
        assert_eq!(percent_decode("a+b", false).unwrap(), b"a+b");
        assert_eq!(percent_decode("a+b", true).unwrap(), b"a b");
        assert!(percent_decode("%zz", false).is_err());
        assert!(percent_decode("%4", false).is_err());
        assert!(percent_decode("abc%", false).is_err());
    }
}
