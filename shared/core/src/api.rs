//! What every API-facing handler shares: authentication, idempotency, owner-scoped reads and the
//! run record. Functions call [`serve`], which wraps their operation in these rules.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Ctx;
use crate::error::{ApiError, StoreError};
use crate::http::{match_route, ApiRequest, ApiResponse, Op};
use crate::model::FullLoopPayload;
use crate::store::{Cond, Item, Key, Store, Write};

/// The authenticated agent (None on public routes).
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    pub agent_id: Option<String>,
}

impl Caller {
    pub fn agent(&self) -> Result<&str, ApiError> {
        self.agent_id
            .as_deref()
            .ok_or_else(|| ApiError::unauthorized("an access key is required"))
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn access_key_item_key(access_key: &str) -> Key {
    Key::new(format!("KEY#{}", sha256_hex(access_key.as_bytes())), "KEY")
}

/// `Authorization: Bearer <access key>` → the agent; keys are looked up by hash only. The scheme
/// is case-insensitive (RFC 9110 §11.1); every 401 carries the `WWW-Authenticate` challenge,
/// with `error="invalid_token"` once a bearer key was presented (RFC 6750 §3).
pub async fn authenticate<S: Store>(store: &S, req: &ApiRequest) -> Result<Caller, ApiError> {
    let raw = req
        .header("authorization")
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <access key>"))?;
    let key = raw
        .trim_start()
        .split_once([' ', '\t'])
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, k)| k.trim())
        .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <access key>'"))?;
    if key.is_empty() || key.len() > 200 {
        return Err(ApiError::invalid_token("malformed access key"));
    }
    let item = store
        .get(&access_key_item_key(key))
        .await?
        .ok_or_else(|| ApiError::invalid_token("unknown access key"))?;
    Ok(Caller {
        agent_id: item.owner,
    })
}

/// An `Idempotency-Key` in force for this request.
#[derive(Clone, Debug)]
pub struct Idem {
    key: Key,
    request_hash: String,
    ttl: i64,
    /// Response fields that are secrets: stored (and so replayed) without them.
    redact: &'static [&'static str],
    /// Set once this request's response is stored under the key (by [`commit`]).
    stored: Arc<AtomicBool>,
    /// The claim token when the key was claimed before an operation with an outside effect.
    claim: Option<String>,
}

/// Operations whose effect leaves the store (an HTTP POST to the agent): the key is claimed
/// before the effect, so concurrent same-key requests cannot each cause it.
const CLAIMED: &[Op] = &[Op::RedeliverCallback];

/// A claim older than this was left by a crashed request: another may take it over.
const CLAIM_LEASE_SECS: i64 = 60;

/// Responses of these operations carry secrets, so they are never stored for replay; they are
/// single-use by construction instead (a second claim is refused).
const NOT_REPLAYED: &[Op] = &[Op::ClaimCredentials];

/// One-time secrets in a response: the idempotency record keeps the response without them, so a
/// replay returns the same agent but never a secret stored in plaintext (spec §7).
fn redacted_fields(operation: Op) -> &'static [&'static str] {
    match operation {
        Op::CreateAgent => &["claim_token"],
        _ => &[],
    }
}

/// What identifies "the same request" for a replay: method, path and body.
pub fn request_hash(req: &ApiRequest) -> String {
    let mut h = Sha256::new();
    for part in [
        req.method.as_bytes(),
        b" ",
        req.path.as_bytes(),
        b"\n",
        &req.body,
    ] {
        h.update(part);
    }
    hex::encode(h.finalize())
}

impl Idem {
    /// A replay scope that is not a client's key but a subject of the request: an x402
    /// payment, whose first response every resend of it gets.
    pub fn for_subject(subject: &str, request_hash: String, ttl: i64) -> Idem {
        Idem {
            key: Key::new(format!("IDEM#{subject}"), "IDEM"),
            request_hash,
            ttl,
            redact: &[],
            stored: Arc::default(),
            claim: None,
        }
    }

    /// The response stored under this scope, if any (422 if it was stored for another request).
    pub async fn stored<S: Store>(&self, store: &S) -> Result<Option<ApiResponse>, ApiError> {
        replay(store, self).await
    }
}

