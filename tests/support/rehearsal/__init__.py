"""The cluster rehearsal: each resource mnistkit writes, run on a local engine the way Kubernetes
and its engine (Polyaxon, Argo, the Seldon Core operator) would run it. No cluster can run here
(no API server is installable), so this harness stands in for one, and the tests say so.

* ``Node`` — the cluster's node: a dockerd of its own that pulls every image from the registry
  (never from the engine that built them), volumes named after the claims, secrets as files;
* ``Pod`` — containers sharing one network namespace (a pause container's, with nothing but
  loopback), volumes mounted at the spec's paths, ``fsGroup`` applied to the volumes as the
  kubelet does, each container's securityContext over the pod's as runc gets it
  (``security_options``: privileged, read-only root, no new privileges, capabilities, seccomp,
  user and group, runAsNonRoot); the cluster network is a forwarder to the
  host's loopback (``forward.py``) for the registry, and from the gateway into the pod;
* ``run_polyaxon_trial`` / ``run_workflow`` / ``start_seldon`` — the engines' own parts:
  Polyaxon's input and ``globals`` substitution, Argo's parameters and sidecars, the Seldon Core
  1.17.1 operator's environment (read from operator/controllers/ at that tag);
* ``Gateway`` — nginx routing the Ambassador paths of a SeldonDeployment to its pod.

What only a real cluster can check: scheduling, RBAC, admission of the privileged sidecar,
Seldon's executor and its timeouts, Polyaxon's API and tracking, PVC provisioning and access modes.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistkit.imageref import ImageRef
from mnistkit.local._proc import http_status, wait_until
from mnistkit.local.dockerd import LocalDocker
from support.nginx import Nginx

HERE = Path(__file__).resolve().parent
FORWARD = HERE / "forward.py"
CAPFIX = HERE / "runc-capfix"
DIND_UPSTREAM = "docker:27-dind"  # what the Workflow names; the harness builds a stand-in with this name


def node_engine(root: Path) -> LocalDocker:
    """The node's dockerd, with a runc that drops only the capabilities this VM cannot grant
    (so privileged containers start here as on a real node)."""
    return LocalDocker(root, extra_args=("--add-runtime", f"capfix={CAPFIX}", "--default-runtime", "capfix"))


def build_dind_standin(build_client: Any, node_client: Any, base: str, cache: Path) -> str:
    """Build the docker:27-dind stand-in from the Debian base on the build engine and load it
    into the node under the upstream name (it cannot be pulled here)."""
    import docker
    from mnistkit.build.builder_image import debian_mirror

    tag = "mnistkit-rehearsal/dind-standin:bookworm"
    try:
        build_client.images.get(tag)
    except docker.errors.ImageNotFound:
        build_client.images.build(
            path=str(HERE / "dind"),
            tag=tag,
            network_mode="host",
            rm=True,
            buildargs={"BASE_IMAGE": base, "MIRROR": debian_mirror()},
        )
    image = build_client.images.get(tag)
    node_client.images.load(b"".join(image.save(named=True)))
    node_client.images.get(tag).tag(*DIND_UPSTREAM.split(":"))
    return DIND_UPSTREAM


@dataclass
class Node:
    """The cluster's node: its own engine, volumes by claim name, secrets as folders."""

    client: Any
    registry: str  # host:port of the registry, on the host's loopback
    credentials: dict[str, str]  # {"username", "password"} for pulls (the imagePullSecret)
    work: Path
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)  # name -> key -> bytes

    def pull(self, image: str) -> None:
        """As the kubelet does with an imagePullSecret (IfNotPresent: a local image is used)."""
        import docker

        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        ref = ImageRef.parse(image)
        auth = self.credentials if ref.registry == self.registry else None
        self.client.images.pull(ref.repository, tag=ref.digest or ref.tag_or_latest, auth_config=auth)

    def claim(self, name: str, files: dict[str, bytes] | None = None) -> None:
        """A bound PersistentVolumeClaim: a docker volume named like the claim, with ``files``."""
        self.client.volumes.create(name=name, labels={"io.mnistkit.rehearsal": "claim"})
        if files:
            self.write(name, files)

    def write(self, volume: str, files: dict[str, bytes]) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, data in files.items():
                info = tarfile.TarInfo(path)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        c = self._scratch(volume)
        try:
            c.put_archive("/v", buf.getvalue())
        finally:
            c.remove(force=True)

    def read(self, volume: str, path: str) -> Path:
        """Copy ``path`` out of ``volume`` into a local folder; return it."""
        c = self._scratch(volume)
        try:
            stream, _ = c.get_archive(f"/v/{path}")
            out = Path(tempfile.mkdtemp(dir=self.work, prefix="out-"))
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                tar.extractall(out, filter="data")
            return out / Path(path).name
        finally:
            c.remove(force=True)

    def _scratch(self, volume: str) -> Any:
        image = next(t for i in self.client.images.list() for t in i.tags)  # any image: the container never starts
        return self.client.containers.create(
            image, command=["true"], volumes={volume: {"bind": "/v", "mode": "rw"}}, network_disabled=True
        )

    def remove_claims(self) -> None:
        for v in self.client.volumes.list(filters={"label": "io.mnistkit.rehearsal"}):
            v.remove(force=True)

    def remove_images(self, keep: tuple[str, ...]) -> None:
        """What the node pulled from this session's registry (a new port each session, so new
        names each time), and the layers only those used; tags starting with ``keep`` stay."""
        import docker

        for tag in {t for image in self.client.images.list() for t in image.tags if not t.startswith(keep)}:
            try:
                self.client.images.remove(tag)
            except docker.errors.APIError as e:  # still in use: the next session retries
                print(f"kept {tag} on the node: {e.explanation or e}")
        self.client.images.prune(filters={"dangling": True})


