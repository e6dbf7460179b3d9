"""The KubeRay manifests of infra/k8s/, checked without a cluster: each RayCluster and RayJob against the CRD's
OpenAPI v3 schema as the API server would apply it, plus strictness: an unknown field, which the server drops
(with a warning at most) unless the client asks for strict field validation, is an error here. Also the promotion
Job's pod template against the core PodTemplateSpec schema the CRD embeds, the Ray version against pyproject's
pin, every flag of every `search/clevr.py` / `search.promote` command (manifests and docs/cluster.md), and of
every `ray job submit` in docs/cluster.md, against that CLI's `--help`, and the pieces the files must agree on (secret, volume, paths, image). The CRDs are ../shared/kuberay-crds/
(kuberay main, Apache-2.0), as CI lays ../shared beside the checkout.

Not evaluated: the CRDs' CEL rules (x-kubernetes-validations). A manifest that sets a field carrying one fails
here instead, so the gap cannot be reached silently."""

from __future__ import annotations

import base64
import binascii
import copy
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
CRDS = ROOT.parent / "shared" / "kuberay-crds"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the 2.3 MB of CRDs in ~1 s, not ~11
LOCAL_MARK = "runs here"
CLUSTER_MARK = "needs a real cluster"


# --- the CRD schema as a JSON schema --------------------------------------------------------------------------


def to_json_schema(node: dict, *, strict: bool) -> dict:
    """A JSON schema (draft 2020-12) that accepts what the API server accepts under this structural schema.

    Kubernetes' extensions become standard keywords: int-or-string takes both types, nullable adds null, int32 /
    int64 become ranges, list-type set becomes uniqueItems and list-type map a uniqueness check on its keys.
    `strict` rejects unknown fields wherever the schema lists `properties` without additionalProperties or
    x-kubernetes-preserve-unknown-fields: exactly where the server drops them (a typo'd limit, a misspelled
    maxReplicas) unless the client asked for strict field validation: worse than a refusal. A field under a CEL rule is refused (see the module doc)."""
    out: dict = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub, strict=strict) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value, strict=strict)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(sub, strict=strict) for sub in value]
        elif key == "x-kubernetes-validations":
            out["x-cel"] = [rule["rule"] for rule in value]
        elif key.startswith("x-kubernetes-") or key in ("nullable", "format", "default", "description"):
            continue  # handled below, or no constraint on what a user writes
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["type"] = ["integer", "string"]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if node.get("format") in INT_RANGES:
        low, high = INT_RANGES[node["format"]]
        out["minimum"] = max(low, node.get("minimum", low))
        out["maximum"] = min(high, node.get("maximum", high))
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if node.get("x-kubernetes-list-type") == "map":
        out["x-list-map-keys"] = node["x-kubernetes-list-map-keys"]
    open_ended = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    if strict and "properties" in node and not open_ended:
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator, keys, instance, schema) -> Iterator[jsonschema.ValidationError]:
    """The server refuses two items with the same keys in a list-type map (two env vars of one name)."""
    if not validator.is_type(instance, "array"):
        return
    seen: dict[tuple, int] = {}
    for index, item in enumerate(instance):
        if isinstance(item, dict):
            key = tuple(item.get(k) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(
                    f"items {seen[key]} and {index} share {dict(zip(keys, key, strict=True))}"
                )
            seen.setdefault(key, index)


def _cel(validator, rules, instance, schema) -> Iterator[jsonschema.ValidationError]:
    yield jsonschema.ValidationError(f"this field carries CEL rules this test cannot evaluate: {rules}")


K8sValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-list-map-keys": _list_map_keys, "x-cel": _cel}
)


@pytest.fixture(scope="module")
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(kind, apiVersion) -> the served version's openAPIV3Schema, as the CRD files ship it."""
    if not CRDS.is_dir():
        pytest.fail(f"{CRDS} is missing: CI runs with ../shared beside the checkout")
    schemas = {}
    for kind, name in CRD_FILES.items():
        crd = yaml.load((CRDS / name).read_text(), Loader=FAST_LOADER)
        assert crd["spec"]["names"]["kind"] == kind
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                api_version = f"{crd['spec']['group']}/{version['name']}"
                schemas[kind, api_version] = version["schema"]["openAPIV3Schema"]
    return schemas


