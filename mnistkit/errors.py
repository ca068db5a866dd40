"""The one error tree of mnistkit.

Every expected failure is a ``MnistkitError``; the CLIs turn it into a one-line
``Error: ...`` on stderr and exit 1. Anything else is a bug and keeps its traceback.

    MnistkitError
     ├── ConfigError        bad flag or config value
     ├── DataError          MNIST files missing, corrupt or unreadable
     ├── TrainingError      training diverged (non-finite loss) or could not run
     ├── ArtifactError      model artifact missing, tampered with, or a pickle
     ├── SearchError        polyaxonfile malformed, unknown distribution, all trials failed
     ├── ServingError       the Seldon model class could not start
     ├── PackagingError     s2i source folder or image build failed
     ├── PushError          registry refused or unreachable
     ├── QueryError         a request to a Seldon endpoint failed
     ├── ManifestError      a generated cluster resource is invalid
     └── PipelineError      a step of the whole pipeline failed (names the step)
"""

from __future__ import annotations

__all__ = [
    "MnistkitError",
    "ConfigError",
    "DataError",
    "TrainingError",
    "ArtifactError",
    "SearchError",
    "ServingError",
    "PackagingError",
    "PushError",
    "QueryError",
    "ManifestError",
    "PipelineError",
]


class MnistkitError(Exception):
    """Base of every expected mnistkit failure; its message says what to do next."""


class ConfigError(MnistkitError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class DataError(MnistkitError):
    """The MNIST files are missing, corrupt or unreadable."""


class TrainingError(MnistkitError):
    """Training could not run or diverged."""


class ArtifactError(MnistkitError):
    """A model artifact is missing, tampered with, or not in mnistkit's format."""


class SearchError(MnistkitError):
    """A hyper-parameter search could not be read or run."""


class ServingError(MnistkitError):
    """The Seldon model class could not start."""


class PackagingError(MnistkitError):
    """The s2i source folder or the image build failed."""


class PushError(MnistkitError):
    """Pushing an image to a registry failed."""


class QueryError(MnistkitError):
    """A request to a Seldon endpoint failed."""


class ManifestError(MnistkitError):
    """A generated cluster resource is invalid."""


class PipelineError(MnistkitError):
    """A step of the whole pipeline failed."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step '{step}' failed: {message}")
        self.step = step
