"""The checks of deploy/check.sh that need parsing: run by check.sh with the virtualenv's Python.

    check.py dockerfile      deploy/Dockerfile against the repository
    check.py kubernetes      deploy/kubernetes/ against itself and the Dockerfile
    check.py configs         every *.toml under deploy/ and hsm-config/examples/, and the
                             timeouts and ports the unit, the manifests and the image agree on

Each prints what it checked and exits 1 with every problem it found.
"""

import fnmatch
import pathlib
import re
import shlex
import sys
import tomllib

import yaml
from dockerfile_parse import DockerfileParser

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
# Config keys that hold a secret in clear are refused by kmsd; say so here too.
SECRET_KEYS = {"pin", "password", "hsm_pin", "so_pin"}

problems: list[str] = []


def problem(message: str) -> None:
    problems.append(message)
    print(f"  FAIL {message}")


def ok(message: str) -> None:
    print(f"  ok   {message}")


def finish() -> None:
    sys.exit(1 if problems else 0)


# ---- Dockerfile ----------------------------------------------------------------------------------


def stages(path: pathlib.Path) -> list[dict]:
    """The Dockerfile's stages in order: {name, base, instructions}."""
    parser = DockerfileParser(path=str(path))
    result: list[dict] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            words = value.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append({"name": name, "base": words[0], "instructions": []})
        elif result:
            result[-1]["instructions"].append((instruction, value, item["startline"] + 1))
    return result