def schema_errors(doc: dict, crd_schemas, *, strict: bool = True) -> list[str]:
    key = (doc.get("kind"), doc.get("apiVersion"))
    if key not in crd_schemas:
        return [f"{key}: no served version of the CRD has this kind and apiVersion"]
    validator = K8sValidator(to_json_schema(crd_schemas[key], strict=strict))
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    name = doc.get("metadata", {}).get("name", "")
    # KubeRay derives pod and service names from it, and those must be DNS labels.
    if not (DNS_LABEL.match(name) and len(name) <= 63):
        errors.append(f"metadata.name {name!r}: not a DNS label")
    return errors


# --- the manifests --------------------------------------------------------------------------------------------


def load_manifests() -> list[tuple[str, dict]]:
    """(file name, object) for every object in every YAML file of infra/k8s/."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


MANIFESTS = load_manifests()
RAY_OBJECTS = [(name, doc) for name, doc in MANIFESTS if doc["kind"] in CRD_FILES]


def only(kind: str) -> dict:
    docs = [doc for _, doc in MANIFESTS if doc["kind"] == kind]
    assert len(docs) == 1, f"infra/k8s/ should hold one {kind}, found {len(docs)}"
    return docs[0]


def named(kind: str, name: str) -> dict:
    docs = [doc for _, doc in MANIFESTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(docs) == 1, f"infra/k8s/ should hold one {kind} {name}, found {len(docs)}"
    return docs[0]


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """(what, pod spec) of every pod a manifest describes."""
    spec = doc.get("spec", {})  # a Secret has none
    clusters = [spec] if doc["kind"] == "RayCluster" else []
    if "rayClusterSpec" in spec:  # a RayJob that brings its own cluster
        clusters.append(spec["rayClusterSpec"])
    for cluster in clusters:
        yield "head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"worker group {group['groupName']}", group["template"]["spec"]
    if doc["kind"] == "Job":
        yield "job", spec["template"]["spec"]


def test_infra_k8s_holds_the_expected_objects():
    kinds = sorted(doc["kind"] for _, doc in MANIFESTS)
    assert kinds == [
        *("ConfigMap", "Deployment", "Job", "PersistentVolumeClaim", "PersistentVolumeClaim", "RayCluster"),
        *("RayJob", "Secret", "Secret", "Secret", "Service"),
    ]


@pytest.mark.parametrize("name, doc", RAY_OBJECTS, ids=[f"{n}:{d['kind']}" for n, d in RAY_OBJECTS])
def test_manifest_validates_against_the_crd_schema(name, doc, crd_schemas):
    assert schema_errors(doc, crd_schemas) == [], name


def test_the_promotion_jobs_pod_template_validates_as_kubernetes_core_schema(crd_schemas):
    """A batch/v1 Job's template is a core/v1 PodTemplateSpec: the one the RayCluster CRD embeds for its head."""
    (job_name, job) = next((n, d) for n, d in MANIFESTS if d["kind"] == "Job")
    assert job["apiVersion"] == "batch/v1"
    cluster = crd_schemas["RayCluster", "ray.io/v1"]["properties"]["spec"]["properties"]
    validator = K8sValidator(to_json_schema(cluster["headGroupSpec"]["properties"]["template"], strict=True))
    assert [f"{e.json_path}: {e.message}" for e in validator.iter_errors(job["spec"]["template"])] == [], (
        job_name
    )
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")  # a Job refuses Always


def _rename(obj: dict, old: str, new: str) -> None:
    obj[new] = obj.pop(old)


def _worker(doc: dict) -> dict:
    return doc["spec"]["workerGroupSpecs"][0]


def _head_container(doc: dict) -> dict:
    return doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


