//! The Kubernetes provider against kube-rs' mock service: each test plays the API server,
//! asserting every request the provider sends (method, path, query, body) and answering it.
//! No cluster is needed; the real-cluster suite is `crates/server/tests/e2e_kubernetes_provider.rs`.

use std::{collections::BTreeMap, time::Duration};

use hodei_domain::{OneTimeToken, Resources, WorkerFailure, WorkerId};
use hodei_providers::{
    ManagedWorker, ProviderError, WorkerDefaults, WorkerProvider, WorkerSpec, WorkerStatus,
    kubernetes::{KubernetesProvider, KubernetesProviderConfig, pod_name, secret_name},
};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock;

const NAMESPACE: &str = "hodei-e2e";
const IMAGE: &str = "hodei-worker:e2e-test";
/// Bound on every wait, so a provider that stops sending requests fails the test, not hangs it.
const STEP: Duration = Duration::from_secs(10);

/// One request the provider sent, decoded.
#[derive(Debug)]
struct Seen {
    path: String,
    query: BTreeMap<String, String>,
    body: Value,
    raw_body: String,
}

/// The test's side of the mock service: the API server.
struct ApiServer {
    handle: mock::Handle<Request<Body>, Response<Body>>,
}

type Responder = mock::SendResponse<Response<Body>>;

impl ApiServer {
    /// Waits for the next request and asserts its method and path (without query).
    async fn expect(&mut self, method: Method, path: &str) -> (Seen, Responder) {
        let (request, respond) = tokio::time::timeout(STEP, self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request within {STEP:?}; expected {method} {path}"))
            .unwrap_or_else(|| panic!("provider dropped; expected {method} {path}"));
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let raw_body = String::from_utf8(bytes.to_vec()).unwrap();
        let seen = Seen {
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(parse_query).unwrap_or_default(),
            body: if raw_body.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&raw_body).unwrap()
            },
            raw_body,
        };
        assert_eq!(
            (&parts.method, seen.path.as_str()),
            (&method, path),
            "unexpected request {seen:?}"
        );
        (seen, respond)
    }

    /// Asserts that the provider sends nothing more (its client was dropped).
    async fn expect_no_more_requests(mut self) {
        match tokio::time::timeout(STEP, self.handle.next_request()).await {
            Ok(None) => {}
            Ok(Some((request, _))) => panic!(
                "unexpected extra request {} {}",
                request.method(),
                request.uri()
            ),
            Err(_) => panic!("the provider's client was not dropped"),
        }
    }
}

fn config() -> KubernetesProviderConfig {
    let mut config = KubernetesProviderConfig::new(NAMESPACE, IMAGE);
    config.poll_interval = Duration::from_millis(5);
    config.request_timeout = Duration::from_secs(5);
    config
}

/// A provider whose client talks to the returned [`ApiServer`].
fn mock_provider(config: KubernetesProviderConfig) -> (KubernetesProvider, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NAMESPACE);
    (
        KubernetesProvider::with_client(client, config),
        ApiServer { handle },
    )
}

/// Runs `operation` on its own task (dropping the provider when done) so the test can serve
/// its requests.
fn run<T, F, Fut>(provider: KubernetesProvider, operation: F) -> JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce(KubernetesProvider) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    tokio::spawn(operation(provider))
}

async fn finish<T>(task: JoinHandle<T>) -> T {
    tokio::time::timeout(STEP, task)
        .await
        .expect("operation did not finish")
        .expect("operation panicked")
}

fn spec() -> WorkerSpec {
    WorkerSpec {
        worker_id: WorkerId::new(),
        token: OneTimeToken::generate(),
        server_address: "http://172.18.0.1:50051".into(),
        instance: "ci-1".into(),
        resources: Resources {
            cpu_millis: 250,
            memory_bytes: 128 * 1024 * 1024,
        },
        lifetime: Some(Duration::from_secs(600)),
        extra_env: BTreeMap::from([("HODEI_TLS_CA_PEM".to_string(), "pem".to_string())]),
    }
}

fn respond_json(respond: Responder, status: u16, body: &Value) {
    let response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    respond.send_response(response);
}

