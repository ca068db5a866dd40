"""An OTLP trace receiver for the tracing test: ``python otlp_receiver.py PORTFILE`` serves
OpenTelemetry's gRPC ``TraceService`` (its own generated stubs, from the opentelemetry-proto
package MLServer installs) on a free loopback port, writes the port to PORTFILE, and prints the
name of every span it receives, one per line, until it is stopped. Run it with the MLServer venv's
Python. It stands for an OpenTelemetry collector, which cannot be installed here."""

from __future__ import annotations

import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def Export(self, request, context):  # noqa: N802  (the service's method name)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    print(span.name, flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(sys.argv[1], "w") as f:
        f.write(str(port))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