# (kind, what, mutation, refused only in strict mode: a server without strict field validation drops it)
MUTATIONS: list[tuple[str, str, Callable[[dict], None], bool]] = [
    (
        "RayCluster",
        "maxReplicas misspelled",
        lambda d: _rename(_worker(d), "maxReplicas", "maxReplica"),
        False,
    ),
    ("RayCluster", "maxReplicas missing", lambda d: _worker(d).pop("maxReplicas"), False),
    ("RayCluster", "minReplicas a string", lambda d: _worker(d).__setitem__("minReplicas", "1"), False),
    ("RayCluster", "replicas beyond int32", lambda d: _worker(d).__setitem__("replicas", 2**31), False),
    (
        "RayCluster",
        "auth mode misspelled",
        lambda d: d["spec"]["authOptions"].__setitem__("mode", "Token"),
        False,
    ),
    (
        "RayCluster",
        "rayStartParams value not a string",
        lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0),
        False,
    ),
    (
        "RayCluster",
        "two env vars of one name",
        lambda d: _head_container(d)["env"].append({"name": "CGAN_SEARCH_HOME", "value": "/tmp"}),
        False,
    ),
    (
        "RayCluster",
        "limits misspelled in a worker container",
        lambda d: _rename(_worker(d)["template"]["spec"]["containers"][0]["resources"], "limits", "limit"),
        True,
    ),
    (
        "RayCluster",
        "autoscaling switch misspelled",
        lambda d: _rename(d["spec"], "enableInTreeAutoscaling", "enableInTreeAutoScaling"),
        True,
    ),
    (
        "RayCluster",
        "a field under a CEL rule",
        lambda d: d["spec"].__setitem__("managedBy", "ray.io/kuberay-operator"),
        False,
    ),
    ("RayJob", "entrypoint misspelled", lambda d: _rename(d["spec"], "entrypoint", "entryPoint"), True),
    (
        "RayJob",
        "runtimeEnvYAML not a string",
        lambda d: d["spec"].__setitem__("runtimeEnvYAML", {"working_dir": "."}),
        False,
    ),
]


@pytest.mark.parametrize("kind, what, mutate, strict_only", MUTATIONS, ids=[m[1] for m in MUTATIONS])
def test_a_broken_manifest_is_refused(kind, what, mutate, strict_only, crd_schemas):
    doc = copy.deepcopy(only(kind))
    mutate(doc)
    assert schema_errors(doc, crd_schemas), f"{what}: accepted"
    if strict_only:  # the reason for strict mode: the API server would have taken it and dropped the field
        assert schema_errors(doc, crd_schemas, strict=False) == [], what


@pytest.mark.parametrize("cpu", [4, "4", "500m"], ids=["int 4", "string 4", "string 500m"])
def test_int_or_string_quantities_take_both_types(cpu, crd_schemas):
    doc = copy.deepcopy(only("RayCluster"))
    _head_container(doc)["resources"]["limits"]["cpu"] = cpu
    assert schema_errors(doc, crd_schemas) == []


# --- versions -------------------------------------------------------------------------------------------------


def ray_pin() -> str:
    match = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins ray[...]==X.Y.Z"
    return match.group(1)


def test_ray_version_everywhere_is_pyprojects_pin():
    pin = ray_pin()
    for name, doc in MANIFESTS:
        if doc["kind"] == "RayCluster":
            assert doc["spec"]["rayVersion"] == pin, name
        for what, pod in pod_specs(doc):
            for container in pod["containers"]:
                assert f"-ray{pin}-" in container["image"], f"{name} {what}: image {container['image']}"
    base = re.search(r"^FROM (\S+)", (K8S / "Dockerfile").read_text(), re.M).group(1)
    assert base.startswith(f"rayproject/ray:{pin}-"), base


# --- commands against the CLIs ----------------------------------------------------------------------------------

CLIS = {
    "search/clevr.py": [sys.executable, "search/clevr.py"],
    "search.promote": [sys.executable, "-m", "search.promote"],
}
# Ray's job CLI (click, not argparse): its options are listed one per line under "Options:".
RAY_SUBMIT = "ray job submit"
RAY_SUBMIT_ARGV = [str(Path(sys.executable).with_name("ray")), "job", "submit"]
SHELL_ENDS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "2>&1"}


