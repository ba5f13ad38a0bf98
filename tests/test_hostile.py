"""Hostile input never reaches SQL as code, and never crashes the command line.

Tag names, string literals and audience expressions holding quotes,
backslashes, `'; DROP TABLE …; --`, LIKE metacharacters or NUL are bound as
values on SQLite, PostgreSQL and MariaDB (tests/dbs.py): apply, preview and
export do exactly what the text says and the tables are intact afterwards.
Invisible characters in tag names are lint errors (TD404, TD106); deeply
nested expressions and huge files are one clear TD105 error (TD105), no
traceback, no crash.

Decision on NUL in a string literal (`"\\u0000"`): the language allows it
(it is a value like any other), SQLite and MariaDB compare it as a value;
PostgreSQL cannot store or bind NUL in text, so there apply and preview fail
with one line naming the problem, and apply leaves the store unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cli import main
from dbs import BACKENDS, isolated_engine
from runtime import store
from tagdsl import Config, analyze

ROOT = Path(__file__).resolve().parent.parent
AS_OF = "2026-05-01T12:00:00"
DROP = "'; DROP TABLE followers; --"
EVIL_TAG = "x'); DROP TABLE followers; --"

# openid -> city. "abc" and "plain" would match a LIKE pattern that let `%`
# or `_` act as wildcards, or a backslash act as an escape.
CITIES = {
    "drop": DROP,
    "backslash": "a\\b",
    "percent": "%x",
    "underscore": "x_y",
    "abc": "abc",
    "obrien": "O'Brien",
    "quoted": '"quoted"',
    "plain": "ab",
}

# The ruleset: tag names and literals a user could type, each matching one
# intended follower. Written with the language's escapes (\\ is a backslash).
RULES = r'''
tag "x'); DROP TABLE followers; --" when city == "'; DROP TABLE followers; --"
tag "反斜杠\\" when contains(city, "\\")
tag "反斜杠等于" when city == "a\\b"
tag "百分号%" when starts_with(city, "%")
tag "下划线_" when contains(city, "_")
tag "引号'\"" when city in ["O'Brien", "\"quoted\""]
tag "不含百分号" when not contains(city, "%")
'''
EXPECTED = {
    EVIL_TAG: {"drop"},
    "反斜杠\\": {"backslash"},
    "反斜杠等于": {"backslash"},
    "百分号%": {"percent"},
    "下划线_": {"underscore"},
    "引号'\"": {"obrien", "quoted"},
    "不含百分号": set(CITIES) - {"percent"},
}


# -- helpers -------------------------------------------------------------------------------------

def write_project(directory: Path, rules: str = RULES) -> Path:
    """tagdsl.toml (platform none: no name-length limits, so every name reaches SQL) and the ruleset."""
    (directory / "rules").mkdir(parents=True, exist_ok=True)
    (directory / "tagdsl.toml").write_text('[project]\nplatform = "none"\nrulesets = ["rules"]\n', encoding="utf-8")
    (directory / "rules" / "hostile.tag").write_text(rules, encoding="utf-8")
    return directory / "tagdsl.toml"


def make_store(url, cities=CITIES):
    db = store.connect(url, create=True)
    tables = store.create_store(db, Config())
    with db.begin() as conn:
        conn.execute(sa.insert(tables.followers), [{"openid": o, "city": c} for o, c in cities.items()])
    db.dispose()


def tagdsl(*args):
    """The command line, in process: (exit status, stdout, stderr)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"uncaught {result.exception!r}\n{result.stderr}")
    return result.exit_code, result.stdout, result.stderr


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def rows(url, statement):
    db = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with db.connect() as conn:
            return conn.execute(sa.text(statement)).all()
    finally:
        db.dispose()


def assert_tables_intact(url, cities=CITIES):
    assert dict(rows(url, "SELECT openid, city FROM followers")) == cities
    names = set(sa.inspect(sa.create_engine(url, poolclass=sa.pool.NullPool)).get_table_names())
    assert {"followers", "orders", "events", "tagdsl_memberships", "tagdsl_runs", "tagdsl_changes"} <= names


def preview_count(config, url, expr):
    code, out, err = tagdsl("preview", expr, "--config", config, "--db", url, "--as-of", AS_OF, "--format", "json")
    assert code == 0, err
    return json.loads(out)["count"]


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    with isolated_engine(request.param, tmp_path) as (_engine, url):
        yield url


# -- bound, not executed -------------------------------------------------------------------------

def test_hostile_names_and_strings_are_values_in_apply_preview_and_export(url, tmp_path):
    make_store(url)
    config = write_project(tmp_path)
    code, out, err = tagdsl("apply", "--config", config, "--db", url, "--as-of", AS_OF)
    assert code == 0, err
    held = {}
    for openid, tag in rows(url, "SELECT openid, tag FROM tagdsl_memberships"):
        held.setdefault(tag, set()).add(openid)
    assert held == {tag: members for tag, members in EXPECTED.items() if members}
    assert_tables_intact(url)

    # Audience expressions typed on the command line.
    assert preview_count(config, url, f'city == "{DROP}"') == 1
    assert preview_count(config, url, 'starts_with(city, "%")') == 1  # not every city
    assert preview_count(config, url, 'contains(city, "_")') == 1  # not every city of 2+ characters
    assert preview_count(config, url, 'contains(city, "a_")') == 0  # "ab" is no match
    assert preview_count(config, url, 'contains(city, "\\\\")') == 1  # one backslash: "a\b" only
    assert preview_count(config, url, 'city in ["O\'Brien", "\\"quoted\\""]') == 2
    assert preview_count(config, url, f'tag("{EVIL_TAG}") or city == "x\\"); DROP TABLE tagdsl_runs; --"') == 1
    code, out, err = tagdsl("preview", f'city == "{DROP}"', "--config", config, "--db", url, "--as-of", AS_OF,
                            "--by", "city", "--sample", "5")
    assert code == 0 and DROP in out, err

    code, out, err = tagdsl("export", "--tag", EVIL_TAG, "--config", config, "--db", url, "--format", "jsonl")
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [{"openid": "drop", "tag": EVIL_TAG, "source": "rule"}]
    assert_tables_intact(url)


