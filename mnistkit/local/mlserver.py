"""Run the V2 server (MLServer through ``mnistkit.launch_v2``) as a child process on loopback.

MLServer needs protobuf >= 5, which seldon-core 1.17.1 forbids, so it lives in its own venv
(``.venv-mlserver``, made by ``make``); this helper starts that venv's Python on a model
folder it prepares (``model-settings.json`` naming the artifact), exactly as the V2 image
runs it, and waits for ``/v2/health/ready``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import ServingError
from ._proc import ChildServer, free_ports, spawn

__all__ = ["V2Server", "write_model_folder", "start_mlserver"]


class V2Server(ChildServer):
    """``mnistkit.launch_v2`` (MLServer) running as a child process group."""


def write_model_folder(model_dir: str | os.PathLike[str], folder: str | os.PathLike[str], *, max_batch: int) -> Path:
    """``folder/model-settings.json`` serving the verified artifact at ``model_dir``."""
    from ..artifact import read_manifest
    from ..errors import ArtifactError
    from ..protocol_v2 import model_settings

    try:
        _, sha256, path = read_manifest(model_dir)
    except ArtifactError as e:
        raise ServingError(f"cannot serve: {e}") from None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    settings = model_settings(version=sha256[:12], max_batch=max_batch, uri=str(Path(path).resolve()))
    (out / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return out


def start_mlserver(
    model_dir: str | os.PathLike[str],
    *,
    python: str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    processes: int = 1,
    max_batch: int = 256,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> V2Server:
    """Start ``python -m mnistkit.launch_v2`` (``python`` is the MLServer venv's) for the
    artifact at ``model_dir`` on free loopback ports and wait until it is ready."""
    work = Path(workdir)
    folder = write_model_folder(model_dir, work / "v2-model", max_batch=max_batch)
    http, grpc, metrics = free_ports(3)
    log = work / f"mlserver-{http}.log"
    full_env = {
        **os.environ,
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc),
        "MLSERVER_METRICS_PORT": str(metrics),
        "MNISTKIT_PROCESSES": str(processes),
        **(env or {}),
    }
    proc = spawn([str(python), "-m", "mnistkit.launch_v2", str(folder)], log, env=full_env, cwd=work)
    server = V2Server(proc, http, grpc, metrics, log)
    if not server.wait_ready("/v2/health/ready", timeout):
        server.stop()
        tail = "\n".join(server.log().splitlines()[-8:])
        state = f"exited with {proc.returncode}" if proc.returncode is not None else f"not ready within {timeout:.0f}s"
        raise ServingError(f"the V2 server {state}:\n{tail}")
    return server
