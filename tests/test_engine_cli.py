"""The engine commands as a user runs them: init, demo, apply, preview,
explain, export, compile, and their error paths (one line, exit status 2
for bad input or environment, 1 for rule errors, never a traceback)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from runtime.demo import STARTER_CONFIG
from tagdsl import Config, load_config
from tagdsl.resources import shipped_rulesets_dir

AS_OF = "2026-05-01T12:00:00+08:00"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result, code=2):
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """One demo project (300 followers); tests that write copy it."""
    base = tmp_path_factory.mktemp("demo")
    result = run("demo", "--dir", base / "proj", "--followers", 300)
    assert result.exit_code == 0, result.stderr
    return base / "proj", result


@pytest.fixture
def project(demo_dir, tmp_path):
    target = tmp_path / "proj"
    shutil.copytree(demo_dir[0], target)
    return target


def query(project, sql):
    with sqlite3.connect(project / "tagdsl.db") as conn:
        return conn.execute(sql).fetchall()


# -- init ------------------------------------------------------------------------------------------

def test_init_writes_config_rulesets_and_store_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "新项目"
    result = run("init", target)
    assert result.exit_code == 0, result.stderr
    assert (target / "tagdsl.toml").read_text(encoding="utf-8") == STARTER_CONFIG
    shipped = sorted(p.name for p in shipped_rulesets_dir().glob("*.tag"))
    assert shipped and sorted(p.name for p in (target / "rulesets").glob("*.tag")) == shipped
    tables = {r[0] for r in query(target, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"followers", "orders", "events", "tagdsl_tags", "tagdsl_memberships", "tagdsl_runs",
            "tagdsl_changes", "tagdsl_drops", "tagdsl_expirations"} <= tables
    followers = [r[1] for r in query(target, "PRAGMA table_info(followers)")]
    assert followers == ["openid", "unionid", "subscribe_time", "subscribe_scene", "qr_scene_str", "language",
                         "remark", "city", "province", "gender", "age", "last_active_at", "subscribed"]

    (target / "tagdsl.toml").write_text("# mine\n", encoding="utf-8")
    line = one_error_line(run("init", target))
    assert "tagdsl.toml already exists; use --force" in line
    assert (target / "tagdsl.toml").read_text(encoding="utf-8") == "# mine\n"
    assert run("init", target, "--force").exit_code == 0
    assert (target / "tagdsl.toml").read_text(encoding="utf-8") == STARTER_CONFIG
    # The project works straight away: its rules lint clean enough to apply on the empty store.
    applied = run("apply", "--config", target / "tagdsl.toml", "--format", "json")
    assert applied.exit_code == 0, applied.stderr
    assert json.loads(applied.stdout)["followers"] == 0


def test_the_starter_config_is_the_defaults_once_uncommented(tmp_path):
    uncommented = "\n".join(line[2:] if line.startswith("# ") else line for line in STARTER_CONFIG.splitlines())
    data = tomllib.loads(uncommented)
    path = tmp_path / "tagdsl.toml"
    path.write_text(uncommented, encoding="utf-8")
    config, defaults = load_config(path), Config()
    for section in ("project", "database", "followers", "sources"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.limits_resolved == defaults.limits_resolved
    assert set(data) == {"project", "database", "followers", "sources", "limits", "wechat_mp", "wecom"}
    # It documents every key of every section.
    for section in ("project", "database", "limits", "wechat_mp", "wecom"):
        for key in type(getattr(config, section)).model_fields:
            assert re.search(rf"^#+ {key} =|## or {key} =", STARTER_CONFIG, re.M), f"[{section}] {key} not shown"
    # As written (everything commented), it is the defaults too.
    path.write_text(STARTER_CONFIG, encoding="utf-8")
    assert load_config(path).model_dump(exclude={"path"}) == defaults.model_dump(exclude={"path"})


# -- demo ------------------------------------------------------------------------------------------

def test_demo_runs_end_to_end_and_prints_the_summary(demo_dir):
    directory, result = demo_dir
    out = result.stdout
    assert "loaded 300 followers" in out and "Run 1 as of" in out
    assert "tag" in out and "total" in out and "沉睡唤醒" in out
    assert "of 300 followers" in out  # the audience preview
    assert query(directory, "SELECT COUNT(*) FROM followers")[0][0] == 300
    runs = query(directory, "SELECT id, status FROM tagdsl_runs")
    assert runs == [(1, "ok")]
    # Timestamps are stored the way applications write them.
    stamp = query(directory, "SELECT created_at FROM orders WHERE created_at IS NOT NULL LIMIT 1")[0][0]
    assert len(stamp) == 19 and stamp[10] == " "
    assert (directory / "tagdsl.toml").exists() and list((directory / "rulesets").glob("*.tag"))


def test_demo_recreates_its_database(project):
    result = run("demo", "--dir", project, "--followers", 40)
    assert result.exit_code == 0, result.stderr
    assert query(project, "SELECT COUNT(*) FROM followers")[0][0] == 40
    assert query(project, "SELECT id FROM tagdsl_runs") == [(1,)]


# -- apply -----------------------------------------------------------------------------------------

def test_apply_json_shape_rerun_and_dry_run(project):
    config = project / "tagdsl.toml"
    dry = run("apply", "--config", config, "--as-of", AS_OF, "--dry-run", "--format", "json")
    assert dry.exit_code == 0, dry.stderr
    data = json.loads(dry.stdout)
    assert list(data) == ["run_id", "as_of", "followers", "tags", "dropped", "seconds"]
    assert data["run_id"] is None and data["as_of"] == AS_OF and data["followers"] == 300
    assert all(list(v) == ["total", "added", "removed"] for v in data["tags"].values())
    assert query(project, "SELECT COUNT(*) FROM tagdsl_runs")[0][0] == 1  # the demo's run only

    real = json.loads(run("apply", "--config", config, "--as-of", AS_OF, "--format", "json").stdout)
    assert real["run_id"] == 2 and real["tags"] == data["tags"]
    stored = dict(query(project, "SELECT tag, COUNT(*) FROM tagdsl_memberships WHERE source = 'rule' GROUP BY tag"))
    assert {t: c["total"] for t, c in real["tags"].items() if c["total"]} == stored

    again = json.loads(run("apply", "--config", config, "--as-of", AS_OF, "--format", "json").stdout)
    assert all(c["added"] == c["removed"] == 0 for c in again["tags"].values())
    assert query(project, "SELECT COUNT(*) FROM tagdsl_changes WHERE run_id = 3")[0][0] == 0


def test_apply_text_summary_and_naive_as_of(project):
    result = run("apply", "--config", project / "tagdsl.toml", "--as-of", "2026-05-01")
    assert result.exit_code == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("Run 2 as of 2026-05-01T00:00:00+08:00: 300 followers")
    assert result.stdout.splitlines()[1].split() == ["tag", "total", "added", "removed"]
    assert "Limit:" in result.stdout
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


@pytest.mark.parametrize("bad", ["2026-13-45", "yesterday", "05/01/2026"])
def test_a_bad_as_of_exits_2_with_one_line(project, bad):
    line = one_error_line(run("apply", "--config", project / "tagdsl.toml", "--as-of", bad))
    assert f"invalid as-of `{bad}`" in line
    assert query(project, "SELECT COUNT(*) FROM tagdsl_runs")[0][0] == 1


def test_an_unreachable_database_exits_2_without_the_password(project):
    line = one_error_line(run("apply", "--config", project / "tagdsl.toml",
                              "--db", "postgresql+psycopg://ops:hunter2@127.0.0.1:1/tags"))
    assert line.startswith("error: cannot reach database postgresql+psycopg://ops:***@127.0.0.1:1/tags")
    assert "hunter2" not in line
    line = one_error_line(run("preview", "age >= 18", "--config", project / "tagdsl.toml",
                              "--db", f"sqlite:///{project / 'nope.db'}"))
    assert "does not exist" in line


def test_a_missing_column_exits_2_and_names_it(project):
    with sqlite3.connect(project / "tagdsl.db") as conn:
        conn.execute("ALTER TABLE followers DROP COLUMN city")
    line = one_error_line(run("apply", "--config", project / "tagdsl.toml"))
    assert "column `followers.city` not found" in line and "followers.fields.city" in line
    assert query(project, "SELECT COUNT(*) FROM tagdsl_runs")[0][0] == 1


def test_a_ruleset_with_errors_exits_1_and_writes_nothing(project):
    bad = project / "bad.tag"
    bad.write_text('tag "x" when cty == "广州"\n', encoding="utf-8")
    result = run("apply", bad, "--config", project / "tagdsl.toml")
    line = one_error_line(result, code=1)
    assert line.startswith("error: ") and "bad.tag:1:14: TD201" in line
    assert query(project, "SELECT COUNT(*) FROM tagdsl_runs")[0][0] == 1


# -- preview -----------------------------------------------------------------------------------------

def test_preview_json_matches_a_hand_count(project):
    result = run("preview", 'city == "广州" and subscribed == true', "--config", project / "tagdsl.toml",
                 "--sample", 3, "--by", "gender", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert list(data) == ["count", "total", "share", "sample", "by"]
    hand = query(project, "SELECT openid, gender FROM followers WHERE city = '广州' AND subscribed = 1")
    assert data["count"] == len(hand) > 0 and data["total"] == 300
    assert data["share"] == round(len(hand) / 300, 4)
    assert data["sample"] == sorted(o for o, _ in hand)[:3]
    genders = dict(query(project, "SELECT gender, COUNT(*) FROM followers GROUP BY gender"))
    assert {row["value"]: row["total"] for row in data["by"]} == genders
    assert {row["value"]: row["count"] for row in data["by"]} == {g: sum(1 for _, x in hand if x == g)
                                                                  for g in genders}
    assert all(set(row) == {"value", "count", "total", "share"} for row in data["by"])


def test_preview_an_audience_and_a_tag_reference(project):
    config = project / "tagdsl.toml"
    named = run("preview", "--audience", "沉睡召回", "--config", config, "--format", "json")
    assert named.exit_code == 0, named.stderr
    live = run("preview", 'not (subscribed == false) and tag("沉睡唤醒")', "--config", config, "--format", "json")
    assert json.loads(named.stdout)["count"] == json.loads(live.stdout)["count"]
    text = run("preview", "--audience", "沉睡召回", "--config", config)
    assert text.stdout.startswith("沉睡召回: ") and "of 300 followers" in text.stdout


def test_preview_errors(project):
    config = project / "tagdsl.toml"
    line = one_error_line(run("preview", 'city == "广州" and agee > 3', "--config", config), code=1)
    assert line.startswith("error: <expr>:1:18: TD201")
    assert "unknown audience `不存在`" in one_error_line(run("preview", "--audience", "不存在", "--config", config))
    assert "one of them" in one_error_line(run("preview", "--config", config))
    assert "unknown follower field" in one_error_line(run("preview", "age > 1", "--by", "x", "--config", config))


# -- explain -------------------------------------------------------------------------------------------

def test_explain_a_follower_and_an_unknown_one(project):
    config = project / "tagdsl.toml"
    openid = query(project, "SELECT openid FROM followers WHERE last_active_at IS NOT NULL ORDER BY openid")[0][0]
    text = run("explain", openid, "--config", config, "--as-of", AS_OF)
    assert text.exit_code == 0, text.stderr
    assert text.stdout.startswith(f"follower {openid} as of 2026-05-01 12:00:00")
    assert 'tag "沉睡唤醒"' in text.stdout and "limit: " in text.stdout
    data = json.loads(run("explain", openid, "--config", config, "--format", "json").stdout)
    assert data["follower"] == openid and {"tags", "limit", "assigned", "stored"} <= set(data)
    line = one_error_line(run("explain", "o-nobody", "--config", config))
    assert "follower `o-nobody` not found" in line


# -- export --------------------------------------------------------------------------------------------

def test_export_csv_and_jsonl(project):
    config = project / "tagdsl.toml"
    result = run("export", "--config", config)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "openid,tag,source"
    rows = list(csv.reader(io.StringIO(result.stdout)))[1:]
    stored = query(project, "SELECT openid, tag, source FROM tagdsl_memberships")
    assert sorted(map(tuple, rows)) == sorted(stored) and len(rows) > 300

    one = run("export", "--tag", "已购买", "--config", config, "--format", "jsonl")
    records = [json.loads(line) for line in one.stdout.splitlines()]
    buyers = query(project, "SELECT openid FROM tagdsl_memberships WHERE tag = '已购买'")
    assert records and all(list(r) == ["openid", "tag", "source"] and r["tag"] == "已购买" for r in records)
    assert sorted(r["openid"] for r in records) == sorted(b for (b,) in buyers)

    audience = run("export", "--audience", "沉睡召回", "--config", config)
    assert audience.stdout.splitlines()[0] == "openid"
    count = json.loads(run("preview", "--audience", "沉睡召回", "--config", config, "--format", "json").stdout)["count"]
    assert len(audience.stdout.splitlines()) - 1 == count
    assert "not both" in one_error_line(run("export", "--tag", "a", "--audience", "b", "--config", config))


# -- compile -------------------------------------------------------------------------------------------

def test_compile_prints_sql_per_dialect(project):
    rules = project / "rulesets"
    sqlite_sql = run("compile", rules, "--config", project / "tagdsl.toml")
    assert sqlite_sql.exit_code == 0, sqlite_sql.stderr
    assert "SELECT" in sqlite_sql.stdout and "'沉睡唤醒'" in sqlite_sql.stdout
    one = run("compile", rules / "dormancy.tag", "--dialect", "postgresql", "--tag", "沉睡唤醒")
    assert one.exit_code == 0 and "'沉睡预警'" not in one.stdout.split("WHERE")[-1]
    line = one_error_line(run("compile", rules / "dormancy.tag", "--tag", "不存在"))
    assert "no computed tag `不存在`" in line
