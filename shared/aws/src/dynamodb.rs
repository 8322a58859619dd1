//! The one storage adapter: `aws-sdk-dynamodb`. Locally it talks to the embedded engine over
//! loopback; in AWS to DynamoDB; in tests to an emulator via `AWS_ENDPOINT_URL`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, KeySchemaElement,
    KeyType, Put, ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;

use tokenops::backoff::Backoff;
use tokenops::error::StoreError;
use tokenops::store::{Cond, Item, Key, RequestCounts, Store, Write};

/// Retries of a write that met a transaction in flight on its item (`TransactionConflict`): it
/// is no failed condition and clears in milliseconds. 5, 10, 20 … 200 ms, eight times.
const CONFLICT: Backoff = Backoff {
    initial_secs: 0.005,
    factor: 2.0,
    cap_secs: 0.2,
    retries: 8,
    full_jitter: false,
};

/// Each request at trace level (`TOKENOPS_LOG=tokenops_aws::dynamodb=trace`): the operation and
/// the kinds of the keys it touches (`RUN/RUN`, `OBJ/OBJ`, `LEDGER/E`…), never their ids.
fn trace_request(op: &str, keys: &[&Key]) {
    if tracing::enabled!(tracing::Level::TRACE) {
        let kind = |s: &str| s.split('#').next().unwrap_or_default().to_string();
        let keys: Vec<String> = keys
            .iter()
            .map(|k| format!("{}/{}", kind(&k.pk), kind(&k.sk)))
            .collect();
        tracing::trace!(op, keys = %keys.join(" "), "dynamodb request");
    }
}

fn write_op(w: &Write) -> &'static str {
    match w {
        Write::Put { .. } => "PutItem",
        Write::Update { .. } => "UpdateItem",
        Write::Delete { .. } => "DeleteItem",
        Write::Check { .. } => "ConditionCheck",
    }
}

/// Write units of one item: one per KB, at least one.
fn write_units(bytes: usize) -> u64 {
    bytes.div_ceil(1024).max(1) as u64
}

/// An item's size as DynamoDB bills it: each attribute's name and value in bytes (a number is
/// about one byte per two digits, plus one).
fn item_size(m: &HashMap<String, AttributeValue>) -> usize {
    m.iter()
        .map(|(name, v)| {
            name.len()
                + match v {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::N(n) => n.trim_start_matches('-').len().div_ceil(2) + 1,
                    AttributeValue::B(b) => b.as_ref().len(),
                    _ => 1,
                }
        })
        .sum()
}

/// The size of what one item of a transaction writes: the whole item for a put; for an update,
/// its key and the values it sets (the run's update rewrites its doc, nearly all of the item;
/// number deltas on an entitlement stay under one unit either way).
fn transact_item_size(t: &TransactWriteItem) -> usize {
    if let Some(p) = t.put() {
        item_size(p.item())
    } else if let Some(u) = t.update() {
        item_size(u.key()) + u.expression_attribute_values().map_or(0, item_size)
    } else if let Some(d) = t.delete() {
        item_size(d.key())
    } else {
        t.condition_check().map_or(0, |c| item_size(c.key()))
    }
}

/// Attributes with a fixed meaning; every other `S` is an attr and every other `N` a number.
pub const TABLE_ATTRIBUTES: [&str; 7] = ["pk", "sk", "kind", "owner", "doc", "docz", "ttl"];

/// A doc longer than this is stored deflated, as `docz` (B), instead of as `doc` (S): DynamoDB
/// bills a write unit per KB (two in a transaction) and the loop's JSON deflates about 3x (the
/// run's 3.6 KB payload to 1.1 KB), which is AWS's own advice for large attribute values. Below
/// 1 KB a write costs one unit either way, so small docs stay readable in the console.
const DEFLATE_OVER: usize = 1024;
/// A stored doc inflates to at most DynamoDB's item limit.
const MAX_DOC: usize = 400 * 1024;

/// The doc as stored: its attribute name and value.
fn doc_value(doc: &serde_json::Value) -> (&'static str, AttributeValue) {
    let text = doc.to_string();
    if text.len() > DEFLATE_OVER {
        let packed = miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 6);
        (
            "docz",
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(packed)),
        )
    } else {
        ("doc", AttributeValue::S(text))
    }
}

