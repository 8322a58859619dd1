//! The adapter-neutral item model: a JSON document plus the few attributes conditions need.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::StoreError;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Key {
            pk: pk.into(),
            sk: sk.into(),
        }
    }
    pub fn object(id: &str) -> Self {
        Key::new(format!("OBJ#{id}"), "OBJ")
    }
    pub fn run(run_id: &str) -> Self {
        Key::new(format!("RUN#{run_id}"), "RUN")
    }
    pub fn agent(agent_id: &str) -> Self {
        Key::new(format!("AGENT#{agent_id}"), "AGENT")
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pk, self.sk)
    }
}

/// One stored item. `doc` is the object as the API shows it; `nums`/`attrs` are what conditions and
/// counters need (DynamoDB can't condition inside a JSON string).
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub key: Key,
    pub kind: String,
    pub owner: Option<String>,
    pub doc: serde_json::Value,
    pub nums: BTreeMap<String, i64>,
    pub attrs: BTreeMap<String, String>,
    /// Epoch seconds after which DynamoDB TTL may delete the item.
    pub ttl: Option<i64>,
}

impl Item {
    pub fn new(key: Key, kind: &str, owner: Option<&str>, doc: serde_json::Value) -> Self {
        Item {
            key,
            kind: kind.into(),
            owner: owner.map(str::to_string),
            doc,
            nums: BTreeMap::new(),
            attrs: BTreeMap::new(),
            ttl: None,
        }
    }
    pub fn of<T: Serialize>(
        key: Key,
        kind: &str,
        owner: Option<&str>,
        value: &T,
    ) -> Result<Self, StoreError> {
        let doc = serde_json::to_value(value).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Item::new(key, kind, owner, doc))
    }
    pub fn num(mut self, name: &str, v: i64) -> Self {
        self.nums.insert(name.into(), v);
        self
    }
    pub fn attr(mut self, name: &str, v: impl Into<String>) -> Self {
        self.attrs.insert(name.into(), v.into());
        self
    }
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        serde_json::from_value(self.doc.clone()).map_err(|e| StoreError::Corrupt {
            key: self.key.to_string(),
            reason: e.to_string(),
        })
    }
    pub fn get_num(&self, name: &str) -> i64 {
        self.nums.get(name).copied().unwrap_or(0)
    }
    pub fn get_attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }
}

/// Conditions a write can carry (ANDed).
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Exists,
    NotExists,
    AttrEq(String, String),
    NumEq(String, i64),
    NumAtLeast(String, i64),
    /// The number is absent or at most the value (a lease that is free or has lapsed).
    NumAbsentOrAtMost(String, i64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Put {
        item: Item,
        conds: Vec<Cond>,
    },
    /// Add deltas to numbers and set attributes/doc on an existing item.
    Update {
        key: Key,
        add: Vec<(String, i64)>,
        set_attrs: Vec<(String, String)>,
        set_doc: Option<serde_json::Value>,
        conds: Vec<Cond>,
    },
    Delete {
        key: Key,
        conds: Vec<Cond>,
    },
    Check {
        key: Key,
        conds: Vec<Cond>,
    },
}

impl Write {
    pub fn create(item: Item) -> Self {
        Write::Put {
            item,
            conds: vec![Cond::NotExists],
        }
    }
    pub fn put(item: Item) -> Self {
        Write::Put {
            item,
            conds: vec![],
        }
    }
    pub fn put_if(item: Item, conds: Vec<Cond>) -> Self {
        Write::Put { item, conds }
    }
    pub fn key(&self) -> &Key {
        match self {
            Write::Put { item, .. } => &item.key,
            Write::Update { key, .. } | Write::Delete { key, .. } | Write::Check { key, .. } => key,
        }
    }
}