/// A Kubernetes `Status` error body, as the API server sends it.
fn respond_status(respond: Responder, code: u16, reason: &str, message: &str) {
    respond_json(
        respond,
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    );
}

fn respond_not_found(respond: Responder, what: &str) {
    respond_status(respond, 404, "NotFound", &format!("{what} not found"));
}

/// The object as the API server would return it after a create: with a uid.
fn created(mut object: Value, uid: &str) -> Value {
    object["metadata"]["uid"] = json!(uid);
    object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    object
}

fn pod_json(name: &str, extra_metadata: Value, status: Value) -> Value {
    let mut metadata = json!({ "name": name, "namespace": NAMESPACE, "uid": "pod-uid" });
    if let (Some(metadata), Some(extra)) = (metadata.as_object_mut(), extra_metadata.as_object()) {
        metadata.extend(extra.clone());
    }
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": { "containers": [{ "name": "worker", "image": IMAGE }] },
            "status": status })
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn expected_labels(spec: &WorkerSpec) -> Value {
    json!({
        "app.kubernetes.io/name": "hodei-worker",
        "app.kubernetes.io/managed-by": "hodei",
        "hodei.io/worker-id": spec.worker_id.to_string(),
        "hodei.io/instance": "ci-1",
    })
}

const SECRETS: &str = "/api/v1/namespaces/hodei-e2e/secrets";
const PODS: &str = "/api/v1/namespaces/hodei-e2e/pods";

