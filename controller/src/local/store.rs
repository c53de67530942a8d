//! The embedded state store: one redb file holding every object as JSON, keyed by
//! `resource/namespace/name`, with Kubernetes' bookkeeping (uid, resourceVersion, generation,
//! creationTimestamp) and a broadcast of watch events after each commit.
//!
//! The store is kind-agnostic: it stores `serde_json::Value`s, so objects keep fields the typed
//! structs do not model. Typed access sits in the driver.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::error::{Error, Result};
use crate::api::Timestamp;

/// Objects: `resource/namespace/name` → JSON text.
const OBJECTS: TableDefinition<'_, &str, &str> = TableDefinition::new("objects");
/// Counters: `resourceVersion` → last version handed out.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const RESOURCE_VERSION: &str = "resourceVersion";
/// Watch events buffered per subscriber before a slow watcher starts losing them (it is then
/// disconnected, like an expired Kubernetes watch, and re-lists).
const EVENT_BUFFER: usize = 1024;

/// A watch event: `ADDED`, `MODIFIED` or `DELETED` with the object as it is (was) stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub type_: &'static str,
    /// `datavolumes`, `datasources`.
    pub resource: String,
    pub namespace: String,
    pub object: Value,
}

/// The store. Cheap to share behind an `Arc`; every call is one redb transaction.
#[derive(Debug)]
pub struct Store {
    db: Database,
    events: broadcast::Sender<Event>,
}

fn key(resource: &str, namespace: &str, name: &str) -> String {
    format!("{resource}/{namespace}/{name}")
}

