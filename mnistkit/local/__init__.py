"""The processes mnistkit starts on one machine, on loopback: a dockerd
(``dockerd.py``), a registry with htpasswd auth (``registry.py``) and the seldon-core
microservice (``microservice.py``), sharing one helper for ports, readiness and stopping
(``_proc.py``). Past one machine, use a real engine, registry and cluster."""