#[tokio::test]
async fn create_worker_creates_the_hardened_pod_then_the_secret_owned_by_it() {
    let (provider, mut api) = mock_provider(config());
    let spec = spec();
    let id = spec.worker_id;
    let task = run(provider, {
        let spec = spec.clone();
        |p| async move { p.create_worker(&spec).await }
    });

    // 1. The Pod, first: the Secret is created owned by it, so none exists without its Pod.
    let (pod, respond) = api.expect(Method::POST, PODS).await;
    let body = &pod.body;
    assert!(
        !pod.raw_body.contains(spec.token.expose()),
        "the token must not appear in the Pod spec"
    );
    assert!(
        !pod.raw_body
            .contains(&base64(spec.token.expose().as_bytes())),
        "the token must not appear in the Pod spec, not even as the Secret's encoding"
    );
    assert_eq!(body["metadata"]["name"], pod_name(&id));
    assert_eq!(body["metadata"]["labels"], expected_labels(&spec));
    let pod_spec = &body["spec"];
    assert_eq!(pod_spec["restartPolicy"], "Never");
    assert_eq!(pod_spec["automountServiceAccountToken"], false);
    assert_eq!(pod_spec["enableServiceLinks"], false);
    assert_eq!(pod_spec["activeDeadlineSeconds"], 600);
    assert_eq!(pod_spec["terminationGracePeriodSeconds"], 10);
    assert_eq!(
        pod_spec["securityContext"],
        json!({ "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": { "type": "RuntimeDefault" } })
    );
    assert_eq!(
        pod_spec["volumes"],
        json!([{ "name": "tmp", "emptyDir": {} }, { "name": "home", "emptyDir": {} }])
    );
    let container = &pod_spec["containers"][0];
    assert_eq!(pod_spec["containers"].as_array().unwrap().len(), 1);
    assert_eq!(container["name"], "worker");
    assert_eq!(container["image"], IMAGE);
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        container["terminationMessagePolicy"],
        "FallbackToLogsOnError"
    );
    assert_eq!(
        container["env"],
        json!([
            { "name": "HODEI_SERVER", "value": "http://172.18.0.1:50051" },
            { "name": "HODEI_WORKER_ID", "value": id.to_string() },
            { "name": "HODEI_TOKEN", "valueFrom": { "secretKeyRef":
                { "name": secret_name(&id), "key": "token", "optional": false } } },
            { "name": "HODEI_TLS_CA_PEM", "value": "pem" },
        ])
    );
    let quantities = json!({ "cpu": "250m", "memory": "134217728" });
    assert_eq!(
        container["resources"],
        json!({ "requests": quantities, "limits": quantities })
    );
    assert_eq!(
        container["securityContext"],
        json!({ "allowPrivilegeEscalation": false, "privileged": false,
                "capabilities": { "drop": ["ALL"] }, "readOnlyRootFilesystem": true })
    );
    assert_eq!(
        container["volumeMounts"],
        json!([{ "name": "tmp", "mountPath": "/tmp" },
               { "name": "home", "mountPath": "/home/hodei" }])
    );
    respond_json(respond, 201, &created(body.clone(), "pod-uid-42"));

    // 2. The Secret: labels, the token under `token`, immutable, owned by the Pod's uid.
    let (secret, respond) = api.expect(Method::POST, SECRETS).await;
    assert_eq!(
        secret.body["metadata"],
        json!({ "name": secret_name(&id), "labels": expected_labels(&spec),
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Pod", "name": pod_name(&id),
                    "uid": "pod-uid-42", "controller": true, "blockOwnerDeletion": false,
                }] })
    );
    assert_eq!(secret.body["type"], "Opaque");
    assert_eq!(secret.body["immutable"], true);
    assert_eq!(
        secret.body["data"],
        json!({ "token": base64(spec.token.expose().as_bytes()) })
    );
    respond_json(respond, 201, &created(secret.body.clone(), "secret-uid"));

    let handle = finish(task).await.expect("create_worker");
    assert_eq!(handle.worker_id, id);
    assert_eq!(handle.resource, pod_name(&id));
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn a_pod_for_a_job_without_limits_gets_the_default_requests_and_limits_not_best_effort() {
    let mut config = config();
    config.defaults = WorkerDefaults {
        cpu_millis: 1500,
        cpu_request_millis: 200,
        memory_bytes: 256 << 20,
        pids_limit: 64,
        home: "/work".into(),
    };
    let (provider, mut api) = mock_provider(config);
    let mut spec = spec();
    spec.resources = Resources::default();
    let task = run(provider, {
        let spec = spec.clone();
        |p| async move { p.create_worker(&spec).await }
    });

    let (pod, respond) = api.expect(Method::POST, PODS).await;
    let container = &pod.body["spec"]["containers"][0];
    // Burstable: memory requested as limited (no overcommit), a smaller CPU request.
    assert_eq!(
        container["resources"],
        json!({ "requests": { "cpu": "200m", "memory": "268435456" },
                "limits": { "cpu": "1500m", "memory": "268435456" } })
    );
    assert_eq!(
        container["volumeMounts"],
        json!([{ "name": "tmp", "mountPath": "/tmp" }, { "name": "home", "mountPath": "/work" }])
    );
    respond_status(respond, 403, "Forbidden", "cannot create pods");
    finish(task).await.expect_err("the Pod was refused");
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn when_the_pod_cannot_be_created_nothing_else_is_and_rbac_is_named() {
    let (provider, mut api) = mock_provider(config());
    let spec = spec();
    let task = run(provider, {
        let spec = spec.clone();
        |p| async move { p.create_worker(&spec).await }
    });

    let (_, respond) = api.expect(Method::POST, PODS).await;
    respond_status(
        respond,
        403,
        "Forbidden",
        "pods is forbidden: User \"system:serviceaccount:hodei-e2e:x\" cannot create resource \
         \"pods\" in API group \"\" in the namespace \"hodei-e2e\"",
    );

    let err = finish(task).await.expect_err("must fail");
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("forbidden: cannot create pods in namespace hodei-e2e"),
        "{text}"
    );
    assert!(text.contains("deploy/kubernetes/rbac-test.yaml"), "{text}");
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn when_the_secret_cannot_be_created_the_pod_is_deleted_at_once_and_the_secret_left_alone() {
    let (provider, mut api) = mock_provider(config());
    let spec = spec();
    let id = spec.worker_id;
    let task = run(provider, {
        let spec = spec.clone();
        |p| async move { p.create_worker(&spec).await }
    });

    let (pod, respond) = api.expect(Method::POST, PODS).await;
    respond_json(respond, 201, &created(pod.body, "pod-uid"));
    let (_, respond) = api.expect(Method::POST, SECRETS).await;
    // A Secret of that name that is not ours (a worker id is never reused): left alone.
    respond_status(
        respond,
        409,
        "AlreadyExists",
        "secrets \"x\" already exists",
    );
    // Rollback: the Pod at once (it never became usable); nothing is deleted by Secret name.
    let (delete_pod, respond) = api
        .expect(Method::DELETE, &format!("{PODS}/{}", pod_name(&id)))
        .await;
    assert_eq!(delete_pod.body["gracePeriodSeconds"], 0);
    respond_json(
        respond,
        200,
        &pod_json(&pod_name(&id), json!({}), json!({})),
    );

    let err = finish(task).await.expect_err("must fail");
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    assert!(err.to_string().contains("already exists"), "{err}");
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn destroy_of_a_worker_that_is_already_gone_is_done_after_two_404s() {
    let (provider, mut api) = mock_provider(config());
    let id = WorkerId::new();
    let task = run(provider, |p| async move { p.destroy_worker(&id).await });

    let (delete_pod, respond) = api
        .expect(Method::DELETE, &format!("{PODS}/{}", pod_name(&id)))
        .await;
    assert_eq!(
        delete_pod.body,
        json!({ "gracePeriodSeconds": 10, "propagationPolicy": "Background" })
    );
    respond_not_found(respond, "pod");
    let (_, respond) = api
        .expect(Method::DELETE, &format!("{SECRETS}/{}", secret_name(&id)))
        .await;
    respond_not_found(respond, "secret");

    finish(task).await.expect("404s mean already destroyed");
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn destroy_returns_only_once_the_pod_is_gone() {
    let (provider, mut api) = mock_provider(config());
    let id = WorkerId::new();
    let name = pod_name(&id);
    let task = run(provider, |p| async move { p.destroy_worker(&id).await });

    let terminating = pod_json(
        &name,
        json!({ "deletionTimestamp": "2026-01-01T00:00:10Z" }),
        json!({ "phase": "Running" }),
    );
    let (_, respond) = api.expect(Method::DELETE, &format!("{PODS}/{name}")).await;
    respond_json(respond, 200, &terminating);
    let (_, respond) = api
        .expect(Method::DELETE, &format!("{SECRETS}/{}", secret_name(&id)))
        .await;
    respond_json(
        respond,
        200,
        &json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" }),
    );
    for _ in 0..3 {
        let (_, respond) = api.expect(Method::GET, &format!("{PODS}/{name}")).await;
        respond_json(respond, 200, &terminating);
        assert!(
            !task.is_finished(),
            "destroy returned while the Pod still existed"
        );
    }
    let (_, respond) = api.expect(Method::GET, &format!("{PODS}/{name}")).await;
    respond_not_found(respond, "pod");

    finish(task).await.expect("destroy_worker");
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn destroy_gives_up_with_a_timeout_when_the_pod_never_goes_away() {
    let mut config = config();
    config.destroy_timeout = Duration::from_millis(100);
    let (provider, mut api) = mock_provider(config);
    let id = WorkerId::new();
    let name = pod_name(&id);
    let task = run(provider, |p| async move { p.destroy_worker(&id).await });

    let stuck = pod_json(
        &name,
        json!({ "deletionTimestamp": "2026-01-01T00:00:10Z" }),
        json!({}),
    );
    let (_, respond) = api.expect(Method::DELETE, &format!("{PODS}/{name}")).await;
    respond_json(respond, 200, &stuck);
    let (_, respond) = api
        .expect(Method::DELETE, &format!("{SECRETS}/{}", secret_name(&id)))
        .await;
    respond_not_found(respond, "secret");
    while !task.is_finished() {
        if let Ok(Some((request, respond))) =
            tokio::time::timeout(Duration::from_millis(50), api.handle.next_request()).await
        {
            assert_eq!(request.method(), Method::GET);
            respond_json(respond, 200, &stuck);
        }
    }
    let err = finish(task).await.expect_err("must time out");
    assert!(matches!(err, ProviderError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("Pod {name}")), "{err}");
}

#[tokio::test]
async fn list_managed_selects_pods_by_manager_and_instance_and_never_lists_secrets() {
    let (provider, mut api) = mock_provider(config());
    let with_pod = WorkerId::new();
    let task = run(provider, |p| async move { p.list_managed("ci-1").await });
    let selector = "app.kubernetes.io/managed-by=hodei,hodei.io/instance=ci-1";

    let (pods, respond) = api.expect(Method::GET, PODS).await;
    assert_eq!(
        pods.query.get("labelSelector").map(String::as_str),
        Some(selector)
    );
    let labelled = |id: String| json!({ "hodei.io/worker-id": id });
    respond_json(
        respond,
        200,
        &json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod_json(&pod_name(&with_pod), json!({ "labels": labelled(with_pod.to_string()) }), json!({})),
            pod_json("hodei-worker-odd", json!({ "labels": labelled("not-a-uuid".into()), "uid": "odd-uid" }), json!({})),
        ] }),
    );

    let listed = finish(task).await.expect("list_managed");
    assert_eq!(
        listed,
        vec![
            ManagedWorker {
                worker_id: Some(with_pod),
                resource: pod_name(&with_pod),
                uid: "pod-uid".into(),
            },
            ManagedWorker {
                worker_id: None,
                resource: "hodei-worker-odd".into(),
                uid: "odd-uid".into(),
            },
        ]
    );
    // No GET of secrets: `list` on Secrets would return every worker's token.
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn removing_a_listed_orphan_deletes_the_name_it_was_listed_with_under_a_uid_precondition() {
    let (provider, mut api) = mock_provider(config());
    let id = WorkerId::new();
    // Labelled with a worker id, but not named `hodei-worker-<id>`: the sweep used to delete
    // the derived name (a 404) and log "removing orphaned worker" forever.
    let found = ManagedWorker {
        worker_id: Some(id),
        resource: "orphan-probe".into(),
        uid: "1f6c0c52-probe-uid".into(),
    };
    let task = run(provider, {
        let found = found.clone();
        |p| async move {
            (
                p.remove_managed(&found).await,
                p.remove_managed(&found).await,
            )
        }
    });

    let (delete, respond) = api
        .expect(Method::DELETE, &format!("{PODS}/orphan-probe"))
        .await;
    assert_eq!(
        delete.body,
        json!({
            "gracePeriodSeconds": 10,
            "propagationPolicy": "Background",
            "preconditions": { "uid": "1f6c0c52-probe-uid" },
        })
    );
    respond_json(
        respond,
        200,
        &pod_json(
            "orphan-probe",
            json!({ "uid": "1f6c0c52-probe-uid", "deletionTimestamp": "2026-01-01T00:00:10Z" }),
            json!({ "phase": "Running" }),
        ),
    );
    // Again, after someone re-created `orphan-probe`: the API refuses the precondition, and
    // that newer Pod is not ours to delete.
    let (again, respond) = api
        .expect(Method::DELETE, &format!("{PODS}/orphan-probe"))
        .await;
    assert_eq!(
        again.body["preconditions"],
        json!({ "uid": "1f6c0c52-probe-uid" })
    );
    respond_status(
        respond,
        409,
        "Conflict",
        "Precondition failed: UID in precondition: 1f6c0c52-probe-uid, UID in object meta: \
         0b9e-new",
    );

    let (first, second) = finish(task).await;
    first.expect("the listed Pod is deleted");
    second.expect("a Pod re-created under the name is left alone, and that is done");
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn worker_status_is_not_found_after_a_404_and_classifies_the_pod_otherwise() {
    let (provider, mut api) = mock_provider(config());
    let id = WorkerId::new();
    let name = pod_name(&id);
    let task = run(provider, |p| async move {
        (p.worker_status(&id).await, p.worker_status(&id).await)
    });

    let (_, respond) = api.expect(Method::GET, &format!("{PODS}/{name}")).await;
    respond_not_found(respond, "pod");
    let (_, respond) = api.expect(Method::GET, &format!("{PODS}/{name}")).await;
    respond_json(
        respond,
        200,
        &pod_json(
            &name,
            json!({ "creationTimestamp": "2026-01-01T00:00:00Z" }),
            json!({ "phase": "Pending", "containerStatuses": [{
                "name": "worker", "image": "bad::image", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": { "waiting": { "reason": "InvalidImageName",
                                        "message": "Failed to apply default image tag" } },
            }] }),
        ),
    );

    let (first, second) = finish(task).await;
    assert_eq!(first.unwrap(), WorkerStatus::NotFound);
    assert_eq!(
        second.unwrap(),
        WorkerStatus::Failed(WorkerFailure::InvalidImage {
            image: IMAGE.into(),
            detail: "InvalidImageName: Failed to apply default image tag".into(),
        })
    );
}

/// A worker Pod scheduled to a node whose container is still being created, as it stays when
/// the node cannot create its sandbox.
fn pod_creating_its_sandbox(name: &str) -> Value {
    let mut pod = pod_json(
        name,
        json!({ "creationTimestamp": "2026-01-01T00:00:00Z" }),
        json!({ "phase": "Pending", "containerStatuses": [{
            "name": "worker", "image": IMAGE, "imageID": "", "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": "ContainerCreating" } },
        }] }),
    );
    pod["spec"]["nodeName"] = json!("kind-worker");
    pod
}