@dataclass
class Pod:
    """Containers in one network namespace (a pause container's: loopback only), as in a pod."""

    node: Node
    name: str
    spec: dict[str, Any]  # the pod-level spec: volumes, securityContext
    share: Path = field(init=False)  # a host folder the pod's forwarders use
    containers: list[Any] = field(default_factory=list)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)  # pod volume name -> docker mount source
    scratch: list[str] = field(default_factory=list)  # emptyDir volumes, deleted with the pod

    def __post_init__(self) -> None:
        self.share = Path(tempfile.mkdtemp(dir=self.node.work, prefix=f"{self.name}-"))
        self.share.chmod(0o777)
        image = self._any_image()
        self.pause = self.node.client.containers.run(
            image,
            ["sleep", "infinity"],
            detach=True,
            network_mode="none",
            name=f"{self.name}-pause-{uuid.uuid4().hex[:6]}",
        )
        self.containers.append(self.pause)
        self._volumes()

    def _any_image(self) -> str:
        return next(t for i in self.node.client.images.list() for t in i.tags if not t.startswith("docker:"))

    def _volumes(self) -> None:
        for v in self.spec.get("volumes") or []:
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                if not self.node.client.volumes.list(filters={"name": f"^{claim}$"}):
                    raise PodFailed(f"claim {claim!r} does not exist: the pod would stay Pending")
                self.volumes[v["name"]] = {
                    "source": claim,
                    "type": "volume",
                    "read_only": bool(v["persistentVolumeClaim"].get("readOnly")),
                }
            elif "emptyDir" in v:
                vol = self.node.client.volumes.create(labels={"io.mnistkit.rehearsal": "emptydir"})
                self.scratch.append(vol.name)
                self.volumes[v["name"]] = {"source": vol.name, "type": "volume", "read_only": False}
            elif "secret" in v:
                self.volumes[v["name"]] = {"source": str(self._secret(v["secret"])), "type": "bind", "read_only": True}
            else:
                raise PodFailed(f"volume {v['name']}: the rehearsal knows PVCs, emptyDir and secrets only")
        group = (self.spec.get("securityContext") or {}).get("fsGroup")
        if group is not None:  # the kubelet makes each volume the pod's group's, group-writable, setgid
            for mount in self.volumes.values():
                if mount["type"] == "volume":
                    self._run_root(
                        mount["source"],
                        f"chgrp -R {group} /v && chmod -R g+rwX /v && find /v -type d -exec chmod g+s {{}} +",
                    )

    def _secret(self, spec: dict[str, Any]) -> Path:
        data = self.node.secrets.get(spec["secretName"])
        if data is None:
            raise PodFailed(f"secret {spec['secretName']!r} does not exist: the pod would stay Pending")
        folder = Path(tempfile.mkdtemp(dir=self.node.work, prefix="secret-"))
        items = spec.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                raise PodFailed(f"secret {spec['secretName']!r} has no key {item['key']!r}")
            (folder / item["path"]).write_bytes(data[item["key"]])
            (folder / item["path"]).chmod(0o644)
        folder.chmod(0o755)
        return folder

    def _run_root(self, volume: str, script: str) -> None:
        self.node.client.containers.run(
            self._any_image(),
            ["sh", "-c", script],
            user="0",
            remove=True,
            network_mode="none",
            volumes={volume: {"bind": "/v", "mode": "rw"}},
        )

    def start(self, container: dict[str, Any], *, detach: bool = True) -> Any:
        """Start one container of the spec in the pod: image pulled, command/args as Kubernetes
        maps them onto the image's entrypoint/cmd, env, mounts, security context."""
        from docker.types import Mount

        self.node.pull(container["image"])
        mounts = []
        for m in container.get("volumeMounts") or []:
            if m["name"] not in self.volumes:
                raise PodFailed(f"container {container['name']} mounts {m['name']!r}, which the pod does not declare")
            v = self.volumes[m["name"]]
            mounts.append(
                Mount(m["mountPath"], v["source"], type=v["type"], read_only=v["read_only"] or bool(m.get("readOnly")))
            )
        group = (self.spec.get("securityContext") or {}).get("fsGroup")
        image_user = self.node.client.images.get(container["image"]).attrs["Config"].get("User") or ""
        kwargs: dict[str, Any] = {
            "environment": {e["name"]: e.get("value", "") for e in container.get("env") or []},
            "mounts": mounts,
            "network_mode": f"container:{self.pause.id}",
            "detach": detach,
            "name": f"{self.name}-{container['name']}-{uuid.uuid4().hex[:6]}",
            **security_options(container.get("securityContext") or {}, image_user, self.spec.get("securityContext")),
        }
        if group is not None:
            kwargs["group_add"] = [str(group)]
        if "command" in container:
            kwargs["entrypoint"] = container["command"]
        c = self.node.client.containers.run(container["image"], container.get("args"), **kwargs)
        self.containers.append(c)
        return c

    def forward(self, listen: str, target: str) -> Any:
        """A forwarder container in the pod (the cluster's network): python3 forward.py LISTEN TARGET."""
        from docker.types import Mount

        c = self.node.client.containers.run(
            self._any_image(),
            ["python3", "/forward/forward.py", listen, target],
            entrypoint=[],
            detach=True,
            network_mode=f"container:{self.pause.id}",
            user="0",
            mounts=[
                Mount("/forward", str(HERE), type="bind", read_only=True),
                Mount("/share", str(self.share), type="bind"),
            ],
        )
        self.containers.append(c)
        return c

    def delete(self, grace: float = 10) -> None:
        for c in reversed(self.containers):
            try:
                c.stop(timeout=int(grace))
                c.remove(force=True, v=True)
            except Exception:  # already gone
                pass
        for name in self.scratch:
            try:
                self.node.client.volumes.get(name).remove(force=True)
            except Exception:  # already gone
                pass
        shutil.rmtree(self.share, ignore_errors=True)


