"""The `tagdsl` command line: a thin layer over the library.

Each command parses its options, calls `tagdsl` or `runtime`, and prints the
result. Every user-facing error (TagDSLError and its kin) becomes one clear
line on stderr and a non-zero exit status; never a traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from tagdsl import TagDSLError, load_config


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Turn library errors into one line and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TagDSLError as exc:
            _fail(str(exc), exc.exit_code)
        except RecursionError:
            _fail("input nested too deeply to process", 2)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


def get_config(path: str | None):
    return load_config(path)


config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="Path to tagdsl.toml (default: found by walking up from the current directory).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tagdsl", message="tagdsl %(version)s")
def main() -> None:
    """tagdsl: tag WeChat followers with rules written as text."""


# --- lint / rules (checker) ------------------------------------------------------
# (owned by the checker work; commands: lint, rules)

# --- fmt (formatter) ---------------------------------------------------------------
# (owned by the formatter work; command: fmt)

# --- engine: init / apply / preview / explain / export / compile / demo ----------
# (owned by the runtime work)

# --- test (rulesets as code) -------------------------------------------------------

# --- sync / import (WeChat, WeCom) --------------------------------------------------

# --- serve (event callbacks) -----------------------------------------------------------


if __name__ == "__main__":  # pragma: no cover
    main()
