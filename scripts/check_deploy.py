"""Offline checks of the deployment artefacts under deploy/ that no schema can make.

Run by scripts/check-deploy (which renders the kustomizations, runs kubernetes-validate and
promtool) in the project venv. Usage:

    check_deploy.py RENDERED_BASE RENDERED_OPERATOR DASHBOARD_RULES_OUT

- The manifests agree with reviewloop.toml, the Dockerfile and each other: ports, probes, the
  non-root read-only container, the shutdown timeline derived from server.shutdown_grace, the
  joiners' replicas against the partition count, what the metrics Service and ServiceMonitor
  select.
- The ServiceMonitor against the Prometheus Operator's ServiceMonitor model (a CRD the
  Kubernetes schemas do not know), unknown fields included.
- The Grafana dashboard: its structure, the datasource and route variables, the route filter on
  every metric that has a route label (README's Metrics table), and its PromQL written out as
  recording rules to DASHBOARD_RULES_OUT for `promtool check rules`.
- rules.test.yml tests every rule of rules.yml: each alert firing and quiet, each recording
  rule's value.

Exits 1 naming every problem found.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
CONFIG_PATH = "/etc/reviewloop/reviewloop.toml"
REVIEWLOOP_COMMANDS = {"proxy", "join", "run", "console"}
# After SIGTERM the model needs a moment of its own to exit before SIGKILL.
MODEL_EXIT_SECONDS = 5

problems = []
checked = 0


def check(condition, message):
    global checked
    checked += 1
    if not condition:
        problems.append(message)
    return condition


def port_of(address):
    host, _, port = address.rpartition(":")
    return host, int(port)


def duration_seconds(text):
    """A reviewloop duration string ("30s", "5m", "1h") in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip())
    if not match:
        raise ValueError(f"unsupported duration {text!r}")
    value, unit = int(match[1]), match[2]
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def documents(path):
    return [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


def by_kind(docs, kind):
    return [doc for doc in docs if doc["kind"] == kind]


def reviewloop_containers(pod_spec):
    return [
        c for c in pod_spec["containers"] if c.get("args") and c["args"][0] in REVIEWLOOP_COMMANDS
    ]


def named_port(container, name):
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == name), None)