fn inflate_doc(packed: &[u8]) -> Result<serde_json::Value, String> {
    let text = miniz_oxide::inflate::decompress_to_vec_with_limit(packed, MAX_DOC)
        .map_err(|e| format!("docz does not inflate: {e:?}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("docz: {e}"))
}

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: Arc<str>,
    counters: Arc<Counters>,
}

/// Requests sent, by what DynamoDB bills them as.
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    transactions: AtomicU64,
    transaction_items: AtomicU64,
    other: AtomicU64,
    read_units: AtomicU64,
    write_units: AtomicU64,
}

#[derive(Clone, Copy)]
enum Sent {
    Read,
    Write,
    Transaction(usize),
    Other,
}

impl DynamoStore {
    pub fn new(client: Client, table: &str) -> Self {
        DynamoStore {
            client,
            table: table.into(),
            counters: Arc::default(),
        }
    }

    /// The same table and client, with its own request counters: a caller whose traffic is
    /// not the loop's (the local queue and orchestrator stand in for SQS and Step Functions)
    /// is counted apart from the handlers'.
    pub fn counted_apart(&self) -> Self {
        DynamoStore {
            client: self.client.clone(),
            table: self.table.clone(),
            counters: Arc::default(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table if missing (local runtime and tests; in AWS the SAM template owns it).
    pub async fn ensure_table(&self) -> Result<(), StoreError> {
        // ListTables rather than DescribeTable: a missing table is then not an error response.
        let mut start: Option<String> = None;
        loop {
            self.count(Sent::Other);
            let page = self
                .client
                .list_tables()
                .set_exclusive_start_table_name(start)
                .send()
                .await
                .map_err(sdk_err)?;
            if page
                .table_names()
                .iter()
                .any(|t| t.as_str() == &*self.table)
            {
                return Ok(());
            }
            start = page.last_evaluated_table_name().map(str::to_string);
            if start.is_none() {
                break;
            }
        }
        let attr = |n: &str| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |n: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(t)
                .build()
        };
        let res = self
            .client
            .create_table()
            .table_name(&*self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk").map_err(build_err)?)
            .attribute_definitions(attr("sk").map_err(build_err)?)
            .key_schema(key("pk", KeyType::Hash).map_err(build_err)?)
            .key_schema(key("sk", KeyType::Range).map_err(build_err)?)
            .send()
            .await;
        if let Err(e) = res {
            let msg = format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&e));
            if !msg.contains("ResourceInUse") && !msg.contains("already exists") {
                return Err(StoreError::Unavailable(msg));
            }
        }
        // TTL is best effort: emulators differ in support, and nothing depends on expiry for correctness.
        if let Ok(spec) = TimeToLiveSpecification::builder()
            .attribute_name("ttl")
            .enabled(true)
            .build()
        {
            let _ = self
                .client
                .update_time_to_live()
                .table_name(&*self.table)
                .time_to_live_specification(spec)
                .send()
                .await;
        }
        Ok(())
    }

    fn add_read_units(&self, bytes: usize) {
        let units = bytes.div_ceil(4096).max(1) as u64;
        self.counters.read_units.fetch_add(units, Ordering::Relaxed);
    }

    fn add_write_units(&self, units: u64) {
        self.counters
            .write_units
            .fetch_add(units, Ordering::Relaxed);
    }

    fn count(&self, sent: Sent) {
        let c = &self.counters;
        match sent {
            Sent::Read => c.reads.fetch_add(1, Ordering::Relaxed),
            Sent::Write => c.writes.fetch_add(1, Ordering::Relaxed),
            Sent::Transaction(items) => {
                c.transaction_items
                    .fetch_add(items as u64, Ordering::Relaxed);
                c.transactions.fetch_add(1, Ordering::Relaxed)
            }
            Sent::Other => c.other.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Unavailable(format!("request build: {e}"))
}

fn sdk_err<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let msg = format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&e));
    if msg.contains("ConditionalCheckFailed") {
        StoreError::ConditionFailed
    } else if is_validation(&msg) {
        StoreError::Invalid(msg)
    } else {
        StoreError::Unavailable(msg)
    }
}

/// DynamoDB (and the engines speaking its API) refuse a malformed request — an oversize key or
/// item — with `ValidationException`: the request is wrong, the store is not unavailable.
fn is_validation(msg: &str) -> bool {
    msg.contains("ValidationException")
}

fn key_map(key: &Key) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(key.pk.clone())),
        ("sk".to_string(), AttributeValue::S(key.sk.clone())),
    ])
}