class PodFailed(AssertionError):
    """The resource would not run on a cluster: what the harness saw."""


def registry_bridge(pod: Pod, registry: str) -> Any:
    """The cluster network's route from a pod to the registry: inside the pod, the registry's
    host:port answers (a forwarder to a socket in the pod's share), and this process forwards
    that socket to the registry on the host's loopback."""
    from .forward import Forwarder

    outside = Forwarder(f"unix:{pod.share / 'registry.sock'}", f"tcp:{registry}").start()
    pod.forward(f"tcp:{registry}", "unix:/share/registry.sock")
    time.sleep(0.5)  # the forwarder binds its port at once; give the container a moment to start
    return outside


# -- Polyaxon -----------------------------------------------------------------------------------

_PX_TEMPLATE = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")


def polyaxon_render(value: str, params: dict[str, Any], globals_: dict[str, str]) -> str:
    """Substitute ``{{ name }}`` and ``{{ globals.x }}`` as Polyaxon renders a component's run."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key.startswith("globals."):
            if key[8:] not in globals_:
                raise PodFailed(f"Polyaxon has no context value {key}")
            return globals_[key[8:]]
        if key not in params:
            raise PodFailed(f"the polyaxonfile uses {{{{ {key} }}}} but declares no such input")
        return str(params[key])

    return _PX_TEMPLATE.sub(sub, value)


def run_polyaxon_trial(
    node: Node, doc: dict[str, Any], params: dict[str, Any], timeout: float = 600
) -> tuple[int, str, str]:
    """Run one trial of an operation as Polyaxon's job would: the component's container with its
    inputs (defaults, then ``params``) and ``globals`` substituted, its volumes mounted.
    Returns (exit code, logs, the run's uuid)."""
    component = doc["component"]
    values = {i["name"]: i["value"] for i in component.get("inputs") or [] if "value" in i}
    values.update(params)
    missing = [i["name"] for i in component.get("inputs") or [] if i["name"] not in values and not i.get("isOptional")]
    if missing:
        raise PodFailed(f"the trial gives no value for the inputs {missing}")
    run_uuid = uuid.uuid4().hex
    globals_ = {
        "uuid": run_uuid,
        "project_name": "mnistkit",
        "name": doc.get("name", "op"),
        "run_outputs_path": f"/plx-context/artifacts/{run_uuid}/outputs",
        "run_artifacts_path": f"/plx-context/artifacts/{run_uuid}",
    }
    job = component["run"]
    container = json.loads(polyaxon_render(json.dumps(job["container"]), values, globals_))
    container.setdefault("name", "polyaxon-main")
    pod = Pod(node, f"plx-{run_uuid[:8]}", {"volumes": job.get("volumes") or []})
    try:
        c = pod.start(container)
        code = c.wait(timeout=timeout)["StatusCode"]
        return code, c.logs().decode(errors="replace"), run_uuid
    finally:
        pod.delete(grace=1)


# -- Argo ---------------------------------------------------------------------------------------


def argo_render(value: Any, parameters: dict[str, str]) -> Any:
    """Substitute ``{{workflow.parameters.x}}`` everywhere, as Argo does before running a template."""
    text = json.dumps(value)

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in parameters:
            raise PodFailed(
                f"the workflow uses {{{{workflow.parameters.{m.group(1)}}}}} but declares no such parameter"
            )
        return json.dumps(parameters[m.group(1)])[1:-1]

    return json.loads(re.sub(r"\{\{\s*workflow\.parameters\.([\w-]+)\s*\}\}", sub, text))


@dataclass
class WorkflowRun:
    code: int
    logs: str
    sidecar_logs: str


def run_workflow(node: Node, wf: dict[str, Any], overrides: dict[str, str], timeout: float = 900) -> WorkflowRun:
    """``argo submit -p k=v``: the entrypoint template's container and sidecars as one pod. The
    registry is reachable in the pod at its host address through the cluster network (a forwarder).
    Argo stops the sidecars when the main container ends."""
    spec = wf["spec"]
    params = {p["name"]: p.get("value", "") for p in spec.get("arguments", {}).get("parameters", [])}
    unknown = set(overrides) - set(params)
    if unknown:
        raise PodFailed(f"argo submit -p {sorted(unknown)}: the workflow has no such parameter")
    params.update(overrides)
    template = argo_render(next(t for t in spec["templates"] if t["name"] == spec["entrypoint"]), params)
    pod = Pod(
        node, "argo", {"volumes": spec.get("volumes") or [], "securityContext": spec.get("securityContext") or {}}
    )
    try:
        bridge = registry_bridge(pod, node.registry)
        sidecars = [pod.start(s) for s in template.get("sidecars") or []]
        main = pod.start({"name": "main", **template["container"]})
        code = main.wait(timeout=timeout)["StatusCode"]
        logs = main.logs().decode(errors="replace")
        side = "".join(s.logs().decode(errors="replace") for s in sidecars)
        bridge.close()
        return WorkflowRun(code, logs, side)
    finally:
        pod.delete(grace=5)


# -- Seldon Core --------------------------------------------------------------------------------

#: what the Seldon Core 1.17.1 operator assigns the first container of a predictor
#: (operator/controllers/seldondeployment_controller.go: createContainerService, addPortEnvs)
HTTP_PORT, GRPC_PORT, METRICS_PORT = 9000, 9500, 6000


def operator_env(sdep: dict[str, Any], predictor: dict[str, Any], container: dict[str, Any]) -> list[dict[str, str]]:
    """The environment the operator gives a predictive unit's container (after the container's own)."""
    graph = predictor["graph"]
    env = [
        {"name": "PREDICTIVE_UNIT_SERVICE_PORT", "value": str(HTTP_PORT)},
        {"name": "PREDICTIVE_UNIT_HTTP_SERVICE_PORT", "value": str(HTTP_PORT)},
        {"name": "MLSERVER_HTTP_PORT", "value": str(HTTP_PORT)},
        {"name": "PREDICTIVE_UNIT_GRPC_SERVICE_PORT", "value": str(GRPC_PORT)},
        {"name": "MLSERVER_GRPC_PORT", "value": str(GRPC_PORT)},
    ]
    if graph.get("parameters"):
        params = [
            {"name": p["name"], "value": str(p["value"]), "type": p.get("type", "STRING")} for p in graph["parameters"]
        ]
        env.append({"name": "PREDICTIVE_UNIT_PARAMETERS", "value": json.dumps(params, separators=(",", ":"))})
    labels = {"version": predictor["name"], **(predictor.get("labels") or {})}
    env += [
        {"name": "PREDICTIVE_UNIT_ID", "value": container["name"]},
        {"name": "MLSERVER_MODEL_NAME", "value": container["name"]},
        {"name": "PREDICTIVE_UNIT_IMAGE", "value": container["image"]},
        {"name": "PREDICTOR_ID", "value": predictor["name"]},
        {"name": "PREDICTOR_LABELS", "value": json.dumps(labels, separators=(",", ":"))},
        {"name": "SELDON_DEPLOYMENT_ID", "value": sdep["metadata"]["name"]},
        {"name": "SELDON_EXECUTOR_ENABLED", "value": "true"},
        {"name": "PREDICTIVE_UNIT_METRICS_SERVICE_PORT", "value": str(METRICS_PORT)},
        {"name": "PREDICTIVE_UNIT_METRICS_ENDPOINT", "value": "/prometheus"},
        {"name": "MLSERVER_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "MLSERVER_METRICS_ENDPOINT", "value": "/prometheus"},
    ]
    return env


#: the fields of a pod's securityContext that its containers take unless they set their own
POD_LEVEL = ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile")


def security_options(sc: dict[str, Any], image_user: str, pod: dict[str, Any] | None = None) -> dict[str, Any]:
    """Docker's options for a container's ``securityContext`` (over the pod's ``POD_LEVEL``
    fields), as the kubelet hands it to runc: privileged, a read-only root (docker's /dev/shm
    stays a writable tmpfs, as a pod's does), no new privileges, capabilities dropped and added,
    the seccomp profile (none set: unconfined, the kubelet's default), the user and group; and,
    as the kubelet does, no start for ``runAsNonRoot`` when the user is root or not a number."""
    sc = {**{k: v for k, v in (pod or {}).items() if k in POD_LEVEL}, **sc}
    opts: dict[str, Any] = {"privileged": bool(sc.get("privileged"))}
    if sc.get("readOnlyRootFilesystem"):
        opts["read_only"] = True
    security = []
    if sc.get("allowPrivilegeEscalation") is False:
        security.append("no-new-privileges")
    seccomp = (sc.get("seccompProfile") or {}).get("type", "Unconfined")
    if seccomp == "Unconfined":
        security.append("seccomp=unconfined")
    elif seccomp != "RuntimeDefault":  # docker's default profile is the runtime's default
        raise PodFailed(f"seccomp profile {seccomp!r}: the rehearsal knows RuntimeDefault and Unconfined")
    opts["security_opt"] = security
    caps = sc.get("capabilities") or {}
    if caps.get("drop"):
        opts["cap_drop"] = list(caps["drop"])
    if caps.get("add"):
        opts["cap_add"] = list(caps["add"])
    user = str(sc["runAsUser"]) if "runAsUser" in sc else image_user.split(":")[0]
    if "runAsUser" in sc or "runAsGroup" in sc:
        opts["user"] = user + (f":{sc['runAsGroup']}" if "runAsGroup" in sc else "")
    if sc.get("runAsNonRoot"):
        if "runAsUser" in sc and user == "0":
            raise PodFailed("container's runAsUser breaks non-root policy")
        if user and not user.isdigit():
            raise PodFailed(
                f"container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root"
            )
        if user in ("", "0"):
            raise PodFailed("container has runAsNonRoot and image will run as root")
    return opts


@dataclass
class SeldonPod:
    pod: Pod
    container: Any
    socket: Path  # the pod's HTTP port, reachable from the host through this socket
    grace: int


OPERATOR_USER = 8888


def start_seldon(node: Node, sdep: dict[str, Any], timeout: float = 120) -> SeldonPod:
    """The first predictor's pod as the operator makes it: the graph node's container with the
    image's own command, the operator's user and environment after the container's own, the
    predictor's secrets for the pull; ready when its HTTP port answers, as its probe checks."""
    predictor = sdep["spec"]["predictors"][0]
    spec = predictor["componentSpecs"][0]["spec"]
    name = predictor["graph"]["name"]
    container = next((c for c in spec["containers"] if c["name"] == name), None)
    if container is None:
        raise PodFailed(f"no container is named like the graph node {name!r}: the operator would not wire it")
    container = {**container, "env": [*(container.get("env") or []), *operator_env(sdep, predictor, container)]}
    # the operator's pod securityContext: runAsUser from its DEFAULT_USER_ID (8888 as its Helm
    # chart installs it) where the deployment sets none, so the image runs as a user it never saw
    security = spec.get("securityContext") or {"runAsUser": OPERATOR_USER}
    pod = Pod(
        node, f"seldon-{sdep['metadata']['name']}", {"volumes": spec.get("volumes") or [], "securityContext": security}
    )
    try:
        c = pod.start(container)
        pod.forward("unix:/share/http.sock", f"tcp:127.0.0.1:{HTTP_PORT}")
        sock = pod.share / "http.sock"
        if not wait_until(lambda: _ping_unix(sock), timeout, interval=0.5):
            c.reload()
            raise PodFailed(
                f"the model container did not become ready ({c.status}): {c.logs(tail=5).decode(errors='replace')}"
            )
    except BaseException:
        pod.delete(grace=1)
        raise
    return SeldonPod(pod, c, sock, int(spec.get("terminationGracePeriodSeconds", 30)))


def _ping_unix(sock: Path) -> bool:
    import http.client
    import socket

    if not sock.exists():
        return False

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(2)
            self.sock.connect(str(sock))

    try:
        conn = Conn("pod")
        conn.request("GET", "/health/ping")
        return conn.getresponse().status == 200
    except OSError:
        return False


# -- the gateway ----------------------------------------------------------------------------------

SERVER = """
  server {{
    listen 127.0.0.1:{port};
{locations}
    location / {{ return 404 '{{"status": {{"info": "no mapping", "code": 404}}}}'; }}
  }}
"""


class Gateway(Nginx):
    """nginx routing a SeldonDeployment's Ambassador paths to its pod, as Ambassador and the
    executor would: /seldon/<namespace>/<name>/api/v1.0/predictions -> the pod's /api/v1.0/predictions."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.routes: list[str] = []

    def route(self, namespace: str, name: str, socket: Path) -> None:
        self.routes.append(f"    location /seldon/{namespace}/{name}/ {{ proxy_pass http://unix:{socket}:/; }}")
        self.start(
            SERVER.format(port=self.port, locations="\n".join(self.routes)),
            lambda: http_status(f"http://{self.endpoint}/") == 404,
        )