def prestop_sleep(container):
    return container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_manifests(base_docs, operator_docs):
    config_text = (KUBE / "base" / "reviewloop.toml").read_text()
    config = tomllib.loads(config_text)
    server, kafka = config["server"], config["kafka"]
    admin_host, admin_port = port_of(server["admin_listen"])
    listen_host, listen_port = port_of(server["listen"])
    grace = duration_seconds(server["shutdown_grace"])
    image_user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    check(image_user, "Dockerfile: no numeric USER line")
    check(admin_host == "0.0.0.0", f"reviewloop.toml: server.admin_listen = {server['admin_listen']}: the kubelet and Prometheus cannot reach it")
    check(listen_host == "0.0.0.0", f"reviewloop.toml: server.listen = {server['listen']}: the Service cannot reach it")

    config_maps = by_kind(base_docs, "ConfigMap")
    check(
        any(cm.get("data", {}).get("reviewloop.toml") == config_text for cm in config_maps),
        "no ConfigMap carries reviewloop.toml as it is in deploy/kubernetes/base",
    )
    config_map_names = {cm["metadata"]["name"] for cm in config_maps}

    deployments = by_kind(base_docs, "Deployment")
    services = by_kind(base_docs, "Service")
    pods_with_admin = []
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        pod = template["spec"]
        containers = reviewloop_containers(pod)
        if not check(containers, f"Deployment {name}: no reviewloop container"):
            continue
        check(
            selects(deployment["spec"]["selector"]["matchLabels"], template["metadata"]["labels"]),
            f"Deployment {name}: its selector does not match its pod template",
        )
        annotations = template["metadata"].get("annotations", {})
        check(annotations.get("prometheus.io/scrape") == "true", f"Deployment {name}: no prometheus.io/scrape annotation")
        check(annotations.get("prometheus.io/port") == str(admin_port), f"Deployment {name}: prometheus.io/port is not the admin port {admin_port}")
        pods_with_admin.append((name, template["metadata"]["labels"]))
        mounts = {v["name"]: v for v in pod.get("volumes", [])}
        for c in containers:
            where = f"Deployment {name}, container {c['name']}"
            command = c["args"][0]
            check(c["args"] == [command, "--config", CONFIG_PATH], f"{where}: args {c['args']} do not read {CONFIG_PATH}")
            mount = next((m for m in c.get("volumeMounts", []) if CONFIG_PATH.startswith(m["mountPath"] + "/")), None)
            check(
                mount and mounts.get(mount["name"], {}).get("configMap", {}).get("name") in config_map_names,
                f"{where}: {CONFIG_PATH} is not mounted from the reviewloop.toml ConfigMap",
            )
            security = c.get("securityContext", {})
            check(security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not true")
            check(security.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem is not true")
            check(security.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation is not false")
            check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities are not all dropped")
            if image_user:
                check(security.get("runAsUser") == int(image_user[1]), f"{where}: runAsUser is not the image's USER {image_user[1]}")
            check(named_port(c, "admin") == admin_port, f"{where}: port 'admin' is not server.admin_listen's {admin_port}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                check(get.get("path") == path and get.get("port") == "admin", f"{where}: {probe} is not GET {path} on the admin port")
            resources = c.get("resources", {})
            check(
                {"cpu", "memory"} <= set(resources.get("requests", {})) and "memory" in resources.get("limits", {}),
                f"{where}: needs cpu and memory requests and a memory limit",
            )
            if command == "proxy":
                check_sidecar_pod(name, pod, c, config, listen_port, grace, services, template)
            if command == "join":
                replicas = deployment["spec"].get("replicas", 1)
                check(
                    replicas <= kafka["topic_partitions"],
                    f"Deployment {name}: {replicas} joiners for kafka.topic_partitions = {kafka['topic_partitions']}: the extra ones would own nothing",
                )
            if command == "console":
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                listen = env.get("REVIEWLOOP__CONSOLE__LISTEN", "")
                check(
                    listen.startswith("0.0.0.0:") and port_of(listen)[1] == named_port(c, "http"),
                    f"{where}: REVIEWLOOP__CONSOLE__LISTEN = {listen!r} is not 0.0.0.0 on the port named http",
                )

    metrics = next((s for s in services if s["metadata"]["name"] == "reviewloop-metrics"), None)
    if check(metrics, "no Service reviewloop-metrics"):
        check(metrics["spec"].get("clusterIP") == "None", "Service reviewloop-metrics is not headless")
        check(
            [p.get("targetPort") for p in metrics["spec"]["ports"]] == ["admin"],
            "Service reviewloop-metrics does not target the admin port only",
        )
        for name, labels in pods_with_admin:
            check(selects(metrics["spec"]["selector"], labels), f"Service reviewloop-metrics does not select Deployment {name}'s pods")
        check_service_monitor(operator_docs, metrics)


def check_sidecar_pod(name, pod, proxy, config, listen_port, grace, services, template):
    where = f"Deployment {name}"
    check(named_port(proxy, "http") == listen_port, f"{where}: port 'http' is not server.listen's {listen_port}")
    upstream_host, upstream_port = port_of(config["upstream"]["url"].removeprefix("http://").rstrip("/"))
    check(upstream_host in ("127.0.0.1", "localhost"), f"reviewloop.toml: upstream.url is not on localhost")
    models = [c for c in pod["containers"] if c is not proxy]
    check(
        any(p["containerPort"] == upstream_port for m in models for p in m.get("ports", [])),
        f"{where}: no container of the pod listens on upstream.url's port {upstream_port}",
    )
    proxy_sleep = prestop_sleep(proxy)
    if check(proxy_sleep, f"{where}: reviewloop has no preStop sleep (the pod would refuse requests still routed to it)"):
        drained_at = proxy_sleep + grace
        for model in models:
            model_sleep = prestop_sleep(model) or 0
            check(
                model_sleep >= drained_at,
                f"{where}: container {model['name']} gets SIGTERM at {model_sleep} s, before reviewloop has drained "
                f"(preStop {proxy_sleep} s + shutdown_grace {grace:g} s = {drained_at:g} s)",
            )
            termination = pod.get("terminationGracePeriodSeconds", 30)
            check(
                termination >= model_sleep + MODEL_EXIT_SECONDS,
                f"{where}: terminationGracePeriodSeconds {termination} leaves container {model['name']} less than "
                f"{MODEL_EXIT_SECONDS} s after its SIGTERM at {model_sleep} s",
            )
    serving = [
        s for s in services
        if s["spec"].get("clusterIP") != "None" and selects(s["spec"]["selector"], template["metadata"]["labels"])
    ]
    check(
        serving and all(p.get("targetPort") == "http" for s in serving for p in s["spec"]["ports"]),
        f"{where}: no Service sends its traffic to reviewloop's port 'http' (or one bypasses it)",
    )


def check_service_monitor(operator_docs, metrics_service):
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    monitors = by_kind(operator_docs, "ServiceMonitor")
    if not check(len(monitors) == 1, f"prometheus-operator: {len(monitors)} ServiceMonitors, expected 1"):
        return
    doc = monitors[0]
    try:
        model = ServiceMonitor.model_validate(doc)
    except Exception as e:  # pydantic's ValidationError names every bad field
        check(False, f"ServiceMonitor does not validate: {e}")
        return
    # The model ignores fields it does not know: whatever did not survive the round trip is one.
    kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    for path in dropped_fields(doc, kept):
        check(False, f"ServiceMonitor: unknown field {path}")
    spec = doc["spec"]
    check(selects(spec["selector"]["matchLabels"], metrics_service["metadata"]["labels"]), "the ServiceMonitor does not select Service reviewloop-metrics")
    names = {p["name"] for p in metrics_service["spec"]["ports"]}
    check(all(e.get("port") in names for e in spec["endpoints"]), "a ServiceMonitor endpoint names a port the metrics Service lacks")


def dropped_fields(given, kept, path=""):
    if isinstance(given, dict):
        for key, value in given.items():
            if not isinstance(kept, dict) or key not in kept:
                yield f"{path}.{key}"
            else:
                yield from dropped_fields(value, kept[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(given, kept)):
            yield from dropped_fields(a, b, f"{path}[{i}]")


def check_kustomizations():
    """Every YAML file next to a kustomization is one of its resources: none escapes validation."""
    for kustomization in KUBE.glob("*/kustomization.yaml"):
        listed = set(yaml.safe_load(kustomization.read_text()).get("resources", []))
        for path in kustomization.parent.glob("*.yaml"):
            if path.name != "kustomization.yaml":
                check(path.name in listed, f"{path.relative_to(ROOT)} is not in {kustomization.relative_to(ROOT)}")


def route_labelled_metrics():
    """Metrics whose README row lists a `route` label."""
    names = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`reviewloop_") and "`route`" in cells[2]:
            names.add(cells[0].strip("`"))
    check(names, "README.md: no metric with a `route` label in the Metrics table")
    return names


def check_dashboard(rules_out):
    dashboard = json.loads((DEPLOY / "grafana" / "reviewloop.json").read_text())
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    datasource = variables.get("datasource", {})
    check(datasource.get("type") == "datasource" and datasource.get("query") == "prometheus", "dashboard: no Prometheus datasource variable 'datasource'")
    route = variables.get("route", {})
    check(
        route.get("type") == "query" and "route" in json.dumps(route.get("query")) and route.get("includeAll") and route.get("allValue") == ".*",
        "dashboard: no route variable (label_values of route, with All as .*)",
    )
    with_route = route_labelled_metrics()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    check(len(ids) == len(set(ids)), "dashboard: panel ids repeat")
    cells = {}
    rules = []
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        check(0 <= grid["x"] and grid["x"] + grid["w"] <= 24, f"dashboard: panel {panel['title']!r} is wider than the grid")
        covered = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        overlapped = {cells[cell] for cell in covered if cell in cells}
        check(not overlapped, f"dashboard: panel {panel['title']!r} overlaps {sorted(overlapped)}")
        cells.update(dict.fromkeys(covered, panel["title"]))
    for panel in panels:
        title = panel["title"]
        check(panel.get("datasource", {}).get("uid") == "${datasource}", f"dashboard: panel {title!r} does not use the datasource variable")
        targets = panel.get("targets", [])
        check(targets, f"dashboard: panel {title!r} has no query")
        check(len({t["refId"] for t in targets}) == len(targets), f"dashboard: panel {title!r} repeats a refId")
        for target in targets:
            expr = target.get("expr", "")
            check(target.get("datasource", {}).get("uid") == "${datasource}", f"dashboard: a query of {title!r} does not use the datasource variable")
            for metric, selector in re.findall(r"\b(reviewloop_[a-z_]+?)(?:_bucket|_sum|_count)?\b(\{[^}]*\})?", expr):
                if metric in with_route:
                    check('route=~"$route"' in selector, f"dashboard: {title!r}: {metric} is not filtered by the route variable in {expr}")
            concrete = expr.replace("$__rate_interval", "1m").replace("$route", ".*")
            check("$" not in concrete, f"dashboard: {title!r}: unknown variable in {expr}")
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId'].lower()}", "expr": concrete})
    Path(rules_out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))


def check_rule_tests():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules.test.yml").read_text())["tests"]
    alert_cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    expr_cases = [case["expr"] for test in tests for case in test.get("promql_expr_test", [])]
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                name = rule["alert"]
                cases = [c for c in alert_cases if c["alertname"] == name]
                check(any(c.get("exp_alerts") for c in cases), f"rules.test.yml: no test where {name} fires")
                check(any(not c.get("exp_alerts") for c in cases), f"rules.test.yml: no test where {name} stays quiet")
            else:
                check(rule["record"] in expr_cases, f"rules.test.yml: no test of the recording rule {rule['record']}")


def main():
    base, operator, dashboard_rules = sys.argv[1:4]
    base_docs, operator_docs = documents(base), documents(operator)
    check_kustomizations()
    check_manifests(base_docs, operator_docs)
    check_dashboard(dashboard_rules)
    check_rule_tests()
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    if problems:
        print(f"check_deploy: {len(problems)} of {checked} checks failed", file=sys.stderr)
        sys.exit(1)
    print(f"check_deploy: {checked} checks passed")


if __name__ == "__main__":
    main()
