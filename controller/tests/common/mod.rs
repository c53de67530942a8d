//! The mock API server shared by the kube driver's scenario tests (`tower-test`): each test
//! lists the requests a reconcile must make (method, path, body) in order with the answers;
//! [`serve`] asserts them and records Events (best effort, `events.k8s.io`) wherever they come.
//! [`fill`] loads fixture objects into an informer cache.

#![allow(dead_code)] // each test binary uses part of it

use http::{Method, Request, Response};
use kube::Resource;
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{Value, json};

/// What one expected request must look like, and the answer.
pub struct Expect {
    pub method: Method,
    /// Path without the query.
    pub path: &'static str,
    pub body: BodyCheck,
    pub status: u16,
    pub reply: Reply,
}

pub enum BodyCheck {
    Exact(Value),
    /// JSON pointers and the values they must have.
    Fields(Vec<(&'static str, Value)>),
    /// JSON pointers that must be absent.
    FieldsAndAbsent(Vec<(&'static str, Value)>, Vec<&'static str>),
    /// Exact fields, then a check of the whole body (for values made at random, such as keys
    /// and certificates: their shape and relations, never their bytes).
    FieldsAndCheck(Vec<(&'static str, Value)>, fn(&Value)),
}

/// The keys of the object at `pointer` in `body`, sorted.
pub fn keys_at(body: &Value, pointer: &str) -> Vec<String> {
    let mut keys: Vec<String> = body
        .pointer(pointer)
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no object at {pointer} in {body:#}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

pub enum Reply {
    /// Echo the request body.
    Echo,
    Json(Value),
}

pub fn expect(method: Method, path: &'static str, body: BodyCheck) -> Expect {
    Expect { method, path, body, status: 200, reply: Reply::Echo }
}

impl Expect {
    pub fn reply(mut self, status: u16, reply: Value) -> Expect {
        self.status = status;
        self.reply = Reply::Json(reply);
        self
    }
    pub fn created(mut self) -> Expect {
        self.status = 201;
        self
    }
}

/// What the mock saw besides the expected requests.
#[derive(Debug, Default)]
pub struct Seen {
    /// `(type, reason, note)` of each event.
    pub events: Vec<(String, String, Option<String>)>,
    pub unexpected: Vec<String>,
    pub missing: Vec<String>,
}

pub fn check_body(check: &BodyCheck, body: &Value, what: &str) {
    match check {
        BodyCheck::Exact(expected) => assert_eq!(body, expected, "{what}: body"),
        BodyCheck::Fields(fields) => {
            for (pointer, expected) in fields {
                assert_eq!(body.pointer(pointer), Some(expected), "{what}: {pointer} in {body:#}");
            }
        }
        BodyCheck::FieldsAndCheck(fields, check) => {
            check_body(&BodyCheck::Fields(fields.clone()), body, what);
            check(body);
        }
        BodyCheck::FieldsAndAbsent(fields, absent) => {
            check_body(&BodyCheck::Fields(fields.clone()), body, what);
            for pointer in absent {
                assert!(body.pointer(pointer).is_none(), "{what}: {pointer} should be absent in {body:#}");
            }
        }
    }
}

pub async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    expected: Vec<Expect>,
) -> Seen {
    let mut expected = expected.into_iter();
    let mut seen = Seen::default();
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = request.into_body().collect_bytes().await.expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON request body")
        };
        if path.starts_with("/apis/events.k8s.io/v1/") {
            seen.events.push((
                body["type"].as_str().unwrap_or_default().to_owned(),
                body["reason"].as_str().unwrap_or_default().to_owned(),
                body["note"].as_str().map(str::to_owned),
            ));
            send.send_response(
                Response::builder().status(201).body(Body::from(bytes.to_vec())).expect("response"),
            );
            continue;
        }
        let Some(exp) = expected.next() else {
            seen.unexpected.push(format!("{method} {path} {body}"));
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "unexpected", "reason": "InternalError"});
            send.send_response(
                Response::builder()
                    .status(500)
                    .body(Body::from(status.to_string().into_bytes()))
                    .expect("response"),
            );
            continue;
        };
        let what = format!("{method} {path}");
        assert_eq!((&method, path.as_str()), (&exp.method, exp.path), "request out of order");
        check_body(&exp.body, &body, &what);
        let reply = match exp.reply {
            Reply::Echo => bytes.to_vec(),
            Reply::Json(v) => v.to_string().into_bytes(),
        };
        send.send_response(Response::builder().status(exp.status).body(Body::from(reply)).expect("response"));
    }
    seen.missing = expected.map(|e| format!("{} {}", e.method, e.path)).collect();
    seen
}

pub fn fill<K>(mut writer: Writer<K>, objects: &[Value]) -> kube::runtime::reflector::Store<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned,
    K::DynamicType: Clone + Eq + std::hash::Hash,
{
    for object in objects {
        let object: K = serde_json::from_value(object.clone()).expect("fixture object");
        writer.apply_watcher_event(&watcher::Event::Apply(object));
    }
    writer.as_reader()
}