async fn idempotency_start<S: Store>(
    ctx: &Ctx<S>,
    req: &ApiRequest,
    caller: &Caller,
) -> Result<Result<Option<Idem>, ApiResponse>, ApiError> {
    let Some(k) = req.header("idempotency-key") else {
        return Ok(Ok(None));
    };
    if req.method != "POST" || NOT_REPLAYED.contains(&req.operation) {
        return Ok(Ok(None));
    }
    if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "Idempotency-Key",
            "must be 1–255 printable ASCII characters",
        ));
    }
    // Agents' keys are theirs; an anonymous caller's are scoped by the route's subject (the
    // provider that signs confirmations) or by the client address, so one caller's key cannot
    // collide with another's.
    let scope = match (&caller.agent_id, req.params.get("provider")) {
        (Some(agent), _) => agent.clone(),
        (None, Some(provider)) => format!("provider:{provider}"),
        (None, None) => format!(
            "anon:{}",
            &sha256_hex(req.source_ip.as_deref().unwrap_or("unknown").as_bytes())[..32]
        ),
    };
    let idem = Idem {
        key: Key::new(format!("IDEM#{scope}#{}", sha256_hex(k.as_bytes())), "IDEM"),
        request_hash: request_hash(req),
        ttl: crate::ids::now().unix_timestamp() + ctx.config.idempotency_ttl_secs,
        redact: redacted_fields(req.operation),
        stored: Arc::default(),
        claim: None,
    };
    match replay(&ctx.store, &idem).await? {
        Some(resp) => Ok(Err(resp)),
        None if CLAIMED.contains(&req.operation) => claim(&ctx.store, idem).await,
        None => Ok(Ok(Some(idem))),
    }
}

/// Claims the key before an outside effect: the first request gets it; a concurrent one with the
/// same key gets 409 `idempotency-key-in-use` (Retry-After), a later one the stored response.
async fn claim<S: Store>(
    store: &S,
    mut idem: Idem,
) -> Result<Result<Option<Idem>, ApiResponse>, ApiError> {
    let token = ulid::Ulid::new().to_string();
    let now = crate::ids::now().unix_timestamp();
    let mut item = Item::new(idem.key.clone(), "idempotency", None, serde_json::json!({}))
        .attr("request_hash", idem.request_hash.clone())
        .attr("claim", token.clone())
        .num("claimed_at", now);
    item.ttl = Some(idem.ttl);
    let write = match store.get(&idem.key).await? {
        None => Write::create(item),
        Some(old) if old.get_attr("claim").is_some() && old.get_num("status") == 0 => {
            if old.get_attr("request_hash") != Some(idem.request_hash.as_str()) {
                return Err(key_reused());
            }
            if now - old.get_num("claimed_at") < CLAIM_LEASE_SECS {
                return Err(in_use());
            }
            // The claimant died mid-request (no response after the lease): take it over.
            let old_token = old.get_attr("claim").unwrap_or_default().to_string();
            Write::put_if(item, vec![Cond::AttrEq("claim".into(), old_token)])
        }
        // Completed meanwhile: its response.
        Some(_) => return replay(store, &idem).await.map(|r| r.map_or(Ok(None), Err)),
    };
    match store.transact(vec![write]).await {
        Ok(()) => {
            idem.claim = Some(token);
            Ok(Ok(Some(idem)))
        }
        Err(StoreError::ConditionFailed) => Err(in_use()),
        Err(e) => Err(e.into()),
    }
}

fn key_reused() -> ApiError {
    ApiError::new(
        422,
        "idempotency-key-reused",
        "Idempotency-Key reused",
        "this Idempotency-Key was used with a different request",
        Some("Idempotency-Key"),
    )
}

fn in_use() -> ApiError {
    ApiError::conflict(
        "idempotency-key-in-use",
        "Idempotency-Key",
        "a request with this Idempotency-Key is in progress; retry after it finishes",
    )
    .with_header("retry-after", "1")
}