def test_nul_in_a_string_literal_is_a_value_or_one_clear_error(url, tmp_path):
    postgres = url.startswith("postgresql")
    cities = {**CITIES, **({} if postgres else {"nul": "a\x00b"})}  # PostgreSQL text cannot hold NUL
    make_store(url, cities)
    config = write_project(tmp_path, 'tag "有城市" when city != ""\n')
    code, out, err = tagdsl("apply", "--config", config, "--db", url, "--as-of", AS_OF)
    assert code == 0, err
    before = sorted(rows(url, "SELECT openid, tag, source FROM tagdsl_memberships"))

    code, out, err = tagdsl("preview", 'city == "a\\u0000b"', "--config", config, "--db", url, "--as-of", AS_OF,
                            "--format", "json")
    if postgres:
        assert code == 2 and "NUL" in one_line_error(err)
    else:
        assert code == 0, err
        assert json.loads(out)["count"] == 1  # exactly the follower whose city holds the NUL, not "a" or "ab"

    write_project(tmp_path, 'tag "有城市" when city != ""\ntag "NUL" when city == "a\\u0000b"\n')
    code, out, err = tagdsl("apply", "--config", config, "--db", url, "--as-of", AS_OF)
    after = sorted(rows(url, "SELECT openid, tag, source FROM tagdsl_memberships"))
    if postgres:
        assert code == 2 and "NUL" in one_line_error(err)
        assert after == before
        assert [s for (s,) in rows(url, "SELECT status FROM tagdsl_runs ORDER BY id")] == ["ok", "failed"]
    else:
        assert code == 0, err
        assert after == sorted(before + [("nul", "NUL", "rule")])
    assert_tables_intact(url, cities)


# -- lint errors ----------------------------------------------------------------------------------

def test_invisible_characters_in_tag_names_are_lint_errors_and_reach_no_database(tmp_path):
    rules = ('tag "c\\u202ed" when city == "x"\n'  # RIGHT-TO-LEFT OVERRIDE
             'tag "e\\u200bf" when city == "x"\n'  # ZERO WIDTH SPACE
             'tag "a\\u0000b" when city == "x"\n'
             'tag "g\u202eh" when city == "x"\n')  # typed raw, not escaped
    config = write_project(tmp_path, rules)
    code, out, err = tagdsl("lint", "--config", config)
    assert code == 1
    found = [(d.code, d.span.line, d.span.column) for d in analyze(config=Config(), texts={"r.tag": rules}).errors]
    assert found == [("TD404", line, 5) for line in (1, 2, 3, 4)]
    for line in (1, 2, 3, 4):
        assert f"hostile.tag:{line}:5: TD404 error" in out

    url = f"sqlite:///{tmp_path / 'store.db'}"
    make_store(url)
    code, out, err = tagdsl("apply", "--config", config, "--db", url, "--as-of", AS_OF)
    assert code == 1 and "TD404" in err and "Traceback" not in err
    assert rows(url, "SELECT COUNT(*) FROM tagdsl_runs") == [(0,)]

    (tmp_path / "rules" / "hostile.tag").write_bytes(b'tag "a\x00b" when city == "x"\n')
    code, out, err = tagdsl("lint", "--config", config)
    assert code == 1 and "hostile.tag:1:7: TD106 error" in out


# -- too deep, too large: the real command, in a process (a crash would show) ----------------------

def run_cli(cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TAGDSL_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-c", "from cli import main; main()", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr and done.returncode in (1, 2), (done.returncode, done.stderr[-2000:])
    return done


def test_deep_nesting_and_huge_files_are_one_clear_error(tmp_path):
    deep = "(" * 10_000 + 'city == "a"' + ")" * 10_000
    (tmp_path / "deep.tag").write_text(f'tag "deep" when {deep}\n', encoding="utf-8")
    line = 'tag "t{}" when city == "' + "x" * 200 + '"\n'
    with open(tmp_path / "huge.tag", "w", encoding="utf-8") as f:  # about 30 MB of valid rules
        n = 0
        while f.tell() < 30_000_000:
            f.write(line.format(n))
            n += 1
    config = write_project(tmp_path, 'tag "有城市" when city != ""\n')
    url = f"sqlite:///{tmp_path / 'store.db'}"
    make_store(url)

    done = run_cli(tmp_path, "lint", "deep.tag", "huge.tag", "--config", config)
    assert done.returncode == 1
    assert "deep.tag:1:" in done.stdout and "huge.tag:1:1: TD105 error: file is too large" in done.stdout
    assert done.stdout.count("TD105 error") == 2

    done = run_cli(tmp_path, "preview", deep, "--config", config, "--db", url)
    assert "TD105" in one_line_error(done.stderr) and "<expr>:1:" in done.stderr

    done = run_cli(tmp_path, "preview", 'city == "a"', "--rules", "huge.tag", "--config", config, "--db", url)
    assert "huge.tag:1:1: TD105" in one_line_error(done.stderr)

    done = run_cli(tmp_path, "apply", "deep.tag", "--config", config, "--db", url)
    assert done.returncode == 1 and "deep.tag:1:" in done.stderr and "TD105" in done.stderr
    assert rows(url, "SELECT COUNT(*) FROM tagdsl_runs") == [(0,)]
