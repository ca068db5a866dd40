"""mnistkit-query: send images to a Seldon (v1) or V2 endpoint (KServe, Seldon protocol v2,
MLServer) and print the digits."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from ..client import PAYLOADS, PAYLOADS_V2, PROTOCOLS, ROUTES, ROUTES_V2
from ._common import errors_to_exit, setup_logging, verbosity

if TYPE_CHECKING:
    from ..client import Prediction


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--endpoint",
    default="localhost:8003",
    show_default=True,
    help="HOST:PORT of Ambassador (the 2018 port-forward) or of a microservice.",
)
@click.option("--deployment", default="mnist", show_default=True, help="SeldonDeployment name.")
@click.option("--namespace", default="seldon", show_default=True, help="Namespace of the deployment.")
@click.option(
    "--protocol",
    type=click.Choice(list(PROTOCOLS)),
    default="v1",
    show_default=True,
    help="v1: Seldon's protocol (the 2018 one); v2: the Open Inference Protocol (KServe, MLServer).",
)
@click.option(
    "--route",
    type=click.Choice(list(dict.fromkeys([*ROUTES, *ROUTES_V2]))),
    help="v1 (default ambassador): ambassador /seldon/NS/DEPLOYMENT/api/v1.0/predictions, ambassador-v0.1 the 2018 "
    "/seldon/DEPLOYMENT/api/v0.1/predictions, direct /api/v1.0/predictions. v2 (default seldon): seldon "
    "/seldon/NS/DEPLOYMENT/v2/models/MODEL/infer, kserve /v2/models/MODEL/infer with Host DEPLOYMENT.NS.example.com, "
    "direct /v2/models/MODEL/infer.",
)
@click.option("--model", default="mnist", show_default=True, help="V2 model name (in the /v2/models/MODEL path).")
@click.option("--host-header", help="Host header to send (KServe's ingress routes by it; default for kserve above).")
@click.option("--url", help="Full predictions URL (overrides --endpoint/--route).")
@click.option(
    "--payload",
    type=click.Choice([*PAYLOADS, *PAYLOADS_V2]),
    help="v1 (default tensor): tensor (raw 0..255 pixels as in 2018), ndarray, binData (the image file); "
    "v2 (default pixels): pixels (INT32), images (BYTES, base64 files).",
)
@click.option("--batch/--no-batch", default=True, show_default=True, help="Send several images as one request.")
@click.option(
    "--max-batch",
    type=int,
    default=256,
    show_default=True,
    help="With --batch: most images per request (the servers refuse more than their MNISTKIT_MAX_BATCH, 256).",
)
@click.option("--invert", is_flag=True, help="Invert black-on-white drawings to MNIST's white-on-black.")
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds for each request's whole answer, from connecting to its last byte (above 0, at most 86400).",
)
@click.option(
    "--retries", type=int, default=3, show_default=True, help="Retries on connection errors, timeouts and 503 (0..100)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer per image as JSON lines.")
@verbosity
@errors_to_exit
def main(
    inputs: tuple[str, ...],
    endpoint: str,
    deployment: str,
    namespace: str,
    protocol: str,
    route: str | None,
    model: str,
    host_header: str | None,
    url: str | None,
    payload: str | None,
    batch: bool,
    max_batch: int,
    invert: bool,
    timeout: float,
    retries: int,
    as_json: bool,
    verbose: int,
    quiet: bool,
) -> None:
    """Predict the digits in INPUTS (image files or .npy arrays) with a Seldon or V2 deployment.

    \b
    Examples:
      mnistkit-query examples/images/*.png                      # Ambassador on localhost:8003
      mnistkit-query --route direct --endpoint localhost:9000 digit.png
      mnistkit-query --payload binData --invert drawing.jpg
      mnistkit-query --protocol v2 --route kserve --endpoint INGRESS:80 --namespace default digit.png
      mnistkit-query --protocol v2 --route direct --endpoint localhost:8080 --payload images digit.png
    """
    setup_logging(verbose, quiet)
    from ..client import Endpoint, QueryConfig, load_inputs, predict
    from ..errors import QueryError

    where = Endpoint(endpoint, deployment, namespace, route, url, protocol, model, host_header)
    config = QueryConfig(where, payload, batch, timeout, retries, max_batch=max_batch).validate()
    if batch:
        predictions, failed = predict(load_inputs(inputs, invert=invert), config), 0
    else:
        # one request per image: a failed one is reported and the others still go
        predictions, failed = [], 0
        for path in inputs:
            try:
                predictions.extend(predict(load_inputs([path], invert=invert), config))
            except QueryError as e:
                failed += 1
                click.echo(f"Error: {path}: {e}", err=True)
    _print(predictions, as_json)
    if failed:
        raise SystemExit(1)


def _print(predictions: "list[Prediction]", as_json: bool) -> None:
    if not predictions:
        return
    if as_json:
        for p in predictions:
            click.echo(json.dumps(p.to_json()))
        return
    width = max(len("image"), *(len(p.name) for p in predictions))
    click.echo(f"{'image':<{width}}  digit  probability  runner-up")
    for p in predictions:
        click.echo(
            f"{p.name:<{width}}  {p.digit:>5}  {p.probability:>11.4f}  {p.runner_up} ({p.runner_up_probability:.4f})"
        )


if __name__ == "__main__":
    main()
