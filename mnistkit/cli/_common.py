"""What every command shares: logging set-up and the error edge."""

from __future__ import annotations

import errno
import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from ..errors import MnistkitError
from ..files import os_reason

F = TypeVar("F", bound=Callable[..., Any])


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now (click's test runner swaps it)."""

    stream = property(lambda self: sys.stderr, lambda self, value: None)  # type: ignore[assignment]


def setup_logging(verbose: int, quiet: bool = False) -> None:
    if verbose and quiet:
        from ..errors import ConfigError

        raise ConfigError("-q and -v ask for less and more detail at once: give one")
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logger = logging.getLogger("mnistkit")
    logger.setLevel(level)
    if not any(getattr(h, "_mnistkit", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._mnistkit = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


def verbosity(f: F) -> F:
    f = click.option("-v", "--verbose", count=True, help="More detail (debug logs).")(f)
    f = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")(f)
    return f


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a cancelled CI job) or SIGHUP (a closed terminal or ssh
    session), raised where Ctrl-C would be, so the same clean-up runs: started services stopped,
    trials stopped, nothing half-written."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = signum


#: the signals a command handles as it handles Ctrl-C (SIGHUP left dockerd and the registry running)
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def errors_to_exit(f: F) -> F:
    """Turn expected failures (and a full disk) into one line on stderr and exit 1; Ctrl-C into
    exit 130, SIGTERM and SIGHUP (handled as Ctrl-C is) into 143 and 129."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = [(sig, signal.signal(sig, _terminate)) for sig in TERMINATING] if main_thread else []
        try:
            return f(*args, **kwargs)
        except MnistkitError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except OSError as e:
            # a full disk can strike any write; the library names the file where it can, and
            # this net keeps one that slipped through from becoming a traceback
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            click.echo(f"Error: {e.filename or 'a write'}: {os_reason(e)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as e:
            signum = int(e.signum if isinstance(e, Terminated) else signal.SIGINT)
            said = {int(signal.SIGINT): "Interrupted.", int(signal.SIGHUP): "Hung up."}
            click.echo(said.get(signum, "Terminated."), err=True)
            sys.exit(128 + signum)
        finally:
            for sig, handler in previous:
                signal.signal(sig, handler)

    return wrapper  # type: ignore[return-value]


def _opposite(flag: str) -> str:
    """``--no-cuda`` -> ``--cuda``, ``--download`` -> ``--no-download``."""
    return "--" + flag[5:] if flag.startswith("--no-") else "--no-" + flag[2:]


class _OrNone(click.ParamType):
    """A number, or ``none`` for an option whose unset value means something (all the images,
    torch's threads, every epoch evaluated): how a flag beside ``--config`` removes a saved cap.
    The word ``TrainConfig.parse_args`` (a polyaxonfile's commands) accepts too."""

    def __init__(self, inner: Any) -> None:
        self.inner = click.types.convert_type(inner)
        self.name = f"{self.inner.name}|none"

    def get_metavar(self, param: click.Parameter) -> str:
        return f"{self.inner.name.upper()}|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            return None
        return self.inner.convert(value, param, ctx)


def table_options(table: Mapping[str, Any], skip: tuple[str, ...] = ()) -> Callable[[F], F]:
    """click options for every row of an option table (``mnistkit.config.OPTIONS``)."""

    def decorate(f: F) -> F:
        for o in reversed([o for name, o in table.items() if name not in skip]):
            kwargs: dict[str, Any] = {"help": o.help, "envvar": o.env}
            decls = o.flag
            if o.type is bool:  # with its opposite, so a saved config's (--config) can be turned off
                decls = f"{o.flag}/{_opposite(o.flag)}"
                kwargs["default"] = bool(o.default)
            else:
                kind = click.Choice(list(o.choices)) if o.choices else o.type
                kwargs["type"] = _OrNone(kind) if o.optional and o.type is not str else kind
                kwargs["default"] = o.default
                kwargs["show_default"] = o.default is not None
            if o.env:
                kwargs["help"] = f"{kwargs['help']} [env {o.env}]"
            f = click.option(decls, o.name, **kwargs)(f)
        return f

    return decorate


def given_on_command_line(names: Any) -> list[str]:
    """Which of ``names`` the user typed (not defaults, not the environment)."""
    ctx = click.get_current_context()
    return [n for n in names if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
