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
use corecache_core::proto::{BatchOp, Condition, ErrorKind, Request, Response};
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
        .route(
            "/v1/admin/decommission",
            post(decommission).fallback(method_not_allowed),
        )
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

/// The one mapping from the node's error kinds to HTTP: status, `code` (the status's class,
/// as it always was) and `reason` (the kind itself, for clients that tell them apart).
fn node_error(kind: ErrorKind, message: String) -> HttpResponse {
    let (status, code) = match kind {
        ErrorKind::BadRequest | ErrorKind::SpansNodes => (StatusCode::BAD_REQUEST, "bad_request"),
        ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        ErrorKind::NotReady
        | ErrorKind::OwnerDown
        | ErrorKind::Moving
        | ErrorKind::Stalled
        | ErrorKind::OutcomeUnknown
        | ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let body = json!({"error": message, "code": code, "reason": kind.as_str()});
    let mut r = (status, axum::Json(body)).into_response();
    if kind.is_retryable() {
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

/// Query parameters as raw bytes (values may be any bytes, percent-encoded; `+` is a space).
/// Names must decode to UTF-8. Pairs keep their order; a pair without `=` has an empty value.
pub fn query_params(query: Option<&str>) -> Result<Vec<(String, Vec<u8>)>, String> {
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

/// Why a key taken from a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Malformed (bad percent-encoding, a missing parameter): 400.
    Malformed(String),
    /// The decoded key is longer than the limit: 414.
    TooLong { len: usize, max: usize },
}

/// The key of a `/v1/kv/{key}` route from the raw (still percent-encoded) path after `/v1/kv/`:
/// `%XX` escapes become bytes, `+` stays `+`, anything else is taken as is. Malformed escapes are
/// refused, and so is a decoded key over `max_key_bytes`.
pub fn decode_key_path(raw: &str, max_key_bytes: usize) -> Result<Vec<u8>, KeyError> {
    let key = percent_decode(raw, false).map_err(KeyError::Malformed)?;
    if key.len() > max_key_bytes {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: max_key_bytes,
        });
    }
    Ok(key)
}

/// The query of `GET /v1/kv` as the scan it asks for: `prefix`, or `start`/`end` (not both
/// kinds), `limit` (a positive integer, 100 when absent) and `continuation` (the `next_after`
/// key of the previous page, unpadded base64url). Errors are the 400 message.
pub fn parse_scan_query(query: Option<&str>) -> Result<Request, String> {
    let params = query_params(query)?;
    let limit = match param(&params, "limit") {
        None => 100,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| "limit must be a positive integer".to_string())?,
    };
    let after = match param(&params, "continuation") {
        None => None,
        Some(t) => Some(
            URL_SAFE_NO_PAD
                .decode(t)
                .map_err(|_| "malformed continuation token".to_string())?,
        ),
    };
    Ok(match (param(&params, "prefix"), param(&params, "start")) {
        (Some(_), Some(_)) => return Err("use prefix or start/end, not both".into()),
        (Some(p), None) => Request::scan_prefix(p.to_vec(), after, limit),
        (None, start) => Request::Scan {
            start: start.unwrap_or_default().to_vec(),
            end: param(&params, "end").map(<[u8]>::to_vec),
            after,
            limit,
        },
    })
}

/// The body of `POST /v1/batch`, `{"ops":[{"op":"put","key":B64,"value":B64},
/// {"op":"delete","key":B64}]}` with keys and values in standard base64, as its ops in order.
/// Unknown fields, a put without a value and a delete with one are refused. Errors are the 400
/// message.
pub fn parse_batch_body(body: &[u8]) -> Result<Vec<BatchOp>, String> {
    let parsed: BatchBody =
        serde_json::from_slice(body).map_err(|e| format!("bad batch JSON: {e}"))?;
    let mut ops = Vec::with_capacity(parsed.ops.len());
    for (i, op) in parsed.ops.into_iter().enumerate() {
        let key = STANDARD
            .decode(&op.key)
            .map_err(|_| format!("op {i}: key is not base64"))?;
        match (op.op.as_str(), op.value) {
            ("put", Some(v)) => {
                let value = STANDARD
                    .decode(&v)
                    .map_err(|_| format!("op {i}: value is not base64"))?;
                ops.push(BatchOp::Put(key, value));
            }
            ("put", None) => return Err(format!("op {i}: put needs a value")),
            ("delete", None) => ops.push(BatchOp::Delete(key)),
            ("delete", Some(_)) => return Err(format!("op {i}: delete takes no value")),
            (other, _) => return Err(format!("op {i}: unknown op `{other}`")),
        }
    }
    Ok(ops)
}

