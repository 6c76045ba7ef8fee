"""Checks the Helm chart with Helm's own engine, offline (run by `cargo xtask deploy-check`).

    chart.py check CHART              render value sets, lint, validate, reject broken values
    chart.py pods CHART VALUES OUT    write what each pod of that release runs (JSON) to OUT

Needs helm-python-sdk (Helm's Go SDK in a wheel), kubernetes-validate and PyYAML.
"""

import json
import re
import sys

import helm_python
import kubernetes_validate
import yaml

RELEASE, NAMESPACE = "proglog", "default"
# The oldest and newest Kubernetes versions the chart supports (Chart.yaml's kubeVersion
# and the newest schema kubernetes-validate has).
KUBERNETES = ["1.25.0", "1.37.0"]
VALUE_SETS = {
    "defaults": {},
    "one replica": {"replicas": 1},
    "five replicas": {"replicas": 5},
    "plaintext, no ACL": {"tls": {"enabled": False}, "acl": {"secretName": ""}},
    "tuned": {"config": {"fsync": "never", "max-record-bytes": 65536}, "ports": {"rpc": 9400},
              "persistence": {"size": "1Gi", "storageClassName": "fast"}, "service": {"type": "NodePort"}},
}
BROKEN = {
    "replicas 0": {"replicas": 0},
    "missing TLS Secret name": {"tls": {"secretName": ""}},
    "missing gossip key Secret name": {"tls": {"gossipKeySecretName": None}},
    "port out of range": {"ports": {"rpc": 70000}},
    "port not a number": {"ports": {"http": "http"}},
    "grace below the agent's own": {"terminationGracePeriodSeconds": 5},
    "misspelt key": {"replica": 3},
    "config key the chart sets": {"config": {"data-dir": "/tmp"}},
}


def render(chart, values):
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = {}
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def fail(message):
    print(f"chart check failed: {message}", file=sys.stderr)
    sys.exit(1)


def check_semantics(label, values, docs):
    """What the chart promises beyond well-formed manifests."""
    sts = next(doc for doc in docs.values() if doc["kind"] == "StatefulSet")
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    expect = {
        "replicas": (spec["replicas"], values.get("replicas", 3)),
        "parallel pod management": (spec["podManagementPolicy"], "Parallel"),
        "headless serviceName": (docs.get(f"Service/{spec['serviceName']}", {}).get("spec", {}).get("clusterIP"), "None"),
        "publishNotReadyAddresses": (docs[f"Service/{spec['serviceName']}"]["spec"]["publishNotReadyAddresses"], True),
        "PDB maxUnavailable": (docs[f"PodDisruptionBudget/{sts['metadata']['name']}"]["spec"]["maxUnavailable"], 1),
        "non-root": (pod["securityContext"]["runAsNonRoot"], True),
        "read-only root": (container["securityContext"]["readOnlyRootFilesystem"], True),
        "liveness path": (container["livenessProbe"]["httpGet"]["path"], "/healthz"),
        "readiness path": (container["readinessProbe"]["httpGet"]["path"], "/readyz"),
        "probe port": (container["readinessProbe"]["httpGet"]["port"], "http"),
        "a PVC per pod": (spec["volumeClaimTemplates"][0]["metadata"]["name"], "data"),
    }
    for what, (got, want) in expect.items():
        if got != want:
            fail(f"{label}: {what} is {got!r}, expected {want!r}")
    if pod["terminationGracePeriodSeconds"] <= 10:
        fail(f"{label}: terminationGracePeriodSeconds must exceed the agent's 10 s grace")
    if "resources" not in container:
        fail(f"{label}: no resources")
    scheme = "HTTPS" if values.get("tls", {}).get("enabled", True) else "HTTP"
    if container["readinessProbe"]["httpGet"]["scheme"] != scheme:
        fail(f"{label}: probes must use {scheme}")


def check(path):
    chart = helm_python.Chart.load(path)
    for label, values in VALUE_SETS.items():
        report = helm_python.lint(path, values, strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
        if problems:
            fail(f"lint ({label}): {problems}")
        docs = render(chart, values)
        for version in KUBERNETES:
            for name, doc in docs.items():
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    fail(f"{label}: {name} is not valid Kubernetes {version}: {error.message} at {list(error.path)}")
        check_semantics(label, values, docs)
        print(f"ok: {label}: {len(docs)} manifests lint clean and validate strictly on Kubernetes "
              f"{' and '.join(KUBERNETES)}")
    for label, values in BROKEN.items():
        try:
            render(chart, values)
        except helm_python.HelmError as error:
            reason = " ".join(str(error).split())
            print(f"ok: rejected ({label}): {reason[:160]}")
            continue
        fail(f"broken values rendered without an error: {label}: {values}")


def expand(text, env):
    """The kubelet's $(VAR) expansion of args ($$ escapes a dollar)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def pods(path, values_json, out):
    values = json.loads(values_json)
    chart = helm_python.Chart.load(path)
    docs = render(chart, values)
    sts = next(doc for doc in docs.values() if doc["kind"] == "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    container = spec["containers"][0]
    volumes = {}
    for volume in spec["volumes"]:
        if "configMap" in volume:
            volumes[volume["name"]] = {"files": docs[f"ConfigMap/{volume['configMap']['name']}"]["data"]}
        else:
            volumes[volume["name"]] = {"secret": volume["secret"]["secretName"]}
    for claim in sts["spec"]["volumeClaimTemplates"]:
        volumes[claim["metadata"]["name"]] = {"claim": True}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    probes = {kind: {**container[f"{kind}Probe"]["httpGet"], "port": ports[container[f"{kind}Probe"]["httpGet"]["port"]]}
              for kind in ("startup", "liveness", "readiness")}
    result = []
    for ordinal in range(sts["spec"]["replicas"]):
        name = f"{sts['metadata']['name']}-{ordinal}"
        field = {"metadata.name": name, "metadata.namespace": NAMESPACE}
        env = {}
        for var in container.get("env", []):
            env[var["name"]] = var["value"] if "value" in var else field[var["valueFrom"]["fieldRef"]["fieldPath"]]
        result.append({
            "name": name,
            "host": f"{name}.{sts['spec']['serviceName']}.{NAMESPACE}.svc.{values.get('clusterDomain', 'cluster.local')}",
            "args": [expand(arg, env) for arg in container["args"]],
            "env": env,
            "mounts": [{"path": m["mountPath"], **volumes[m["name"]]} for m in container["volumeMounts"]],
            "ports": ports,
            "probes": probes,
            "grace_seconds": spec["terminationGracePeriodSeconds"],
        })
    with open(out, "w") as file:
        json.dump(result, file, indent=1)


if __name__ == "__main__":
    helm_python.disable_logging()
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "pods":
        pods(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