/// After the operation: a response not stored yet is stored under the key (so a later request
/// with the key gets it), unless another request stored one first — then that one is returned,
/// so every request with one key sees the first response. Server errors are not stored: the
/// claim, if any, is given back so a retry can run.
async fn settle<S: Store>(
    store: &S,
    idem: &Idem,
    res: Result<ApiResponse, ApiError>,
) -> Result<ApiResponse, ApiError> {
    match &res {
        Ok(resp)
            if !idem.stored.load(Ordering::SeqCst)
                && resp.status < 500
                && resp.header("idempotent-replayed").is_none() =>
        {
            let c = Commit {
                writes: vec![],
                response: resp.clone(),
            };
            match commit(store, Some(idem), c).await {
                Ok(r) => Ok(r),
                Err(e) => {
                    tracing::warn!(error = %e, "idempotent response not stored");
                    res
                }
            }
        }
        Ok(resp) if resp.status < 500 => res,
        _ => {
            if let Some(token) = &idem.claim {
                let release = Write::Delete {
                    key: idem.key.clone(),
                    conds: vec![Cond::AttrEq("claim".into(), token.clone())],
                };
                if let Err(e) = store.transact(vec![release]).await {
                    tracing::warn!(error = %e, "idempotency claim not released; it lapses");
                }
            }
            res
        }
    }
}

/// The stored response for this key, or 422 if the key was used with another request.
async fn replay<S: Store>(store: &S, idem: &Idem) -> Result<Option<ApiResponse>, ApiError> {
    let Some(item) = store.get(&idem.key).await? else {
        return Ok(None);
    };
    if item.get_attr("request_hash") != Some(idem.request_hash.as_str()) {
        return Err(key_reused());
    }
    if item.get_num("status") == 0 {
        return Ok(None); // claimed, no response yet
    }
    let status = item.get_num("status") as u16;
    let body = item
        .doc
        .get("body")
        .map(|b| b.to_string().into_bytes())
        .unwrap_or_default();
    let ct = item
        .get_attr("content_type")
        .unwrap_or("application/json")
        .to_string();
    Ok(Some(ApiResponse {
        status,
        headers: vec![
            ("content-type".into(), ct),
            ("idempotent-replayed".into(), "true".into()),
        ],
        body,
    }))
}

/// A handler's writes plus the response to return. [`commit`] stores the response with the
/// writes in one transaction, so "the same key returns the first response" holds under races.
pub struct Commit {
    pub writes: Vec<Write>,
    pub response: ApiResponse,
}

impl Commit {
    pub fn new<T: Serialize>(status: u16, body: &T, writes: Vec<Write>) -> Self {
        Commit {
            writes,
            response: ApiResponse::json(status, body),
        }
    }
}

/// Writes atomically; on a failed condition, returns the winner's response if an identical
/// request committed first, else hands the condition failure to the caller to explain.
pub async fn commit<S: Store>(
    store: &S,
    idem: Option<&Idem>,
    c: Commit,
) -> Result<ApiResponse, StoreError> {
    let mut writes = c.writes;
    if let Some(i) = idem {
        let mut body: serde_json::Value =
            serde_json::from_slice(&c.response.body).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = body.as_object_mut() {
            for f in i.redact {
                obj.remove(*f);
            }
        }
        let mut item = Item::new(
            i.key.clone(),
            "idempotency",
            None,
            serde_json::json!({ "body": body }),
        )
        .attr("request_hash", i.request_hash.clone())
        .attr(
            "content_type",
            c.response
                .header("content-type")
                .unwrap_or("application/json")
                .to_string(),
        )
        .num("status", c.response.status as i64);
        item.ttl = Some(i.ttl);
        writes.push(match &i.claim {
            Some(token) => Write::put_if(item, vec![Cond::AttrEq("claim".into(), token.clone())]),
            None => Write::create(item),
        });
    }
    match store.transact(writes).await {
        Ok(()) => {
            if let Some(i) = idem {
                i.stored.store(true, Ordering::SeqCst);
            }
            Ok(c.response)
        }
        Err(StoreError::ConditionFailed) => match idem {
            Some(i) => match replay(store, i).await {
                Ok(Some(resp)) => Ok(resp),
                _ => Err(StoreError::ConditionFailed),
            },
            None => Err(StoreError::ConditionFailed),
        },
        Err(e) => Err(e),
    }
}