def cargo_binaries() -> set[str]:
    """[[bin]] names of the workspace's crates."""
    names = set()
    for manifest in (ROOT / "crates").glob("*/Cargo.toml"):
        for binary in tomllib.loads(manifest.read_text()).get("bin", []):
            names.add(binary["name"])
    return names


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def ignored(source: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        for candidate in [source] + [str(p) for p in pathlib.PurePosixPath(source).parents]:
            if fnmatch.fnmatch(candidate, pattern) or fnmatch.fnmatch(
                candidate, pattern.removeprefix("**/")
            ):
                return True
    return False


def copy_arguments(value: str) -> tuple[dict, list[str]]:
    """COPY's --flags and its paths (sources..., destination)."""
    words = shlex.split(value)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, flag_value = words.pop(0)[2:].partition("=")
        flags[key] = flag_value
    return flags, words


def check_dockerfile() -> None:
    path = DEPLOY / "Dockerfile"
    print(f"Dockerfile ({path.relative_to(ROOT)}):")
    all_stages = stages(path)
    names = [s["name"] for s in all_stages]
    patterns = dockerignore_patterns()
    binaries = cargo_binaries()

    # Every COPY from the build context names files that exist and that .dockerignore keeps.
    for stage in all_stages:
        for instruction, value, line in stage["instructions"]:
            if instruction not in ("COPY", "ADD"):
                continue
            flags, paths = copy_arguments(value)
            if "from" in flags:
                if flags["from"] not in names:
                    problem(f"line {line}: COPY --from={flags['from']}: no such stage")
                continue
            for source in paths[:-1]:
                if source == ".":
                    continue
                if not (ROOT / source).exists():
                    problem(f"line {line}: COPY source {source} does not exist")
                elif ignored(source, patterns):
                    problem(f"line {line}: COPY source {source} is excluded by .dockerignore")
                else:
                    ok(f"line {line}: COPY source {source} exists and is in the build context")

    # The builder builds real [[bin]] targets, and the image copies exactly those.
    built: set[str] = set()
    for stage in all_stages:
        for instruction, value, line in stage["instructions"]:
            if instruction == "RUN" and "cargo build" in value:
                built |= set(re.findall(r"--bin\s+([A-Za-z0-9_-]+)", value))
                if "--locked" not in value:
                    problem(f"line {line}: cargo build without --locked")
    unknown = built - binaries
    if not built:
        problem("no `cargo build --bin ...` in the Dockerfile")
    elif unknown:
        problem(f"cargo builds {sorted(unknown)}, which no crate declares as [[bin]]")
    else:
        ok(f"cargo builds {sorted(built)}, [[bin]] targets of the workspace")
    copied: set[str] = set()
    for stage in all_stages:
        for instruction, value, line in stage["instructions"]:
            if instruction == "COPY":
                flags, paths = copy_arguments(value)
                if flags.get("from") == "builder":
                    copied |= {pathlib.PurePosixPath(p).name for p in paths[:-1]}
    if copied != built:
        problem(f"the image copies {sorted(copied)} from the builder, which builds {sorted(built)}")
    else:
        ok(f"the image copies the binaries the builder builds: {sorted(copied)}")

    # The default (last) stage, and every stage meant to be run, ends as a non-root user.
    final = all_stages[-1]
    for stage in all_stages:
        if stage["name"] in (None, "builder", "base"):
            continue
        users = [v for i, v, _ in stage["instructions"] if i == "USER"]
        if not users:
            problem(f"stage {stage['name']}: no USER, so it runs as root")
            continue
        user = users[-1].split(":")[0]
        if user in ("root", "0"):
            problem(f"stage {stage['name']}: USER {users[-1]} is root")
        elif not user.isdigit():
            problem(
                f"stage {stage['name']}: USER {users[-1]} is not numeric; Kubernetes' "
                "runAsNonRoot cannot check a name"
            )
        else:
            ok(f"stage {stage['name']} runs as uid {user}")
    if final["name"] != "runtime":
        problem(f"the last (default) stage is {final['name']}, not runtime")
    else:
        ok("the default stage is runtime")
    check_entrypoint_and_ports(all_stages)


def check_entrypoint_and_ports(all_stages: list[dict]) -> None:
    """ENTRYPOINT and EXPOSE, which the manifests rely on."""
    base = next(s for s in all_stages if s["name"] == "base")
    entrypoint = [v for i, v, _ in base["instructions"] if i == "ENTRYPOINT"]
    if not entrypoint or "/etc/kms/kmsd.toml" not in entrypoint[-1]:
        problem("the image's ENTRYPOINT does not read /etc/kms/kmsd.toml")
    else:
        ok(f"ENTRYPOINT {entrypoint[-1]}")
    exposed = {int(p.split("/")[0]) for i, v, _ in base["instructions"] if i == "EXPOSE" for p in v.split()}
    if exposed != {50051, 9090}:
        problem(f"the image exposes {sorted(exposed)}, not 50051 and 9090")
    else:
        ok("the image exposes 50051 (gRPC) and 9090 (metrics)")


# ---- Kubernetes ----------------------------------------------------------------------------------


def load_all(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization_files() -> tuple[dict, list[pathlib.Path], list[pathlib.Path]]:
    """The kustomization, its resource files and its generator files."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = [K8S / r for r in kustomization.get("resources", [])]
    generated = [
        K8S / f.split("=")[-1]
        for generator in kustomization.get("configMapGenerator", [])
        + kustomization.get("secretGenerator", [])
        for f in generator.get("files", [])
    ]
    return kustomization, resources, generated


def check_kubernetes() -> None:
    print(f"Kubernetes ({K8S.relative_to(ROOT)}):")
    kustomization, resources, generated = kustomization_files()
    for path in resources + generated:
        if path.exists():
            ok(f"kustomization.yaml lists {path.name}, which exists")
        else:
            problem(f"kustomization.yaml lists {path.name}, which does not exist")
    listed = {p.name for p in resources + generated} | {"kustomization.yaml"}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name not in listed and path.name != "secret.yaml":
            problem(f"{path.name} is not in kustomization.yaml")
    if "secret.yaml" in listed:
        problem("kustomization.yaml lists secret.yaml: applying it would overwrite real Secrets")
    if problems:
        return

    docs = [d for p in resources for d in load_all(p)]
    secrets = {d["metadata"]["name"] for d in load_all(K8S / "secret.yaml")}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]

    if spec["replicas"] != 1:
        problem("the StatefulSet must have exactly 1 replica (RocksDB has a single writer)")
    else:
        ok("one replica")
    governing = services.get(spec["serviceName"])
    if not governing or governing["spec"].get("clusterIP") != "None":
        problem(f"serviceName {spec['serviceName']} is not a headless Service of service.yaml")
    else:
        ok(f"serviceName {spec['serviceName']} is the headless Service")
    labels = spec["template"]["metadata"]["labels"]
    for name, service in services.items():
        selector = service["spec"]["selector"]
        if any(labels.get(k) != v for k, v in selector.items()):
            problem(f"Service {name} selects {selector}, which the pod does not carry")
        port_names = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            if port["targetPort"] not in port_names:
                problem(f"Service {name} targets port {port['targetPort']}, which the pod lacks")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports != {"grpc": 50051, "metrics": 9090}:
        problem(f"container ports {ports}, expected grpc 50051 and metrics 9090")
    else:
        ok("container ports grpc 50051, metrics 9090; the Services target them")

    for probe_name, path in (
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
    ):
        probe = container.get(probe_name, {}).get("httpGet", {})
        if probe.get("path") != path or probe.get("port") != "metrics":
            problem(f"{probe_name} must be httpGet {path} on the metrics port, is {probe}")
        else:
            ok(f"{probe_name}: GET {path} on the metrics port")

    security = container.get("securityContext", {})
    pod_security = pod.get("securityContext", {})
    expected = {
        "allowPrivilegeEscalation": security.get("allowPrivilegeEscalation") is False,
        "readOnlyRootFilesystem": security.get("readOnlyRootFilesystem") is True,
        "capabilities drop ALL": security.get("capabilities", {}).get("drop") == ["ALL"],
        "runAsNonRoot": pod_security.get("runAsNonRoot") is True,
        "seccompProfile RuntimeDefault": pod_security.get("seccompProfile", {}).get("type")
        == "RuntimeDefault",
    }
    for name, holds in expected.items():
        (ok if holds else problem)(f"securityContext: {name}")

    # Volumes: the ConfigMap comes from the generator, the Secrets from secret.yaml.
    generators = {g["name"] for g in kustomization.get("configMapGenerator", [])}
    for volume in pod["volumes"]:
        if "configMap" in volume and volume["configMap"]["name"] not in generators:
            problem(f"volume {volume['name']}: ConfigMap {volume['configMap']['name']} is not generated")
        if "secret" in volume and volume["secret"]["secretName"] not in secrets:
            problem(f"volume {volume['name']}: Secret {volume['secret']['secretName']} is not in secret.yaml")
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    if mounts.get("/var/lib/kms") not in claims:
        problem("/var/lib/kms is not a volumeClaimTemplate")
    if "/etc/kms/kmsd.toml" not in mounts:
        problem("nothing is mounted at /etc/kms/kmsd.toml, which the image's ENTRYPOINT reads")
    else:
        ok("the ConfigMap is mounted at /etc/kms/kmsd.toml; the data volume at /var/lib/kms")

    # Every file kmsd.toml names is on a mounted volume.
    config = tomllib.loads((K8S / "kmsd.toml").read_text())
    files = {
        "pin_file": config.get("pin_file"),
        "data_dir": config.get("data_dir"),
        "tls.cert": config.get("tls", {}).get("cert"),
        "tls.key": config.get("tls", {}).get("key"),
        "tls.client_ca": config.get("tls", {}).get("client_ca"),
    }
    for key, value in files.items():
        if value is None:
            problem(f"kmsd.toml has no {key}")
        elif not any(value == m or value.startswith(m.rstrip("/") + "/") for m in mounts):
            problem(f"kmsd.toml's {key} = {value} is on no mounted volume")
        else:
            ok(f"kmsd.toml's {key} = {value} is on a mounted volume")
    image = container["image"]
    if image not in {i["name"] for i in kustomization.get("images", [])}:
        problem(f"the container's image {image} is not set in kustomization.yaml's images")


# ---- Configurations, and what the unit, the manifests and the image agree on ----------------------


def duration_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    number, unit = int(match.group(1)), match.group(2)
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def unit_setting(unit: str, key: str) -> str | None:
    values = re.findall(rf"^{key}=(.*)$", unit, flags=re.MULTILINE)
    return values[-1].strip() if values else None


def all_keys(table: dict) -> list[str]:
    """The keys of a TOML table and of every table in it."""
    keys = []
    for key, value in table.items():
        keys.append(key)
        if isinstance(value, dict):
            keys += all_keys(value)
    return keys


def check_configs() -> None:
    print("Configuration files (TOML):")
    files = sorted(DEPLOY.rglob("*.toml")) + sorted((ROOT / "hsm-config" / "examples").glob("*.toml"))
    parsed = {}
    for path in files:
        name = path.relative_to(ROOT)
        try:
            parsed[path] = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            problem(f"{name}: {e}")
            continue
        secret = SECRET_KEYS & set(all_keys(parsed[path]))
        if secret:
            problem(f"{name}: holds {sorted(secret)}: the PIN never goes in the config")
        for key in ("listen", "metrics_listen", "pkcs11_module", "token_label", "data_dir", "tls"):
            if key not in parsed[path]:
                problem(f"{name}: no {key}")
        if parsed[path].get("dev"):
            problem(f"{name}: dev = true has no place in a deployment example")
        try:
            duration_seconds(parsed[path].get("drain_timeout", "10s"))
            duration_seconds(parsed[path].get("request_timeout", "30s"))
        except ValueError as e:
            problem(f"{name}: {e}")
        ok(f"{name} parses ({len(parsed[path])} settings, no PIN)")
    if problems:
        return

    print("Timeouts and ports across the unit, the manifests and the image:")
    unit = (DEPLOY / "systemd" / "kmsd.service").read_text()
    stop = unit_setting(unit, "TimeoutStopSec")
    longest_drain = max(duration_seconds(c.get("drain_timeout", "10s")) for c in parsed.values())
    if stop is None or float(stop) <= longest_drain:
        problem(f"kmsd.service TimeoutStopSec={stop} is not above drain_timeout ({longest_drain} s)")
    else:
        ok(f"kmsd.service TimeoutStopSec={stop} > the longest drain_timeout, {longest_drain:g} s")
    if "--pin-file %d/pin" not in unit_setting(unit, "ExecStart") or "pin:" not in unit:
        problem("kmsd.service does not pass the PIN credential with --pin-file %d/pin")
    statefulset = load_all(K8S / "statefulset.yaml")[0]
    grace = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    k8s = parsed[K8S / "kmsd.toml"]
    drain = duration_seconds(k8s.get("drain_timeout", "10s"))
    if grace <= drain:
        problem(f"terminationGracePeriodSeconds {grace} is not above drain_timeout {drain:g} s")
    else:
        ok(f"terminationGracePeriodSeconds {grace} > drain_timeout {drain:g} s")
    for key, port in (("listen", 50051), ("metrics_listen", 9090)):
        host, _, listen_port = k8s[key].rpartition(":")
        if int(listen_port) != port or host not in ("0.0.0.0", "[::]"):
            problem(f"deploy/kubernetes/kmsd.toml: {key} = {k8s[key]}, expected all addresses, port {port}")
        else:
            ok(f"deploy/kubernetes/kmsd.toml: {key} = {k8s[key]}")


if __name__ == "__main__":
    commands = {"dockerfile": check_dockerfile, "kubernetes": check_kubernetes, "configs": check_configs}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: check.py {{{'|'.join(commands)}}}")
    commands[sys.argv[1]]()
    finish()