/// An item as DynamoDB holds it. The newtype carries the two mappings: [`Item`] lives in the
/// common crate, which knows nothing of `AttributeValue`.
pub struct DynamoItem(pub HashMap<String, AttributeValue>);

impl From<&Item> for DynamoItem {
    fn from(item: &Item) -> Self {
        let mut m = key_map(&item.key);
        m.insert("kind".into(), AttributeValue::S(item.kind.clone()));
        let (name, doc) = doc_value(&item.doc);
        m.insert(name.into(), doc);
        if let Some(o) = &item.owner {
            m.insert("owner".into(), AttributeValue::S(o.clone()));
        }
        if let Some(t) = item.ttl {
            m.insert("ttl".into(), AttributeValue::N(t.to_string()));
        }
        for (k, v) in &item.nums {
            m.insert(k.clone(), AttributeValue::N(v.to_string()));
        }
        for (k, v) in &item.attrs {
            m.insert(k.clone(), AttributeValue::S(v.clone()));
        }
        DynamoItem(m)
    }
}

impl TryFrom<DynamoItem> for Item {
    type Error = StoreError;

    fn try_from(DynamoItem(mut m): DynamoItem) -> Result<Self, Self::Error> {
        let mut take_s = |name: &str| match m.remove(name) {
            Some(AttributeValue::S(s)) => Ok(Some(s)),
            None => Ok(None),
            Some(_) => Err(name.to_string()),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            key: "?".into(),
            reason,
        };
        let pk = take_s("pk")
            .map_err(|f| corrupt(format!("{f} is not S")))?
            .ok_or_else(|| corrupt("no pk".into()))?;
        let sk = take_s("sk")
            .map_err(|f| corrupt(format!("{f} is not S")))?
            .ok_or_else(|| corrupt("no sk".into()))?;
        let key = Key::new(pk, sk);
        let err = |reason: String| StoreError::Corrupt {
            key: key.to_string(),
            reason,
        };
        let kind = take_s("kind")
            .map_err(|f| err(format!("{f} is not S")))?
            .unwrap_or_default();
        let owner = take_s("owner").map_err(|f| err(format!("{f} is not S")))?;
        let plain = take_s("doc").map_err(|f| err(format!("{f} is not S")))?;
        let doc = match (m.remove("docz"), plain) {
            (Some(AttributeValue::B(packed)), _) => inflate_doc(packed.as_ref()).map_err(err)?,
            (Some(_), _) => return Err(err("docz is not B".into())),
            (None, Some(text)) => {
                serde_json::from_str(&text).map_err(|e| err(format!("doc: {e}")))?
            }
            (None, None) => serde_json::Value::Null,
        };
        let mut item = Item {
            key: key.clone(),
            kind,
            owner,
            doc,
            nums: BTreeMap::new(),
            attrs: BTreeMap::new(),
            ttl: None,
        };
        for (name, v) in m {
            match v {
                AttributeValue::N(n) => {
                    let n: i64 = n
                        .parse()
                        .map_err(|_| err(format!("{name} is not an integer")))?;
                    if name == "ttl" {
                        item.ttl = Some(n);
                    } else {
                        item.nums.insert(name, n);
                    }
                }
                AttributeValue::S(s) => {
                    item.attrs.insert(name, s);
                }
                _ => return Err(err(format!("{name} has an unexpected type"))),
            }
        }
        Ok(item)
    }
}

/// Expression builder: placeholders `#n<i>` / `:v<i>` so any attribute name is safe.
#[derive(Default)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn name(&mut self, n: &str) -> String {
        let p = format!("#n{}", self.names.len());
        self.names.insert(p.clone(), n.to_string());
        p
    }
    fn value(&mut self, v: AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), v);
        p
    }
    fn conds(&mut self, conds: &[Cond]) -> Option<String> {
        let parts: Vec<String> = conds
            .iter()
            .map(|c| match c {
                Cond::Exists => {
                    let n = self.name("pk");
                    format!("attribute_exists({n})")
                }
                Cond::NotExists => {
                    let n = self.name("pk");
                    format!("attribute_not_exists({n})")
                }
                Cond::AttrEq(a, v) => {
                    let (n, v) = (self.name(a), self.value(AttributeValue::S(v.clone())));
                    format!("{n} = {v}")
                }
                Cond::NumEq(a, v) => {
                    let (n, v) = (self.name(a), self.value(AttributeValue::N(v.to_string())));
                    format!("{n} = {v}")
                }
                Cond::NumAtLeast(a, v) => {
                    let (n, v) = (self.name(a), self.value(AttributeValue::N(v.to_string())));
                    format!("{n} >= {v}")
                }
                Cond::NumAbsentOrAtMost(a, v) => {
                    let (n, v) = (self.name(a), self.value(AttributeValue::N(v.to_string())));
                    format!("(attribute_not_exists({n}) OR {n} <= {v})")
                }
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join(" AND "))
    }
    fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }
    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

