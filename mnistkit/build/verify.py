"""Run a model image on loopback and check it: ``serve_image`` and the smoke test.

The smoke test sends real digits through ``mnistkit.client`` and compares the image's
answers with the model's own, computed in this process.
"""

from __future__ import annotations

import json
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import PackagingError
from ..local._proc import free_ports, wait_http
from .source import ModelSource

__all__ = ["example_digits", "digit_labels", "run_on_loopback", "serve_image", "smoke_test"]


def example_digits() -> list[Path]:
    """The example MNIST test digits that ship in the package (``assets/digits``)."""
    folder = Path(str(files("mnistkit") / "assets" / "digits"))
    return sorted(folder.glob("*.png"))


def digit_labels() -> dict[str, int]:
    """File name -> true digit of the shipped example digits."""
    return json.loads((files("mnistkit") / "assets" / "digits" / "labels.json").read_text())


def run_on_loopback(
    client: Any, image: str, environment: dict[str, str], http: int, ready: str, timeout: float, waiting: str
) -> tuple[Any, str]:
    """Run ``image`` on the host network with ``environment`` and wait until ``ready`` (a path
    on port ``http``) answers. Returns (container, base URL); the caller removes the container.
    On failure the container is removed and ``PackagingError`` says it ``waiting`` (e.g. "did not
    serve") with the end of its log."""
    import secrets

    import docker

    # created, then started where a Ctrl-C removes it: one that came during ``containers.run``
    # left a container serving on the host network; this run's own label finds one made meanwhile
    run = secrets.token_hex(8)
    labels = {"io.mnistkit.served": image, "io.mnistkit.run": run}
    try:
        container = client.containers.create(image, network_mode="host", environment=environment, labels=labels)
    except docker.errors.ImageNotFound:
        raise PackagingError(f"image {image} not found; build it first") from None
    except docker.errors.APIError as e:
        raise PackagingError(f"cannot run {image}: {e.explanation or e}") from None
    except BaseException:
        for made in client.containers.list(all=True, filters={"label": f"io.mnistkit.run={run}"}):
            made.remove(force=True)
        raise
    url = f"http://127.0.0.1:{http}"
    try:
        container.start()
        ready_in_time = wait_http(f"{url}{ready}", timeout)
    except docker.errors.APIError as e:
        container.remove(force=True)
        raise PackagingError(f"cannot run {image}: {e.explanation or e}") from None
    except BaseException:  # Ctrl-C while it starts: no container left serving on the host network
        container.remove(force=True)
        raise
    if not ready_in_time:
        container.reload()
        logs = container.logs(tail=5).decode(errors="replace").strip().replace("\n", " | ")
        status = container.status
        container.remove(force=True)
        raise PackagingError(f"{image} {waiting} within {timeout:.0f}s (status {status}): {logs}")
    return container, url


def serve_image(
    client: Any, image: str, timeout: float = 120, environment: dict[str, str] | None = None
) -> tuple[Any, str]:
    """Run a model image on free loopback ports (host network) and wait for /health/ping;
    ``environment`` adds to the container's environment.

    Returns (container, base URL); the caller removes the container. On failure the
    container is removed and ``PackagingError`` carries the end of its log."""
    http, grpc, metrics = free_ports(3)
    env = {
        "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(http),
        "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(grpc),
        "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(metrics),
        "MNISTKIT_HOST": "127.0.0.1",  # the host network: not on every interface of this machine
        **(environment or {}),
    }
    return run_on_loopback(client, image, env, http, "/health/ping", timeout, "did not serve")


def smoke_test(
    client: Any, image: str, source: ModelSource, images: list[Path] | None = None, timeout: float = 120
) -> dict[str, Any]:
    """Run ``image``, wait for /health/ping, send real digits through ``mnistkit.client``
    and compare with the in-process model. Raises ``PackagingError`` on any difference."""
    import numpy as np

    from ..client import Endpoint, QueryConfig, load_inputs, predict
    from ..serving import MnistModel

    started = time.monotonic()
    files_ = images or example_digits()
    try:
        container, url = serve_image(client, image, timeout)
    except PackagingError as e:
        raise PackagingError(f"smoke test: {e}") from None
    try:
        inputs = load_inputs(files_)
        served = predict(inputs, QueryConfig(Endpoint(url=f"{url}/api/v1.0/predictions"), timeout=30))
        local = MnistModel(str(source.artifact)).predict(np.stack([i.pixels for i in inputs]).astype(np.float32))
        got = np.array([p.probabilities for p in served])
        diff = float(np.abs(got - local).max())
        if diff > 1e-4 or not (got.argmax(1) == local.argmax(1)).all():
            raise PackagingError(
                f"smoke test: the image's predictions differ from the model's (max difference {diff:.2e})"
            )
    finally:
        container.remove(force=True)
    return {
        "images": len(files_),
        "max_abs_diff": diff,
        "digits": [p.digit for p in served],
        "seconds": time.monotonic() - started,
    }