#[tokio::test]
async fn a_pod_whose_sandbox_cannot_be_created_fails_at_once_as_a_sandbox_creation_failure() {
    let (provider, mut api) = mock_provider(config());
    let id = WorkerId::new();
    let name = pod_name(&id);
    let task = run(provider, |p| async move { p.worker_status(&id).await });

    let (_, respond) = api.expect(Method::GET, &format!("{PODS}/{name}")).await;
    respond_json(respond, 200, &pod_creating_its_sandbox(&name));
    // The Pod's status only says ContainerCreating; its events say why it never ends.
    let (events, respond) = api
        .expect(Method::GET, "/api/v1/namespaces/hodei-e2e/events")
        .await;
    assert_eq!(
        events.query.get("fieldSelector").map(String::as_str),
        Some("involvedObject.uid=pod-uid,reason=FailedCreatePodSandBox")
    );
    let message = "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to \
                   start sandbox container task: cannot allocate memory";
    respond_json(
        respond,
        200,
        &json!({ "apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [{
            "metadata": { "name": format!("{name}.1"), "namespace": NAMESPACE },
            "involvedObject": { "kind": "Pod", "name": name, "uid": "pod-uid" },
            "reason": "FailedCreatePodSandBox", "type": "Warning", "count": 3,
            "message": message,
            "lastTimestamp": "2026-01-01T00:00:05Z",
        }] }),
    );

    assert_eq!(
        finish(task).await.expect("worker_status"),
        WorkerStatus::Failed(WorkerFailure::SandboxCreation {
            detail: message.into()
        })
    );
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn events_the_provider_may_not_read_leave_a_pod_creating_its_sandbox_pending() {
    let (provider, mut api) = mock_provider(config());
    let id = WorkerId::new();
    let name = pod_name(&id);
    let task = run(provider, |p| async move { p.worker_status(&id).await });

    let (_, respond) = api.expect(Method::GET, &format!("{PODS}/{name}")).await;
    respond_json(respond, 200, &pod_creating_its_sandbox(&name));
    let (_, respond) = api
        .expect(Method::GET, "/api/v1/namespaces/hodei-e2e/events")
        .await;
    respond_status(
        respond,
        403,
        "Forbidden",
        "events is forbidden: User \"system:serviceaccount:hodei-e2e:old-role\" cannot list \
         resource \"events\"",
    );

    assert_eq!(
        finish(task).await.expect("worker_status"),
        WorkerStatus::Pending {
            detail: "ContainerCreating".into()
        }
    );
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn an_image_the_registry_does_not_have_is_a_permanent_failure_at_once_despite_the_pull_grace()
{
    let mut config = config();
    config.image_pull_grace = Duration::from_secs(3600);
    let (provider, mut api) = mock_provider(config);
    let id = WorkerId::new();
    let name = pod_name(&id);
    let task = run(provider, |p| async move { p.worker_status(&id).await });

    let (_, respond) = api.expect(Method::GET, &format!("{PODS}/{name}")).await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    respond_json(
        respond,
        200,
        &pod_json(
            &name,
            json!({ "creationTimestamp": now }),
            json!({ "phase": "Pending", "containerStatuses": [{
                "name": "worker", "image": IMAGE, "imageID": "", "ready": false,
                "restartCount": 0,
                "state": { "waiting": { "reason": "ErrImagePull",
                    "message": "rpc error: code = NotFound desc = failed to pull and unpack image \
                                \"docker.io/library/hodei-worker:e2e-test\": not found" } },
            }] }),
        ),
    );

    let status = finish(task).await.unwrap();
    let WorkerStatus::Failed(failure) = status else {
        panic!("a missing image must fail at once, got {status:?}");
    };
    assert!(
        matches!(&failure, WorkerFailure::ImageNotFound { image, .. } if image == IMAGE),
        "{failure:?}"
    );
    assert!(failure.is_permanent());
}

#[tokio::test]
async fn the_stop_cause_of_a_worker_is_read_from_its_pod_evicted_preempted_deleted_or_gone() {
    let (provider, mut api) = mock_provider(config());
    let id = WorkerId::new();
    let name = pod_name(&id);
    let task = run(provider, |p| async move {
        let mut causes = Vec::new();
        for _ in 0..5 {
            causes.push(p.stop_cause(&id).await.unwrap());
        }
        causes
    });

    let created = json!({ "creationTimestamp": "2026-01-01T00:00:00Z" });
    let deleting = json!({ "creationTimestamp": "2026-01-01T00:00:00Z",
                           "deletionTimestamp": "2026-01-01T00:01:00Z" });
    let running = json!({ "phase": "Running" });
    let disrupted = |reason: &str, message: &str| {
        json!({ "phase": "Running", "conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": reason, "message": message }] })
    };
    for (metadata, status) in [
        (created.clone(), running.clone()),
        (deleting.clone(), running),
        (
            deleting.clone(),
            disrupted("EvictionByEvictionAPI", "Eviction API: evicting"),
        ),
        (
            deleting,
            disrupted(
                "PreemptionByScheduler",
                "default-scheduler: preempting to accommodate a higher priority pod",
            ),
        ),
    ] {
        let (_, respond) = api.expect(Method::GET, &format!("{PODS}/{name}")).await;
        respond_json(respond, 200, &pod_json(&name, metadata, status));
    }
    let (_, respond) = api.expect(Method::GET, &format!("{PODS}/{name}")).await;
    respond_not_found(respond, "pod");

    assert_eq!(
        finish(task).await,
        vec![
            None,
            Some("Pod deleted".into()),
            Some("Pod evicted: EvictionByEvictionAPI: Eviction API: evicting".into()),
            Some(
                "Pod preempted: PreemptionByScheduler: default-scheduler: preempting to \
                 accommodate a higher priority pod"
                    .into()
            ),
            Some("Pod deleted".into()),
        ]
    );
}