/// `SET`/`ADD` clauses of an update.
fn update_expr(
    e: &mut Expr,
    add: &[(String, i64)],
    set_attrs: &[(String, String)],
    set_doc: &Option<serde_json::Value>,
) -> String {
    let mut sets: Vec<String> = set_attrs
        .iter()
        .map(|(a, v)| {
            let (n, v) = (e.name(a), e.value(AttributeValue::S(v.clone())));
            format!("{n} = {v}")
        })
        .collect();
    // A doc changes form with its size: set one form, remove the other.
    let mut remove = None;
    if let Some(doc) = set_doc {
        let (name, value) = doc_value(doc);
        let (n, v) = (e.name(name), e.value(value));
        sets.push(format!("{n} = {v}"));
        remove = Some(e.name(if name == "doc" { "docz" } else { "doc" }));
    }
    let adds: Vec<String> = add
        .iter()
        .map(|(a, d)| {
            let (n, v) = (e.name(a), e.value(AttributeValue::N(d.to_string())));
            format!("{n} {v}")
        })
        .collect();
    let mut out = String::new();
    if !sets.is_empty() {
        out.push_str("SET ");
        out.push_str(&sets.join(", "));
    }
    if !adds.is_empty() {
        out.push_str(" ADD ");
        out.push_str(&adds.join(", "));
    }
    if let Some(r) = remove {
        out.push_str(" REMOVE ");
        out.push_str(&r);
    }
    out
}

impl DynamoStore {
    fn transact_item(&self, w: &Write) -> Result<TransactWriteItem, StoreError> {
        let mut e = Expr::default();
        let b = TransactWriteItem::builder();
        Ok(match w {
            Write::Put { item, conds } => {
                let c = e.conds(conds);
                b.put(
                    Put::builder()
                        .table_name(&*self.table)
                        .set_item(Some(DynamoItem::from(item).0))
                        .set_condition_expression(c)
                        .set_expression_attribute_names(e.names())
                        .set_expression_attribute_values(e.values())
                        .build()
                        .map_err(build_err)?,
                )
                .build()
            }
            Write::Update {
                key,
                add,
                set_attrs,
                set_doc,
                conds,
            } => {
                let u = update_expr(&mut e, add, set_attrs, set_doc);
                let c = e.conds(conds);
                b.update(
                    Update::builder()
                        .table_name(&*self.table)
                        .set_key(Some(key_map(key)))
                        .update_expression(u)
                        .set_condition_expression(c)
                        .set_expression_attribute_names(e.names())
                        .set_expression_attribute_values(e.values())
                        .build()
                        .map_err(build_err)?,
                )
                .build()
            }
            Write::Delete { key, conds } => {
                let c = e.conds(conds);
                b.delete(
                    Delete::builder()
                        .table_name(&*self.table)
                        .set_key(Some(key_map(key)))
                        .set_condition_expression(c)
                        .set_expression_attribute_names(e.names())
                        .set_expression_attribute_values(e.values())
                        .build()
                        .map_err(build_err)?,
                )
                .build()
            }
            Write::Check { key, conds } => {
                let c = e.conds(conds).unwrap_or_else(|| {
                    let n = e.name("pk");
                    format!("attribute_exists({n})")
                });
                b.condition_check(
                    ConditionCheck::builder()
                        .table_name(&*self.table)
                        .set_key(Some(key_map(key)))
                        .condition_expression(c)
                        .set_expression_attribute_names(e.names())
                        .set_expression_attribute_values(e.values())
                        .build()
                        .map_err(build_err)?,
                )
                .build()
            }
        })
    }

