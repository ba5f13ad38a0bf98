"""The README's CLI reference stays true: every command and every option of
the click CLI is listed there (common options in the paragraph above the table)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
COMMON = ("--config", "--db", "--rules", "--as-of")


def _commands(cmd: click.Command, path: tuple[str, ...] = ()):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, path + (name,))
    else:
        yield path, cmd


def _reference() -> str:
    start = README.index("## CLI reference")
    return README[start:README.index("\n## ", start + 1)]


def _row(command: str) -> str:
    rows = [line for line in _reference().splitlines() if line.startswith(f"| `tagdsl {command} ")
            or line.startswith(f"| `tagdsl {command}`")]
    assert rows, f"`tagdsl {command}` has no row in the README's CLI reference"
    return rows[0]


@pytest.mark.parametrize("path, command", list(_commands(main)), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_and_option_is_in_the_readme(path, command):
    row = _row(path[0])
    if len(path) > 1:
        assert path[1] in row, f"`tagdsl {' '.join(path)}` is not in its README row"
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        long = [o for o in param.opts if o.startswith("--")]
        for option in long:
            if option in COMMON:
                assert option in _reference(), f"common option {option} is not described"
                continue
            assert re.search(rf"{re.escape(option)}\b", row), f"`tagdsl {' '.join(path)} {option}` not in the README"