/// Per-request context handed to an operation.
pub struct Call {
    pub req: ApiRequest,
    pub caller: Caller,
    pub idem: Option<Idem>,
}

/// Routes, authenticates and applies idempotency, then runs `op`. Every error becomes problem+json.
pub async fn serve<S, F, Fut>(ctx: &Ctx<S>, mut req: ApiRequest, op: F) -> ApiResponse
where
    S: Store,
    F: FnOnce(Call) -> Fut,
    Fut: Future<Output = Result<ApiResponse, ApiError>>,
{
    let res: Result<ApiResponse, ApiError> = async {
        if req.body.len() > crate::http::MAX_BODY_BYTES {
            return Err(ApiError::too_large(crate::http::MAX_BODY_BYTES));
        }
        let (route, params) = match_route(&req.method, &req.path)?.ok_or_else(|| {
            ApiError::new(
                404,
                "no-such-route",
                "Not found",
                format!("no route {} {}", req.method, req.path),
                Some("path"),
            )
        })?;
        req.params = params;
        req.operation = route.operation;
        let caller = if route.auth {
            authenticate(&ctx.store, &req).await?
        } else {
            Caller { agent_id: None }
        };
        // After authentication: a caller without a key learns nothing about ids (401 first).
        crate::http::check_query_ids(&req.query)?;
        let idem = match idempotency_start(ctx, &req, &caller).await? {
            Ok(i) => i,
            Err(replayed) => return Ok(replayed),
        };
        match idem.clone() {
            Some(i) => settle(&ctx.store, &i, op(Call { req, caller, idem }).await).await,
            None => op(Call { req, caller, idem }).await,
        }
    }
    .await;
    match res {
        Ok(r) => r,
        Err(e) => ApiResponse::problem(&e),
    }
}

/// Reads an object by id if `agent` owns it; anyone else's id is 404, as if it did not exist.
pub async fn owned_object<S: Store>(
    store: &S,
    id: &str,
    agent: &str,
    field: &str,
) -> Result<Item, ApiError> {
    match store.get(&Key::object(id)).await? {
        Some(item) if item.owner.as_deref() == Some(agent) => Ok(item),
        _ => Err(ApiError::not_found(field, id)),
    }
}

/// The run record with its optimistic-lock version.
pub struct RunRecord {
    pub payload: FullLoopPayload,
    pub version: i64,
    pub item: Item,
}

pub async fn load_run<S: Store>(store: &S, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
    Ok(match store.get(&Key::run(run_id)).await? {
        Some(item) => Some(RunRecord {
            payload: item.decode()?,
            version: item.get_num("version"),
            item,
        }),
        None => None,
    })
}

impl RunRecord {
    pub fn new_item(payload: &FullLoopPayload) -> Result<Item, StoreError> {
        Ok(Item::of(
            Key::run(&payload.run_id),
            "run",
            Some(&payload.agent_id),
            payload,
        )?
        .attr("state", payload.state.as_str())
        .num("version", 1))
    }

    /// The write that stores `payload` as the next version, if nobody else wrote in between.
    pub fn save(&self, mut payload: FullLoopPayload) -> Result<Write, StoreError> {
        payload.refresh_next_action();
        payload.updated_at = crate::ids::now_rfc3339();
        let item = Item::of(
            Key::run(&payload.run_id),
            "run",
            Some(&payload.agent_id),
            &payload,
        )?
        .attr("state", payload.state.as_str())
        .num("version", self.version + 1);
        Ok(Write::put_if(
            item,
            vec![Cond::NumEq("version".into(), self.version)],
        ))
    }
}

/// Creates a loop object item.
pub fn object_item<T: Serialize>(
    id: &str,
    kind: &str,
    owner: &str,
    run_id: Option<&str>,
    value: &T,
) -> Result<Item, StoreError> {
    let mut item = Item::of(Key::object(id), kind, Some(owner), value)?;
    if let Some(r) = run_id {
        item = item.attr("run_id", r);
    }
    Ok(item)
}