    /// A single write goes out as its own request (cheaper than a one-item transaction).
    /// DynamoDB refuses one that meets a transaction in flight on its item
    /// (`TransactionConflictException`); like a transaction's conflict, that is no failed
    /// condition, so it is tried again briefly.
    async fn single(&self, w: Write) -> Result<(), StoreError> {
        if let Write::Check { .. } = w {
            // DynamoDB has no lone condition check: send it as a one-item transaction, so the
            // engine evaluates it exactly as it would inside a larger one.
            return self.transaction(&[w]).await;
        }
        for attempt in 0.. {
            match self.single_once(&w).await {
                Err(StoreError::Unavailable(msg))
                    if attempt < CONFLICT.retries && msg.contains("TransactionConflict") =>
                {
                    tokio::time::sleep(CONFLICT.delay(attempt)).await
                }
                other => return other,
            }
        }
        unreachable!("the loop returns by its last retry")
    }

    async fn single_once(&self, w: &Write) -> Result<(), StoreError> {
        let mut e = Expr::default();
        self.count(Sent::Write);
        trace_request(write_op(w), &[w.key()]);
        match w {
            Write::Put { item, conds } => {
                let c = e.conds(conds);
                let m = DynamoItem::from(item).0;
                self.add_write_units(write_units(item_size(&m)));
                self.client
                    .put_item()
                    .table_name(&*self.table)
                    .set_item(Some(m))
                    .set_condition_expression(c)
                    .set_expression_attribute_names(e.names())
                    .set_expression_attribute_values(e.values())
                    .send()
                    .await
                    .map_err(sdk_err)?;
            }
            Write::Update {
                key,
                add,
                set_attrs,
                set_doc,
                conds,
            } => {
                let u = update_expr(&mut e, add, set_attrs, set_doc);
                let c = e.conds(conds);
                let (k, values) = (key_map(key), e.values());
                self.add_write_units(write_units(
                    item_size(&k) + values.as_ref().map_or(0, item_size),
                ));
                self.client
                    .update_item()
                    .table_name(&*self.table)
                    .set_key(Some(k))
                    .update_expression(u)
                    .set_condition_expression(c)
                    .set_expression_attribute_names(e.names())
                    .set_expression_attribute_values(values)
                    .send()
                    .await
                    .map_err(sdk_err)?;
            }
            Write::Delete { key, conds } => {
                let c = e.conds(conds);
                self.add_write_units(1);
                self.client
                    .delete_item()
                    .table_name(&*self.table)
                    .set_key(Some(key_map(key)))
                    .set_condition_expression(c)
                    .set_expression_attribute_names(e.names())
                    .set_expression_attribute_values(e.values())
                    .send()
                    .await
                    .map_err(sdk_err)?;
            }
            Write::Check { .. } => return self.transaction(std::slice::from_ref(w)).await,
        }
        Ok(())
    }

    /// One `TransactWriteItems`: all or nothing, any failed condition → `ConditionFailed`.
    async fn transaction(&self, writes: &[Write]) -> Result<(), StoreError> {
        let items = writes
            .iter()
            .map(|w| self.transact_item(w))
            .collect::<Result<Vec<_>, _>>()?;
        // Two units per KB of each item, whether it commits or is cancelled.
        let sizes: Vec<usize> = items.iter().map(transact_item_size).collect();
        let units: u64 = sizes.iter().map(|s| 2 * write_units(*s)).sum();
        // DynamoDB cancels a transaction that races another on the same item
        // (TransactionConflict); that is not a failed condition, so try again briefly.
        let mut attempt = 0;
        loop {
            self.count(Sent::Transaction(items.len()));
            self.add_write_units(units);
            trace_request(
                "TransactWriteItems",
                &writes.iter().map(Write::key).collect::<Vec<_>>(),
            );
            tracing::trace!(units, ?sizes, "transaction write units");
            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let Err(e) = res else { return Ok(()) };
            let msg = format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&e));
            let reasons: Vec<String> = match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(tc)) => tc
                    .cancellation_reasons()
                    .iter()
                    .filter_map(|r| r.code().map(str::to_string))
                    .collect(),
                _ => vec![],
            };
            if reasons.iter().any(|c| c == "ConditionalCheckFailed")
                || msg.contains("ConditionalCheckFailed")
            {
                return Err(StoreError::ConditionFailed);
            }
            let conflict = reasons.iter().any(|c| c == "TransactionConflict")
                || msg.contains("TransactionConflict")
                || msg.contains("TransactionInProgress");
            if is_validation(&msg) {
                return Err(StoreError::Invalid(msg));
            }
            if !conflict || attempt >= CONFLICT.retries {
                return Err(StoreError::Unavailable(msg));
            }
            tokio::time::sleep(CONFLICT.delay(attempt)).await;
            attempt += 1;
        }
    }
}