impl Store {
    /// Opens (or creates) the store file at `path`.
    ///
    /// # Errors
    /// [`Error::Store`] when the file cannot be opened (another `diskplane serve` holds it,
    /// or it is not a redb file).
    pub fn open(path: &Path) -> Result<Store> {
        let db =
            Database::create(path).map_err(|e| Error::store(format!("opening {}", path.display()), e))?;
        let txn = db.begin_write().map_err(|e| Error::store("starting a transaction", e))?;
        {
            txn.open_table(OBJECTS).map_err(|e| Error::store("creating the objects table", e))?;
            txn.open_table(META).map_err(|e| Error::store("creating the meta table", e))?;
        }
        txn.commit().map_err(|e| Error::store("committing", e))?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Store { db, events })
    }

    /// Subscribes to events committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The object, if stored.
    ///
    /// # Errors
    /// [`Error::Store`] on database failures.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Result<Option<Value>> {
        let txn = self.db.begin_read().map_err(|e| Error::store("starting a read", e))?;
        let table = txn.open_table(OBJECTS).map_err(|e| Error::store("opening objects", e))?;
        let found =
            table.get(key(resource, namespace, name).as_str()).map_err(|e| Error::store("reading", e))?;
        found.map(|guard| parse(guard.value())).transpose()
    }

    /// All objects of `resource`, in one namespace or (`None`) in all, ordered by namespace
    /// and name.
    ///
    /// # Errors
    /// [`Error::Store`] on database failures.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Result<Vec<Value>> {
        let prefix = match namespace {
            Some(ns) => format!("{resource}/{ns}/"),
            None => format!("{resource}/"),
        };
        // Every key with the prefix sorts between the prefix and the prefix with its last
        // byte ('/') bumped to '0'.
        let end = format!("{}0", &prefix[..prefix.len() - 1]);
        let txn = self.db.begin_read().map_err(|e| Error::store("starting a read", e))?;
        let table = txn.open_table(OBJECTS).map_err(|e| Error::store("opening objects", e))?;
        let range = table.range(prefix.as_str()..end.as_str()).map_err(|e| Error::store("listing", e))?;
        let mut objects = Vec::new();
        for entry in range {
            let (_, value) = entry.map_err(|e| Error::store("listing", e))?;
            objects.push(parse(value.value())?);
        }
        Ok(objects)
    }

    /// Stores a new object: sets `metadata.uid`, `resourceVersion`, `generation` (1) and
    /// `creationTimestamp`, drops any `status` (it belongs to the controller).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when an object of that name exists; [`Error::Store`].
    pub fn create(
        &self,
        resource: &str,
        namespace: &str,
        mut object: Value,
        now: Timestamp,
    ) -> Result<Value> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let key = key(resource, namespace, &name);
        let txn = self.db.begin_write().map_err(|e| Error::store("starting a transaction", e))?;
        {
            let mut table = txn.open_table(OBJECTS).map_err(|e| Error::store("opening objects", e))?;
            if table.get(key.as_str()).map_err(|e| Error::store("reading", e))?.is_some() {
                return Err(Error::AlreadyExists { resource: resource.to_owned(), name });
            }
            let version = next_version(&txn)?;
            if let Some(map) = object.as_object_mut() {
                map.remove("status");
            }
            let meta = &mut object["metadata"];
            meta["namespace"] = json!(namespace);
            meta["uid"] = json!(new_uid());
            meta["resourceVersion"] = json!(version.to_string());
            meta["generation"] = json!(1);
            meta["creationTimestamp"] = json!(now.to_rfc3339());
            let text = serde_json::to_string(&object).map_err(Error::json)?;
            table.insert(key.as_str(), text.as_str()).map_err(|e| Error::store("writing", e))?;
        }
        txn.commit().map_err(|e| Error::store("committing", e))?;
        self.emit("ADDED", resource, namespace, &object);
        Ok(object)
    }

    /// Replaces the `status` of the object with this `uid` (a recreated object of the same
    /// name is not touched) and bumps its resourceVersion. `None` when the object is gone.
    ///
    /// # Errors
    /// [`Error::Store`] on database failures.
    pub fn update_status(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        uid: &str,
        status: Value,
    ) -> Result<Option<Value>> {
        let key = key(resource, namespace, name);
        let txn = self.db.begin_write().map_err(|e| Error::store("starting a transaction", e))?;
        let object = {
            let mut table = txn.open_table(OBJECTS).map_err(|e| Error::store("opening objects", e))?;
            let current =
                table.get(key.as_str()).map_err(|e| Error::store("reading", e))?.map(|g| parse(g.value()));
            let mut object = match current {
                Some(object) => object?,
                None => return Ok(None),
            };
            if object["metadata"]["uid"].as_str() != Some(uid) {
                return Ok(None);
            }
            let version = next_version(&txn)?;
            object["status"] = status;
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            let text = serde_json::to_string(&object).map_err(Error::json)?;
            table.insert(key.as_str(), text.as_str()).map_err(|e| Error::store("writing", e))?;
            object
        };
        txn.commit().map_err(|e| Error::store("committing", e))?;
        self.emit("MODIFIED", resource, namespace, &object);
        Ok(Some(object))
    }

    /// Changes the object with this `uid` in place (`change` edits metadata and spec; a
    /// recreated object of the same name is not touched), bumps its resourceVersion, and its
    /// generation when the spec changed. `None` when the object is gone.
    ///
    /// # Errors
    /// [`Error::Store`] on database failures.
    pub fn modify(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        uid: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<Option<Value>> {
        let key = key(resource, namespace, name);
        let txn = self.db.begin_write().map_err(|e| Error::store("starting a transaction", e))?;
        let object = {
            let mut table = txn.open_table(OBJECTS).map_err(|e| Error::store("opening objects", e))?;
            let current =
                table.get(key.as_str()).map_err(|e| Error::store("reading", e))?.map(|g| parse(g.value()));
            let mut object = match current {
                Some(object) => object?,
                None => return Ok(None),
            };
            if object["metadata"]["uid"].as_str() != Some(uid) {
                return Ok(None);
            }
            let spec = object["spec"].clone();
            change(&mut object);
            let version = next_version(&txn)?;
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            if object["spec"] != spec {
                let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
                object["metadata"]["generation"] = json!(generation + 1);
            }
            let text = serde_json::to_string(&object).map_err(Error::json)?;
            table.insert(key.as_str(), text.as_str()).map_err(|e| Error::store("writing", e))?;
            object
        };
        txn.commit().map_err(|e| Error::store("committing", e))?;
        self.emit("MODIFIED", resource, namespace, &object);
        Ok(Some(object))
    }

    /// Removes the object and returns it as it was.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> Result<Value> {
        let key = key(resource, namespace, name);
        let txn = self.db.begin_write().map_err(|e| Error::store("starting a transaction", e))?;
        let object = {
            let mut table = txn.open_table(OBJECTS).map_err(|e| Error::store("opening objects", e))?;
            let removed = table
                .remove(key.as_str())
                .map_err(|e| Error::store("deleting", e))?
                .map(|g| parse(g.value()));
            match removed {
                Some(object) => object?,
                None => return Err(Error::NotFound { resource: resource.to_owned(), name: name.to_owned() }),
            }
        };
        txn.commit().map_err(|e| Error::store("committing", e))?;
        self.emit("DELETED", resource, namespace, &object);
        Ok(object)
    }

    fn emit(&self, type_: &'static str, resource: &str, namespace: &str, object: &Value) {
        // No subscribers is fine.
        let _ = self.events.send(Event {
            type_,
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            object: object.clone(),
        });
    }
}

fn parse(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(Error::json)
}

/// Bumps and returns the store-wide resourceVersion inside `txn`.
fn next_version(txn: &redb::WriteTransaction) -> Result<u64> {
    let mut meta = txn.open_table(META).map_err(|e| Error::store("opening meta", e))?;
    let current = meta.get(RESOURCE_VERSION).map_err(|e| Error::store("reading", e))?.map(|g| g.value());
    let next = current.unwrap_or(0).saturating_add(1);
    meta.insert(RESOURCE_VERSION, next).map_err(|e| Error::store("writing", e))?;
    Ok(next)
}

