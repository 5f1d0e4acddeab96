use super::*;

fn pod() -> Value {
    json!({
        "metadata": {"labels": {"app": "reviews", "version": "v1"}},
        "spec": {
            "serviceAccountName": "bookinfo-reviews",
            "containers": [{
                "name": "reviews",
                "image": "example/reviews:1",
                "ports": [{"name": "http", "containerPort": 9080}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
            }],
        },
    })
}

fn ctx() -> PodContext {
    PodContext {
        namespace: "shop".into(),
        owner_name: Some("reviews-v1".into()),
    }
}

#[test]
fn the_patch_makes_the_injected_pod_from_the_original() {
    let original = pod();
    let injected = inject(&original, &ctx(), &InjectSettings::default()).unwrap();
    assert!(!injected.patch.0.is_empty());
    let mut patched = original.clone();
    json_patch::patch(&mut patched, &injected.patch).unwrap();
    assert_eq!(patched, injected.pod);
    let inits: Vec<&str> = injected.pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, [INIT_CONTAINER, PROXY_CONTAINER]);
}

#[test]
fn injecting_twice_changes_nothing() {
    let once = inject(&pod(), &ctx(), &InjectSettings::default()).unwrap().pod;
    let twice = inject(&once, &ctx(), &InjectSettings::default()).unwrap();
    assert!(twice.patch.0.is_empty(), "{:?}", twice.patch);
    assert_eq!(twice.pod, once);
}

#[test]
fn the_app_init_containers_run_after_the_proxy() {
    let mut p = pod();
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "example/migrate:1"}]);
    let out = inject(&p, &ctx(), &InjectSettings::default()).unwrap().pod;
    let names: Vec<&str> = out["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
}

#[test]
fn the_workload_name_comes_from_labels_then_the_owner_then_the_pod() {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let no_owner = PodContext::default();
    let p = json!({"metadata": {"generateName": "reviews-v1-7d9f8c6b5-"}});
    assert_eq!(
        workload_name(&p, &labels(&[("app", "a"), ("app.kubernetes.io/name", "b")]), &no_owner),
        "b"
    );
    assert_eq!(workload_name(&p, &labels(&[("app", "a")]), &no_owner), "a");
    assert_eq!(workload_name(&p, &labels(&[]), &ctx()), "reviews-v1");
    assert_eq!(workload_name(&p, &labels(&[]), &no_owner), "reviews-v1");
}

#[test]
fn a_malformed_pod_is_refused_by_field() {
    let s = InjectSettings::default();
    for (p, field) in [
        (json!({"spec": {}}), "spec.containers"),
        (json!({"spec": {"containers": {}}}), "spec.containers"),
        (
            json!({"spec": {"containers": [{"image": "x"}]}}),
            "spec.containers[0].name",
        ),
        (
            json!({"spec": {"containers": [{"name": "a"}], "volumes": {}}}),
            "spec.volumes",
        ),
        (
            json!({"metadata": {"labels": []}, "spec": {"containers": [{"name": "a"}]}}),
            "metadata.labels",
        ),
    ] {
        let e = inject(&p, &ctx(), &s).unwrap_err().to_string();
        assert!(e.starts_with(field), "{p}: {e}");
    }
}

#[test]
fn rewrite_app_http_probers_false_leaves_probes_alone() {
    let mut p = pod();
    p["metadata"]["annotations"] = json!({"sidecar.istio.io/rewriteAppHTTPProbers": "false"});
    let out = inject(&p, &ctx(), &InjectSettings::default()).unwrap().pod;
    assert_eq!(
        out["spec"]["containers"][0]["readinessProbe"],
        p["spec"]["containers"][0]["readinessProbe"]
    );
    let env = &out["spec"]["initContainers"][1]["env"];
    assert!(
        env.as_array().unwrap().iter().all(|e| e["name"] != APP_PROBERS_ENV),
        "{env}"
    );
}

#[test]
fn the_apps_own_prometheus_annotations_are_kept() {
    let mut p = pod();
    p["metadata"]["annotations"] = json!({"prometheus.io/port": "9102"});
    let out = inject(&p, &ctx(), &InjectSettings::default()).unwrap().pod;
    assert_eq!(out["metadata"]["annotations"]["prometheus.io/port"], "9102");
    assert_eq!(out["metadata"]["annotations"]["prometheus.io/scrape"], "true");
}

/// The sidecar's worker count: the injector's setting, overridden by Istio's per-pod
/// `proxy.istio.io/config` `concurrency` (0: one per allowed core); a bad one is refused by name.
#[test]
fn the_worker_count_comes_from_the_settings_or_istios_proxy_config() {
    let workers = |pod: &Value, settings: &InjectSettings| -> Option<String> {
        let injected = inject(pod, &ctx(), settings).unwrap().pod;
        let proxy = injected["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == PROXY_CONTAINER)
            .unwrap()
            .clone();
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "RINGMESH_WORKERS")
            .map(|e| e["value"].as_str().unwrap().to_owned())
    };
    let two = InjectSettings {
        proxy_workers: Some(2),
        ..Default::default()
    };
    assert_eq!(workers(&pod(), &InjectSettings::default()), None);
    assert_eq!(workers(&pod(), &two).as_deref(), Some("2"));
    let mut annotated = pod();
    annotated["metadata"]["annotations"] =
        json!({"proxy.istio.io/config": "concurrency: 4\nholdApplicationUntilProxyStarts: true\n"});
    assert_eq!(workers(&annotated, &two).as_deref(), Some("4"));
    annotated["metadata"]["annotations"] = json!({"proxy.istio.io/config": "concurrency: 0"});
    assert_eq!(workers(&annotated, &two), None);
    annotated["metadata"]["annotations"] = json!({"proxy.istio.io/config": "concurrency: lots"});
    let e = inject(&annotated, &ctx(), &two).unwrap_err().to_string();
    assert!(e.contains("proxy.istio.io/config") && e.contains("concurrency"), "{e}");
}
