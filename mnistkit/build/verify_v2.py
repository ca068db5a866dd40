"""Run a V2 image on loopback and smoke-test it (``mnistkit-build --server mlserver --smoke-test``).

The V2 counterpart of ``verify.py``: the image starts as a platform starts it (the MLServer
port variables set, nothing else), answers ``/v2/health/ready``, and its answers to the
shipped digits — as INT32 pixels and as BYTES images — must equal the model's own, computed
in this process through ``load_predictor``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import PackagingError
from ..local._proc import free_ports
from .source import ModelSource
from .verify import example_digits, run_on_loopback

__all__ = ["serve_image_v2", "smoke_test_v2"]


def serve_image_v2(client: Any, image: str, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[Any, str]:
    """Run a V2 image on free loopback ports (host network) and wait for /v2/health/ready.

    Returns (container, base URL); the caller removes the container."""
    http, grpc, metrics = free_ports(3)
    ports = {
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc),
        "MLSERVER_METRICS_PORT": str(metrics),
    }
    return run_on_loopback(client, image, {**ports, **(env or {})}, http, "/v2/health/ready", timeout, "was not ready")


def smoke_test_v2(
    client: Any, image: str, source: ModelSource, images: list[Path] | None = None, timeout: float = 120
) -> dict[str, Any]:
    """Run the V2 ``image``, send the digits as pixels and as images through ``mnistkit.client``
    and compare with the in-process model. Raises ``PackagingError`` on any difference."""
    import numpy as np

    from ..client import Endpoint, QueryConfig, load_inputs, predict
    from ..runtime import load_predictor

    started = time.monotonic()
    files_ = images or example_digits()
    try:
        container, url = serve_image_v2(client, image, timeout)
    except PackagingError as e:
        raise PackagingError(f"smoke test: {e}") from None
    try:
        inputs = load_inputs(files_)
        local = load_predictor(source.artifact).predict(np.stack([i.pixels for i in inputs]).astype(np.float32))
        endpoint = Endpoint(url=f"{url}/v2/models/mnist/infer", protocol="v2")
        diff = 0.0
        for payload in ("pixels", "images"):
            served = predict(inputs, QueryConfig(endpoint, payload=payload, timeout=30))
            got = np.array([p.probabilities for p in served])
            diff = max(diff, float(np.abs(got - local).max()))
            if diff > 1e-4 or not (got.argmax(1) == local.argmax(1)).all():
                raise PackagingError(
                    f"smoke test: the image's {payload} predictions differ from the model's (max difference {diff:.2e})"
                )
    finally:
        container.remove(force=True)
    return {
        "images": len(files_),
        "max_abs_diff": diff,
        "digits": [p.digit for p in served],
        "seconds": time.monotonic() - started,
    }