/// The body of the prototype's `POST /add/`, `{"key": "...", "value": "..."}` (JSON strings,
/// stored as their UTF-8 bytes; other fields are ignored), as `(key, value)`. Errors are the
/// 400 message.
pub fn parse_seed_add(body: &[u8]) -> Result<(String, String), String> {
    // serde would also build the struct from a two-element array; only an object is meant.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("expected a JSON object {\"key\", \"value\"}".into());
    }
    let add: SeedAdd = serde_json::from_slice(body)
        .map_err(|e| format!("expected JSON {{\"key\", \"value\"}}: {e}"))?;
    Ok((add.key, add.value))
}

/// The key of the prototype's `GET /get/?key=` and `POST /delete/?key=`: the first `key`
/// parameter of the query, percent-decoded (`+` is a space). Refused when the query is
/// malformed, `key` is missing, or the key is over `max_key_bytes`.
pub fn seed_query_key(query: Option<&str>, max_key_bytes: usize) -> Result<Vec<u8>, KeyError> {
    let params = query_params(query).map_err(KeyError::Malformed)?;
    let key = param(&params, "key")
        .map(<[u8]>::to_vec)
        .ok_or_else(|| KeyError::Malformed("missing ?key=".into()))?;
    if key.len() > max_key_bytes {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: max_key_bytes,
        });
    }
    Ok(key)
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
        Response::Accepted => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "status": "accepted" })),
        )
            .into_response(),
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
        Response::Error { kind, message } => node_error(kind, message),
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

/// How long a client may take to send a request body once its head is in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a whole request body: 413 past `limit`, 400 for a body that cannot be read (broken
/// chunked framing, a connection closed early), 408 for one that takes longer than
/// [`BODY_READ_TIMEOUT`] (a client trickling bytes would otherwise hold its buffer forever).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, HttpResponse> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut too_large = false;
            while let Some(s) = source {
                too_large |= s.is::<http_body_util::LengthLimitError>();
                source = s.source();
            }
            Err(if too_large {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request body over the {limit}-byte limit"),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("the request body could not be read: {e}"),
                )
            })
        }
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request body took longer than {BODY_READ_TIMEOUT:?}"),
        )),
    }
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
        let key = decode_key_path(raw, st.max_key_bytes).map_err(|e| match e {
            KeyError::Malformed(e) => error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("bad key: {e}"),
            ),
            KeyError::TooLong { len, max } => error(
                StatusCode::URI_TOO_LONG,
                "too_large",
                format!("key of {len} bytes is over the {max}-byte limit"),
            ),
        })?;
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
        let request = parse_scan_query(req.uri().query())
            .map_err(|m| error(StatusCode::BAD_REQUEST, "bad_request", m))?;
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
        let ops = parse_batch_body(&body).map_err(bad)?;
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

fn seed_key(req: &HttpRequest, max_key_bytes: usize) -> Result<Vec<u8>, HttpResponse> {
    seed_query_key(req.uri().query(), max_key_bytes).map_err(|e| match e {
        KeyError::Malformed(m) => error(StatusCode::BAD_REQUEST, "bad_request", m),
        KeyError::TooLong { .. } => error(StatusCode::URI_TOO_LONG, "too_large", "key too long"),
    })
}