impl Store for DynamoStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.count(Sent::Read);
        trace_request("GetItem", &[key]);
        let out = self
            .client
            .get_item()
            .table_name(&*self.table)
            .set_key(Some(key_map(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_err)?;
        self.add_read_units(out.item.as_ref().map_or(0, item_size));
        out.item.map(|m| Item::try_from(DynamoItem(m))).transpose()
    }

    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        if limit == Some(0) {
            return Ok(items);
        }
        let mut start = None;
        loop {
            self.count(Sent::Read);
            trace_request("Query", &[&Key::new(pk, sk_prefix)]);
            let q = self
                .client
                .query()
                .table_name(&*self.table)
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_string()))
                .consistent_read(true)
                .set_limit(limit.map(|l| l.min(1000) as i32))
                .set_exclusive_start_key(start);
            // DynamoDB refuses an empty key-condition operand: no prefix, no begins_with.
            let q = if sk_prefix.is_empty() {
                q.key_condition_expression("#pk = :pk")
            } else {
                q.key_condition_expression("#pk = :pk AND begins_with(#sk, :sk)")
                    .expression_attribute_names("#sk", "sk")
                    .expression_attribute_values(":sk", AttributeValue::S(sk_prefix.to_string()))
            };
            let out = q.send().await.map_err(sdk_err)?;
            self.add_read_units(out.items().iter().map(item_size).sum());
            for m in out.items.unwrap_or_default() {
                items.push(Item::try_from(DynamoItem(m))?);
            }
            start = out.last_evaluated_key;
            if start.is_none() || limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        if let Some(l) = limit {
            items.truncate(l);
        }
        Ok(items)
    }

    async fn transact(&self, mut writes: Vec<Write>) -> Result<(), StoreError> {
        match writes.len() {
            0 => Ok(()),
            1 => self.single(writes.remove(0)).await,
            n if n > 100 => Err(StoreError::Unavailable(format!(
                "transaction of {n} writes exceeds DynamoDB's 100"
            ))),
            _ => self.transaction(&writes).await,
        }
    }

    fn requests(&self) -> RequestCounts {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            reads: n(&c.reads),
            writes: n(&c.writes),
            transactions: n(&c.transactions),
            transaction_items: n(&c.transaction_items),
            other: n(&c.other),
            read_units: n(&c.read_units),
            write_units: n(&c.write_units),
        }
    }
}

/// A client for an explicit endpoint with static credentials (embedded engine, emulators).
pub fn local_client(endpoint: &str) -> Client {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "local",
            "local",
            None,
            None,
            "tokenops-local",
        ))
        .build();
    Client::from_conf(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(doc: serde_json::Value) -> Item {
        Item::new(Key::run("run_1"), "run", Some("agent_1"), doc).num("version", 2)
    }

    #[test]
    fn a_large_doc_is_stored_deflated_and_billed_by_its_packed_size() {
        let doc = json!({"links": (0..30).map(|i| json!({
            "url": format!("https://api.example.com/results/result_{i:026}"),
            "sha256": format!("{i:064x}"),
        })).collect::<Vec<_>>()});
        let text = doc.to_string().len();
        let stored = DynamoItem::from(&item(doc.clone()));
        assert!(!stored.0.contains_key("doc"));
        let Some(AttributeValue::B(packed)) = stored.0.get("docz") else {
            panic!("docz is B: {:?}", stored.0.keys());
        };
        assert!(
            packed.as_ref().len() * 2 < text,
            "{} of {text}",
            packed.as_ref().len()
        );
        assert!(write_units(item_size(&stored.0)) < write_units(text));
        assert_eq!(Item::try_from(stored).unwrap(), item(doc));
    }

    #[test]
    fn a_small_doc_stays_plain_json() {
        let stored = DynamoItem::from(&item(json!({"state": "queued"})));
        assert_eq!(
            stored.0.get("doc"),
            Some(&AttributeValue::S(r#"{"state":"queued"}"#.into()))
        );
        assert!(!stored.0.contains_key("docz"));
    }

    #[test]
    fn a_docz_that_does_not_inflate_is_corrupt_not_a_panic() {
        let mut stored = DynamoItem::from(&item(json!({})));
        stored.0.remove("doc");
        stored.0.insert(
            "docz".into(),
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![1, 2, 3])),
        );
        assert!(matches!(
            Item::try_from(stored),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