#[tokio::test]
async fn an_unreachable_api_is_unavailable_and_says_why() {
    let (provider, mut api) = mock_provider(config());
    let id = WorkerId::new();
    let task = run(provider, |p| async move { p.worker_status(&id).await });
    let (_, respond) = tokio::time::timeout(STEP, api.handle.next_request())
        .await
        .unwrap()
        .unwrap();
    respond.send_error(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "tcp connect error: Connection refused (os error 111)",
    ));
    let err = finish(task).await.expect_err("must fail");
    assert!(matches!(err, ProviderError::Unavailable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("cannot reach the Kubernetes API"), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert!(
        text.contains(&format!(
            "get pods {} in namespace hodei-e2e",
            pod_name(&id)
        )),
        "{text}"
    );
}

#[tokio::test]
async fn check_asks_for_the_version_then_lists_one_pod() {
    let (provider, mut api) = mock_provider(config());
    let task = run(provider, |p| async move { p.check().await });
    let (_, respond) = api.expect(Method::GET, "/version").await;
    respond_json(
        respond,
        200,
        &json!({ "major": "1", "minor": "34", "gitVersion": "v1.34.0", "gitCommit": "",
                 "gitTreeState": "clean", "buildDate": "2025-08-27T00:00:00Z",
                 "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64" }),
    );
    let (list, respond) = api.expect(Method::GET, PODS).await;
    assert_eq!(list.query.get("limit").map(String::as_str), Some("1"));
    respond_json(
        respond,
        200,
        &json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [] }),
    );
    finish(task).await.expect("check");
}