async fn seed_add(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    let st = state.clone();
    timed(&state, "seed_add", async move {
        let body = read_body(req.into_body(), st.max_body_bytes).await?;
        let (key, value) =
            parse_seed_add(&body).map_err(|m| error(StatusCode::BAD_REQUEST, "bad_request", m))?;
        let request = Request::Put {
            key: key.clone().into_bytes(),
            value: value.clone().into_bytes(),
            cond: Condition::None,
        };
        match node(&st)?.call(request).await {
            Response::Written { version } => Ok(axum::Json(json!({
                "key": key, "value": value, "version": version,
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
        let key = seed_key(&req, st.max_key_bytes)?;
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
        let key = seed_key(&req, st.max_key_bytes)?;
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
        Some(n) if n.ready() => axum::Json(json!({"status": "ready"})).into_response(),
        Some(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            "the node knows no partition map yet (no leader has written one)",
        ),
        None => not_ready(),
    }
}

async fn metrics(State(state): State<AppState>) -> HttpResponse {
    let (engine, stats) = match state.node.get() {
        Some(n) => (n.db().stats(), n.stats().await),
        None => (Default::default(), Default::default()),
    };
    let mut text = state.metrics.render(&engine, stats.waiting_for_persist);
    crate::metrics::render_replication(&mut text, &stats.replication);
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// `POST /v1/admin/decommission[?node=ID]`: move every partition off `node` (default: this
/// node). Answers 202 at once; `/v1/status` shows the partitions leaving it.
async fn decommission(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> HttpResponse {
    let Some(n) = state.node.get() else {
        return not_ready();
    };
    let mut node = n.node_id().to_string();
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (k, percent_decode(v, true).map(String::from_utf8)) {
            ("node", Ok(Ok(v))) if !v.is_empty() => node = v,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("unexpected query parameter `{pair}` (only node=ID)"),
                )
            }
        }
    }
    to_http(
        n.admin(corecache_core::proto::AdminCommand::Decommission { node })
            .await,
    )
}

/// Per partition: its primary, configuration (primary, backups and learners), the copies in
/// sync (primary and backups: every acknowledged write is on each) and its epoch.
fn replicas_json(
    c: &corecache_core::node::ClusterView,
) -> serde_json::Map<String, serde_json::Value> {
    c.owners
        .iter()
        .enumerate()
        .map(|(p, primary)| {
            let r = c.replicas.get(p).cloned().unwrap_or_default();
            let mut in_sync = vec![primary.clone()];
            in_sync.extend(r.backups.iter().cloned());
            let mut configuration = in_sync.clone();
            configuration.extend(r.learners.iter().cloned());
            let entry = json!({
                "primary": primary,
                "configuration": configuration,
                "in_sync": in_sync,
                "learners": r.learners,
                "eligible": r.eligible,
                "epoch": r.epoch,
            });
            (p.to_string(), entry)
        })
        .collect()
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
        "moving": c.moving.iter().map(|(p, to)| (p.to_string(), json!(to))).collect::<serde_json::Map<_, _>>(),
        "leaving": c.leaving,
        "replication_factor": c.replication_factor,
        "under_replicated_partitions": c.under_replicated,
        "replicas": replicas_json(&c),
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
    fn the_seed_add_body_must_be_an_object() {
        assert_eq!(
            parse_seed_add(br#" {"key":"a","value":"b"}"#).unwrap(),
            ("a".to_string(), "b".to_string())
        );
        assert!(parse_seed_add(br#"["a","b"]"#).is_err());
        assert!(parse_seed_add(b"").is_err());
    }

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

    #[test]
    fn key_paths_decode_and_respect_the_limit() {
        assert_eq!(decode_key_path("a%2Fb+c", 8).unwrap(), b"a/b+c");
        assert_eq!(decode_key_path("%FF%00", 2).unwrap(), b"\xff\x00");
        assert_eq!(
            decode_key_path("%FF%00", 1),
            Err(KeyError::TooLong { len: 2, max: 1 })
        );
        assert!(matches!(
            decode_key_path("a%g0", 8),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn scan_queries_parse() {
        assert_eq!(
            parse_scan_query(None).unwrap(),
            Request::Scan {
                start: vec![],
                end: None,
                after: None,
                limit: 100
            }
        );
        assert_eq!(
            parse_scan_query(Some("prefix=a%FF&limit=5&continuation=YQ")).unwrap(),
            Request::scan_prefix(b"a\xff".to_vec(), Some(b"a".to_vec()), 5)
        );
        assert_eq!(
            parse_scan_query(Some("start=a+b&end=c")).unwrap(),
            Request::Scan {
                start: b"a b".to_vec(),
                end: Some(b"c".to_vec()),
                after: None,
                limit: 100
            }
        );
        for bad in [
            "limit=0",
            "limit=x",
            "prefix=a&start=b",
            "continuation=YQ=",
            "a=%",
        ] {
            assert!(parse_scan_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn batch_bodies_parse() {
        let ops = parse_batch_body(
            br#"{"ops":[{"op":"put","key":"YQ==","value":"MQ=="},{"op":"delete","key":"Yg=="}]}"#,
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![
                BatchOp::Put(b"a".to_vec(), b"1".to_vec()),
                BatchOp::Delete(b"b".to_vec())
            ]
        );
        for bad in [
            &br#"{"ops":[{"op":"put","key":"YQ=="}]}"#[..],
            br#"{"ops":[{"op":"delete","key":"YQ==","value":""}]}"#,
            br#"{"ops":[{"op":"get","key":"YQ=="}]}"#,
            br#"{"ops":[{"op":"delete","key":"!"}]}"#,
            br#"{"ops":[],"x":1}"#,
            b"",
        ] {
            assert!(parse_batch_body(bad).is_err());
        }
    }

    #[test]
    fn seed_routes_parse() {
        assert_eq!(
            parse_seed_add(br#"{"key":"k","value":"v","extra":1}"#).unwrap(),
            ("k".to_string(), "v".to_string())
        );
        assert!(parse_seed_add(br#"{"key":"k"}"#).is_err());
        assert_eq!(seed_query_key(Some("key=a+b%21"), 8).unwrap(), b"a b!");
        assert!(matches!(
            seed_query_key(Some("x=1"), 8),
            Err(KeyError::Malformed(_))
        ));
        assert_eq!(
            seed_query_key(Some("key=abc"), 2),
            Err(KeyError::TooLong { len: 3, max: 2 })
        );
    }
}