/// A random (version 4) UUID from the kernel's random source; falls back to time and pid
/// (uids only need to be unique on this machine).
fn new_uid() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = (nanos ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        (dir, store)
    }

    fn object(name: &str) -> Value {
        json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
               "metadata": {"name": name}, "spec": {}, "status": {"phase": "Succeeded"}})
    }

    #[test]
    fn create_sets_bookkeeping_and_drops_status() {
        let (_dir, store) = store();
        let created = store.create("datavolumes", "default", object("a"), Timestamp(0)).unwrap();
        let meta = &created["metadata"];
        assert_eq!(meta["namespace"], "default");
        assert_eq!(meta["generation"], 1);
        assert_eq!(meta["creationTimestamp"], "1970-01-01T00:00:00Z");
        assert_eq!(meta["uid"].as_str().unwrap().len(), 36);
        assert!(created.get("status").is_none());
        assert_eq!(store.get("datavolumes", "default", "a").unwrap(), Some(created));
    }

    #[test]
    fn second_create_of_a_name_is_refused() {
        let (_dir, store) = store();
        store.create("datavolumes", "default", object("a"), Timestamp(0)).unwrap();
        let err = store.create("datavolumes", "default", object("a"), Timestamp(0)).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    }

    #[test]
    fn list_is_scoped_to_resource_and_namespace() {
        let (_dir, store) = store();
        for (ns, name) in [("a", "x"), ("a", "y"), ("ab", "z"), ("b", "w")] {
            store.create("datavolumes", ns, object(name), Timestamp(0)).unwrap();
        }
        store.create("datasources", "a", object("s"), Timestamp(0)).unwrap();
        let names = |v: Vec<Value>| -> Vec<String> {
            v.iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(names(store.list("datavolumes", Some("a")).unwrap()), ["x", "y"]);
        assert_eq!(names(store.list("datavolumes", None).unwrap()), ["x", "y", "z", "w"]);
        assert_eq!(names(store.list("datasources", None).unwrap()), ["s"]);
    }

    #[test]
    fn status_updates_bump_the_version_and_respect_the_uid() {
        let (_dir, store) = store();
        let created = store.create("datavolumes", "ns", object("a"), Timestamp(0)).unwrap();
        let uid = created["metadata"]["uid"].as_str().unwrap();
        let updated =
            store.update_status("datavolumes", "ns", "a", uid, json!({"phase": "Pending"})).unwrap().unwrap();
        assert_eq!(updated["status"]["phase"], "Pending");
        let v = |o: &Value| o["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap();
        assert!(v(&updated) > v(&created));
        assert_eq!(store.update_status("datavolumes", "ns", "a", "other-uid", json!({})).unwrap(), None);
    }

    #[test]
    fn modify_bumps_generation_only_for_spec_changes_and_respects_the_uid() {
        let (_dir, store) = store();
        let created = store.create("datasources", "ns", object("a"), Timestamp(0)).unwrap();
        let uid = created["metadata"]["uid"].as_str().unwrap();
        let annotated = store
            .modify("datasources", "ns", "a", uid, |o| o["metadata"]["annotations"] = json!({"k": "v"}))
            .unwrap()
            .unwrap();
        assert_eq!(annotated["metadata"]["generation"], 1);
        assert_eq!(annotated["metadata"]["annotations"]["k"], "v");
        let respec =
            store.modify("datasources", "ns", "a", uid, |o| o["spec"] = json!({"x": 1})).unwrap().unwrap();
        assert_eq!(respec["metadata"]["generation"], 2);
        assert_eq!(store.get("datasources", "ns", "a").unwrap(), Some(respec));
        assert_eq!(store.modify("datasources", "ns", "a", "other-uid", |_| {}).unwrap(), None);
    }

    #[test]
    fn delete_emits_an_event_and_reports_missing_objects() {
        let (_dir, store) = store();
        let mut events = store.subscribe();
        store.create("datavolumes", "ns", object("a"), Timestamp(0)).unwrap();
        store.delete("datavolumes", "ns", "a").unwrap();
        assert_eq!(events.try_recv().unwrap().type_, "ADDED");
        assert_eq!(events.try_recv().unwrap().type_, "DELETED");
        assert!(matches!(store.delete("datavolumes", "ns", "a"), Err(Error::NotFound { .. })));
    }

    #[test]
    fn objects_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        Store::open(&path).unwrap().create("datavolumes", "ns", object("a"), Timestamp(0)).unwrap();
        let store = Store::open(&path).unwrap();
        assert!(store.get("datavolumes", "ns", "a").unwrap().is_some());
    }
}
