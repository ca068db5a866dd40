"""The four commands (mnistkit-train, -build, -query, -pipeline), each a thin layer over the
library: parse, build a config, call one function, print the result. ``MnistkitError``
becomes one ``Error: ...`` line and exit 1."""