@pytest.fixture(scope="module")
def cli_options() -> dict[str, dict[str, frozenset | bool]]:
    """CLI -> {--flag: True (takes a value) | False (a switch) | frozenset(choices)}, from its real --help."""
    procs = {
        cli: subprocess.Popen(
            [*argv, "--help"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for cli, argv in {**CLIS, RAY_SUBMIT: RAY_SUBMIT_ARGV}.items()
    }
    ray_out, err = procs.pop(RAY_SUBMIT).communicate(timeout=120)
    assert "Options:" in ray_out, f"{RAY_SUBMIT} --help: {err}"
    ray_options = {
        flag: frozenset(value[1:-1].split("|")) if value.startswith("[") else bool(value)
        for flag, value in re.findall(
            r"^ {2}(--[a-z][a-z0-9-]*)(?:, -\w)?(?: ([A-Z]+|\[[^]]*\]))?", ray_out, re.M
        )
    }
    options = {}
    for cli, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{cli} --help: {err}"
        usage = out.split("\n\n", 1)[0]
        options[cli] = {
            flag: frozenset(value[1:-1].split(",")) if value.startswith("{") else bool(value)
            for flag, value in re.findall(r"(--[a-z][a-z0-9-]*)(?: (\{[^}]*\}|[A-Z][A-Z0-9_]*))?", usage)
        }
        assert "--experiment" in options[cli], f"{cli}: usage not parsed:\n{usage}"
    assert ray_options.get("--address") is True and ray_options.get("--no-wait") is False, ray_options
    return {**options, RAY_SUBMIT: ray_options}


def invocations(tokens: list[str]) -> Iterator[tuple[str, list[str]]]:
    """(CLI, its arguments) for each run of clevr.py, search.promote or `ray job submit` (its own flags, up
    to the `--` before the entrypoint) in one command's tokens."""
    for i, token in enumerate(tokens):
        if token == "ray" and tokens[i + 1 : i + 3] == ["job", "submit"]:
            args = tokens[i + 3 :]
            yield RAY_SUBMIT, args[: args.index("--")] if "--" in args else args
        cli = "search/clevr.py" if token.endswith("search/clevr.py") else None
        if token == "search.promote" and i > 0 and tokens[i - 1] == "-m":
            cli = "search.promote"
        if cli:
            args = []
            for arg in tokens[i + 1 :]:
                if arg in SHELL_ENDS:
                    break
                args.append(arg)
            yield cli, args


def doc_commands(path: Path) -> Iterator[list[str]]:
    """The tokens of every shell line in the fenced code blocks of a Markdown file (continuations joined)."""
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                yield shlex.split(line, comments=True)


def all_invocations() -> list[tuple[str, str, list[str]]]:
    """(where, CLI, arguments) in every manifest and in docs/cluster.md."""
    found = []
    for name, doc in MANIFESTS:
        if doc["kind"] == "RayJob":
            found += [(name, cli, args) for cli, args in invocations(shlex.split(doc["spec"]["entrypoint"]))]
        for what, pod in pod_specs(doc):
            for container in pod["containers"]:
                tokens = container.get("command", []) + container.get("args", [])
                found += [(f"{name} {what}", cli, args) for cli, args in invocations(tokens)]
    if CLUSTER_DOC.is_file():
        for tokens in doc_commands(CLUSTER_DOC):
            found += [("docs/cluster.md", cli, args) for cli, args in invocations(tokens)]
    return found


INVOCATIONS = all_invocations()


def flag_problems(args: list[str], options: dict[str, frozenset | bool]) -> list[str]:
    """What argparse would refuse (or take for another flag: it accepts unambiguous prefixes, this does not)."""
    problems, i = [], 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        i += 1
        if flag not in options:
            problems.append(
                f"{flag}: no such option" if flag.startswith("-") else f"{flag!r}: stray argument"
            )
            continue
        takes = options[flag]
        if takes is False:
            if eq:
                problems.append(f"{flag} is a switch: it takes no value")
            continue
        if not eq:
            if i >= len(args) or args[i].startswith("--"):
                problems.append(f"{flag}: value missing")
                continue
            value, i = args[i], i + 1
        if isinstance(takes, frozenset) and value not in takes:
            problems.append(f"{flag} {value}: not one of {sorted(takes)}")
    return problems


def test_manifests_and_docs_run_both_clis():
    where = {(place.split()[0], cli) for place, cli, _ in INVOCATIONS}
    assert {("rayjob.yaml", "search/clevr.py"), ("promote-job.yaml", "search.promote")} <= where
    assert {("docs/cluster.md", "search/clevr.py"), ("docs/cluster.md", "search.promote")} <= where
    assert ("docs/cluster.md", RAY_SUBMIT) in where


@pytest.mark.parametrize("where, cli, args", INVOCATIONS, ids=[f"{w}:{c}" for w, c, _ in INVOCATIONS])
def test_every_flag_exists_in_the_cli(where, cli, args, cli_options):
    assert flag_problems(args, cli_options[cli]) == [], f"{where}: {cli} {shlex.join(args)}"


@pytest.mark.parametrize(
    "cli, args",
    [
        ("search/clevr.py", ["--num-sample", "8"]),  # argparse would take the prefix; a rename would not
        ("search/clevr.py", ["--experiments", "x"]),
        ("search/clevr.py", ["--pruned-generator", "all"]),
        ("search/clevr.py", ["--promote", "yes"]),
        ("search/clevr.py", ["--storage"]),
        ("search.promote", ["--experiment", "x", "--smoke-test"]),
        ("ray job submit", ["--adress", "http://127.0.0.1:8265"]),
        ("ray job submit", ["--log-style", "fancy"]),
        ("ray job submit", ["--no-wait", "yes"]),
    ],
    ids=lambda v: shlex.join(v) if isinstance(v, list) else v,
)
def test_a_bad_flag_is_found(cli, args, cli_options):
    assert flag_problems(args, cli_options[cli])


# --- what the files must agree on --------------------------------------------------------------------------------


def test_cluster_shape():
    cluster = only("RayCluster")["spec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "trials must not land on the head"
    for container in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        # The driver refuses GPU trials on a cluster with no GPU at its start: one GPU node must always be up.
        assert (
            1 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        )
        for container in group["template"]["spec"]["containers"]:
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, group["groupName"]


def test_token_auth_names_a_secret_with_the_key_kuberay_reads():
    auth = only("RayCluster")["spec"]["authOptions"]
    assert auth["mode"] == "token"
    secrets = {doc["metadata"]["name"]: doc for _, doc in MANIFESTS if doc["kind"] == "Secret"}
    assert "auth_token" in secrets[auth["secretName"]]["data"]
    job = only("RayJob")["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": only("RayCluster")["metadata"]["name"]}


def test_secret_templates_hold_placeholders_only():
    """No credential is ever committed: each value is a placeholder that is not even base64, so the API server
    refuses the template until it is filled in (an applied placeholder would be a publicly known token)."""
    for name, doc in MANIFESTS:
        if doc["kind"] == "Secret":
            assert "stringData" not in doc, name
            for key, value in doc["data"].items():
                assert value.startswith("<REPLACE"), f"{name} {key}"
                with pytest.raises(binascii.Error):
                    base64.b64decode(value, validate=True)


def test_every_ray_pod_mounts_the_shared_claim_at_one_path():
    pvc = named("PersistentVolumeClaim", "cgan-search-shared")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = set()
    for what, pod in pod_specs(only("RayCluster")):
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert set(claims.values()) == {pvc["metadata"]["name"]}, what
        for container in pod["containers"]:
            mounts |= {m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims}
    assert len(mounts) == 1, f"the shared volume at different paths: {mounts}"
    (mount,) = mounts
    args = next(
        args for where, cli, args in INVOCATIONS if where == "rayjob.yaml" and cli == "search/clevr.py"
    )
    storage = args[args.index("--storage") + 1]
    assert storage.startswith(mount + "/"), f"--storage {storage} is not on the shared volume {mount}"


def test_one_image_everywhere():
    images = {c["image"] for _, doc in MANIFESTS for _, pod in pod_specs(doc) for c in pod["containers"]}
    assert len(images) == 1, images


def test_cluster_doc_marks_every_command():
    """Each shell block in docs/cluster.md says whether it runs here or needs a real cluster."""
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", CLUSTER_DOC.read_text(), re.S)
    assert blocks
    for block in blocks:
        assert CLUSTER_MARK in block or LOCAL_MARK in block, block


def test_every_test_the_cluster_doc_names_exists():
    """A "runs here" block names the test that runs it: that file, and that test function, exist."""
    named = re.findall(r"(tests/test_\w+\.py)(?:::(\w+))?", CLUSTER_DOC.read_text())
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", CLUSTER_DOC.read_text(), re.S)
    for block in blocks:
        if LOCAL_MARK in block.splitlines()[0]:
            assert re.search(r"tests/test_\w+\.py", block.splitlines()[0]), f"names no test: {block}"
    assert named
    for path, function in named:
        assert (ROOT / path).is_file(), f"docs/cluster.md names {path}: no such file"
        if function:
            assert re.search(rf"^def {function}\(", (ROOT / path).read_text(), re.M), f"{path}::{function}"


def test_the_docs_kubectl_create_secret_commands_make_exactly_the_templated_secrets():
    """docs/cluster.md creates the Secrets with kubectl (no value in a file): the same names and keys as
    secrets.example.yaml, which the manifests' references are checked against."""
    templates = {doc["metadata"]["name"]: set(doc["data"]) for _, doc in MANIFESTS if doc["kind"] == "Secret"}
    created = {}
    for tokens in doc_commands(CLUSTER_DOC):
        for i in range(len(tokens) - 3):
            if tokens[i : i + 4] == ["kubectl", "create", "secret", "generic"]:
                keys = {t.split("=", 2)[1] for t in tokens[i + 5 :] if t.startswith("--from-literal=")}
                created[tokens[i + 4]] = keys
    assert created == templates


# The course's set: 18,009 training images (docs/cluster.md, "Sizing", storage table).
REAL_IMAGES = 18_009


def test_the_storage_table_is_what_the_code_writes(tmp_path):
    """The table's pack and judge sizes for the real dataset, from the loader's own pack and the judge's
    own network (the pack holds raw pixels: its size depends on the count and the names, not the images)."""
    from tests.conftest import make_iclevr_folder
    from trainers.data.pack import pack
    from trainers.evaluator import ResNet18

    sizes = {}
    for n in (60, 180):  # real file names: CLEVR_train_NNNNNN_K.png, up to 3 frames a scene
        labels = {f"CLEVR_train_{i // 3:06d}_{i % 3}.png": ["red cube"] for i in range(n)}
        root = make_iclevr_folder(tmp_path / f"set{n}", labels)
        out = tmp_path / f"pack{n}.parquet"
        pack(root, out, size=64, progress=False)
        sizes[n] = out.stat().st_size
    per_image = (sizes[180] - sizes[60]) / 120
    fixed = sizes[60] - 60 * per_image
    row = re.search(r"\*\*([\d.]+) MB\*\* \(([\d,.]+) bytes per image \+ ([\d,]+)", CLUSTER_DOC.read_text())
    assert row, "docs/cluster.md: the pack row of the storage table moved"
    total, doc_per_image, doc_fixed = (float(g.replace(",", "")) for g in row.groups())
    assert abs(per_image - doc_per_image) < 0.5 and abs(fixed - doc_fixed) < 200, (per_image, fixed)
    assert round((fixed + REAL_IMAGES * per_image) / 1e6, 1) == total
    judge = ResNet18(n_classes=24, width=64)
    params = sum(p.numel() for p in judge.parameters())
    state_bytes = sum(t.numel() * t.element_size() for t in judge.state_dict().values())
    row = re.search(
        r"\*\*([\d.]+) MB\*\* \(ResNet18 at width 64, 24 classes: ([\d,]+) parameters",
        CLUSTER_DOC.read_text(),
    )
    assert row, "docs/cluster.md: the judge row of the storage table moved"
    assert (round(state_bytes / 1e6, 1), params) == (float(row[1]), int(row[2].replace(",", "")))


# --- the tracking server (mlflow.yaml) ---------------------------------------------------------------------------


def _mlflow_pod() -> dict:
    return only("Deployment")["spec"]["template"]


def _container(pod: dict, name: str) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def _flag(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def test_the_tracking_servers_pod_template_validates_as_kubernetes_core_schema(crd_schemas):
    cluster = crd_schemas["RayCluster", "ray.io/v1"]["properties"]["spec"]["properties"]
    validator = K8sValidator(to_json_schema(cluster["headGroupSpec"]["properties"]["template"], strict=True))
    assert [f"{e.json_path}: {e.message}" for e in validator.iter_errors(_mlflow_pod())] == []
    deployment = only("Deployment")
    assert deployment["apiVersion"] == "apps/v1" and deployment["spec"]["replicas"] == 1
    # one PostgreSQL owns the data folder on a ReadWriteOnce claim: never two pods at once
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    labels = _mlflow_pod()["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_every_tracking_uri_is_the_mlflow_service_and_its_allowed_host():
    """The RayJob and the promotion Job reach the server by the Service's name and port; the server accepts that
    Host header (--allowed-hosts) on the port its container exposes under the Service's targetPort."""
    from urllib.parse import urlsplit

    service, pod = only("Service"), _mlflow_pod()
    mlflow = _container(pod, "mlflow")
    argv = mlflow["command"] + mlflow.get("args", [])
    ports = {p["name"]: p["containerPort"] for p in mlflow["ports"]}
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    uris = [
        (where, args[args.index("--tracking-uri") + 1])
        for where, _, args in INVOCATIONS
        if "--tracking-uri" in args and not where.startswith("docs/")
    ]
    assert {where.split()[0] for where, _ in uris} >= {"rayjob.yaml", "promote-job.yaml"}
    allowed = _flag(argv, "--allowed-hosts").split(",")
    for where, uri in uris:
        parts = urlsplit(uri)
        assert parts.scheme == "http" and parts.hostname == service["metadata"]["name"], (where, uri)
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == parts.port]
        assert ports[port["targetPort"]] == int(_flag(argv, "--port")), where
        assert f"{parts.hostname}:{parts.port}" in allowed, (where, allowed)


def test_the_tracking_server_authenticates_and_keeps_its_passwords_in_secrets():
    """basic auth on, artifacts proxied, PostgreSQL on the pod's loopback, and no password in a command line, a
    URI or a literal env value: each comes from a Secret that secrets.example.yaml describes."""
    import configparser

    pod, config = _mlflow_pod(), only("ConfigMap")["data"]
    mlflow, postgres = _container(pod, "mlflow"), _container(pod, "postgres")
    argv = mlflow["command"] + mlflow.get("args", [])
    assert _flag(argv, "--app-name") == "basic-auth" and "--serve-artifacts" in argv
    assert "listen_addresses=127.0.0.1" in postgres["args"]
    auth = configparser.ConfigParser()
    auth.read_string(config["basic_auth.ini"])
    backend, users = _flag(argv, "--backend-store-uri"), auth["mlflow"]["database_uri"]
    for uri in (backend, users):
        assert re.fullmatch(r"postgresql://[a-z_]+@127\.0\.0\.1:5432/[a-z_]+", uri), uri  # no password
    # the users' database is created beside the runs' one (the image's POSTGRES_DB) and is not the same
    env = {e["name"]: e for c in pod["spec"]["containers"] for e in c["env"]}
    runs_db, users_db = backend.rsplit("/", 1)[1], users.rsplit("/", 1)[1]
    assert env["POSTGRES_DB"]["value"] == runs_db != users_db
    assert f"CREATE DATABASE {users_db};" in config["10-auth-database.sql"]
    mounted = {
        m["subPath"] for c in pod["spec"]["containers"] for m in c["volumeMounts"] if m["name"] == "config"
    }
    assert mounted == set(config)
    for name in (
        "PGPASSWORD",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "POSTGRES_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    ):
        assert "secretKeyRef" in env[name]["valueFrom"], name


def test_every_secret_reference_names_a_templated_secret_and_no_secret_is_a_literal():
    secrets = {doc["metadata"]["name"]: set(doc["data"]) for _, doc in MANIFESTS if doc["kind"] == "Secret"}
    pods = [(what, pod) for _, doc in MANIFESTS for what, pod in pod_specs(doc)]
    pods.append(("mlflow", _mlflow_pod()["spec"]))
    refs = []
    for what, pod in pods:
        for container in pod["containers"]:
            for var in container.get("env", []):
                if "secretKeyRef" in var.get("valueFrom", {}):
                    ref = var["valueFrom"]["secretKeyRef"]
                    refs.append(ref)
                    assert ref["key"] in secrets.get(ref["name"], ()), (what, var["name"], ref)
                elif re.search(r"PASSWORD|TOKEN|SECRET", var["name"]):
                    pytest.fail(f"{what}: {var['name']} is a literal, not a secretKeyRef")
    assert {r["name"] for r in refs} == set(secrets) - {"cgan-search-ray-token"}  # KubeRay reads that one
