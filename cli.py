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

from tagdsl import TagDSLError


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
    from tagdsl import load_config

    return load_config(path)


config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="Path to tagdsl.toml (default: found by walking up from the current directory).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tagdsl", message="tagdsl %(version)s")
def main() -> None:
    """tagdsl: tag WeChat followers with rules written as text."""


# --- lint / rules (checker) ------------------------------------------------------
# (owned by the checker work; commands: lint, rules)

@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@config_option
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "github"]), default="text",
              show_default=True, help="Output format; json, sarif and github write only that to stdout.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@handle_errors
def lint(paths, config_path, fmt, strict):
    """Check rule files (default: the configuration's project.rulesets)."""
    import os

    from tagdsl import analyze
    from tagdsl.report import exit_status, render

    analysis = analyze(list(paths) or None, get_config(config_path))
    if not analysis.modules:
        click.echo("warning: no .tag files found", err=True)
    colored = fmt == "text" and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    click.echo(render(fmt, analysis.diagnostics, analysis.sources, click.style if colored else None), nl=False)
    sys.exit(exit_status(analysis.diagnostics, strict))


@main.command()
@click.argument("code", required=False)
def rules(code):
    """List every diagnostic code, or explain one (e.g. `tagdsl rules TD401`)."""
    from tagdsl.report import explain_rule, find_rule, rules_listing, suggest_rule

    if code is None:
        click.echo(rules_listing(), nl=False)
        return
    rule = find_rule(code)
    if rule is None:
        _fail(f"unknown rule `{code}`; did you mean `{suggest_rule(code)}`? (`tagdsl rules` lists them all)")
    click.echo(explain_rule(rule), nl=False)


# --- fmt (formatter) ---------------------------------------------------------------
# (owned by the formatter work; command: fmt)

@main.command("fmt")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--check", is_flag=True,
              help="Change nothing; list each file that would change (\"would reformat PATH\") and exit 1 if any.")
@click.option("--diff", "show_diff", is_flag=True,
              help="Change nothing; print a unified diff of the changes and exit 1 if there are any (as --check).")
@config_option
@handle_errors
def fmt_command(paths, check, show_diff, config_path):
    """Rewrite rule files in the canonical style (default: the configuration's project.rulesets).

    Files are rewritten in place, only when they change. A file with syntax
    errors is left untouched and its first error printed as
    `file:line:col: CODE message`; the other files are still formatted.

    The canonical style is described in tagdsl/format.py; formatting never
    changes what a rule means and keeps every comment.

    Exit status: 0 when every file is formatted (or already was); 1 when a
    file has syntax errors, or, with --check or --diff, when a file would
    change; 2 for a missing path, a bad configuration or an unreadable file.
    """
    from tagdsl import collect_files
    from tagdsl.format import diff_text, format_file, write_formatted

    files = collect_files(list(paths) if paths else get_config(config_path).ruleset_paths())
    status = 0
    for path in files:
        result = format_file(path)
        if result.error:
            click.echo(f"error: {result.error}", err=True)
            status = 2
            continue
        if result.diagnostic:
            click.echo(result.diagnostic_line(), err=True)
            status = max(status, 1)
            continue
        if not result.changed:
            continue
        if show_diff:
            click.echo(diff_text(result), nl=False)
        if check:
            click.echo(f"would reformat {result.shown}")
        if check or show_diff:
            status = max(status, 1)
        else:
            try:
                write_formatted(result)
            except TagDSLError as exc:
                click.echo(f"error: {exc}", err=True)
                status = 2
                continue
            click.echo(f"reformatted {result.shown}", err=True)
    sys.exit(status)


# --- engine: init / apply / preview / explain / export / compile / demo ----------
# (owned by the runtime work)

db_option = click.option("--db", "db_url", metavar="URL",
                         help="Database URL (default: [database] url of tagdsl.toml, or TAGDSL_DATABASE_URL).")
as_of_option = click.option("--as-of", "as_of", metavar="ISO-8601",
                            help="Evaluate as of this instant: 2026-05-01, 2026-05-01T09:30:00 or with an offset "
                                 "(no offset: the project time zone). Default: now.")
rules_option = click.option("--rules", "rules_paths", multiple=True, type=click.Path(),
                            help="Rule files or directories (default: [project] rulesets of tagdsl.toml).")


def _runtime_engine(config_path, db_url):
    from runtime.engine import Engine

    return Engine(get_config(config_path), db_url)


def _as_of_arg(engine, as_of):
    from runtime.engine import resolve_as_of

    return resolve_as_of(as_of, engine.config.tz) if as_of is not None else None


def _text_table(headers, rows, right=()):
    """Columns padded by display width (CJK characters take two columns)."""
    from tagdsl.spans import display_width

    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(display_width(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - display_width(cell))
            parts.append(pad + cell if i in right else cell + pad)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _apply_summary(result, max_drops=20):
    from runtime.results import iso_instant

    when = iso_instant(result.as_of, result.tz)
    head = "Dry run (nothing written)" if result.dry_run else f"Run {result.run_id}"
    lines = [f"{head} as of {when}: {result.followers:,} followers, +{result.added:,} −{result.removed:,} "
             f"in {result.seconds:.2f} s"]
    rows = [(name, f"{c.total:,}", f"+{c.added:,}", f"−{c.removed:,}") for name, c in result.tags.items()]
    lines.append(_text_table(("tag", "total", "added", "removed"), rows, right={1, 2, 3}))
    if result.expired:
        lines.append(f"{result.expired:,} membership(s) removed because their tag expires")
    if result.dropped:
        lines.append(f"Limit: {len(result.dropped):,} computed tag(s) dropped to keep followers within "
                     f"{result.limit} tags (lowest priority first):")
        for d in result.dropped[:max_drops]:
            lines.append(f"  {d.openid}  {d.tag}  (priority {d.priority})")
        if len(result.dropped) > max_drops:
            lines.append(f"  … and {len(result.dropped) - max_drops:,} more (--format json lists them all)")
    elif result.limit is not None:
        lines.append(f"Limit: no follower exceeds {result.limit} tags")
    return "\n".join(lines)


def _preview_summary(result, max_values=12):
    lines = [f"{result.label}: {result.count:,} of {result.total:,} followers ({result.share:.2%})"]
    if result.sample:
        lines.append("sample: " + ", ".join(result.sample))
    if result.by is not None:
        rows = [("(missing)" if b.value is None else b.value, f"{b.count:,}", f"{b.total:,}", f"{b.share:.2%}")
                for b in result.by[:max_values]]
        lines.append(_text_table((result.by_field, "count", "total", "share"), rows, right={1, 2, 3}))
        if len(result.by) > max_values:
            lines.append(f"… and {len(result.by) - max_values:,} more values (--format json lists them all)")
    return "\n".join(lines)


class _ProgressBar:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, label="apply"):
        self.label = label
        self.progress = None
        self.task = None

    def __enter__(self):
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=None)
        return self

    def __call__(self, step, done, total):
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total, description=f"apply: {step}")

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()


def _echo_json(data):
    import json

    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing tagdsl.toml and the copied rulesets.")
@handle_errors
def init(directory, force):
    """Start a project in DIRECTORY: tagdsl.toml, the shipped rulesets, a SQLite store."""
    from runtime.demo import init_project

    done = init_project(directory, force)
    click.echo(f"wrote {done.config}")
    click.echo(f"copied {len(done.rulesets)} file(s) into {Path(directory) / 'rulesets'}")
    click.echo(f"created the store {done.database}")
    click.echo("next: load your followers into it (or run `tagdsl demo`), then `tagdsl apply`")


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@config_option
@db_option
@as_of_option
@click.option("--dry-run", is_flag=True, help="Compute and report, write nothing.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@handle_errors
def apply(paths, config_path, db_url, as_of, dry_run, fmt):
    """Apply the rulesets to the follower store: write only what changed."""
    engine = _runtime_engine(config_path, db_url)
    with engine:
        when = _as_of_arg(engine, as_of)
        ruleset = engine.load_ruleset(list(paths) or None)
        with _ProgressBar() as bar:
            result = engine.apply(ruleset, as_of=when, dry_run=dry_run, progress=bar)
    if fmt == "json":
        _echo_json(result.to_dict())
    else:
        click.echo(_apply_summary(result))


@main.command()
@click.argument("expr", required=False)
@click.option("--audience", "audience_name", metavar="NAME", help="Preview a named audience of the ruleset.")
@config_option
@db_option
@rules_option
@as_of_option
@click.option("--sample", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also list N openids of the audience (the first by openid).")
@click.option("--by", "by_field", metavar="FIELD", help="Break the audience down by a follower field.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@handle_errors
def preview(expr, audience_name, config_path, db_url, rules_paths, as_of, sample, by_field, fmt):
    """Size an audience: EXPR (e.g. 'city == "广州" and tag("沉睡唤醒")') or --audience NAME."""
    if (expr is None) == (audience_name is None):
        _fail("give an expression or --audience NAME (one of them)")
    engine = _runtime_engine(config_path, db_url)
    with engine:
        when = _as_of_arg(engine, as_of)
        rules = list(rules_paths) or None
        if audience_name is not None:
            ruleset, target = engine.named_audience(audience_name, rules)
        else:
            ruleset, target = rules, expr
        result = engine.preview(target, as_of=when, sample=sample, by=by_field, ruleset=ruleset)
    if fmt == "json":
        _echo_json(result.to_dict())
    else:
        click.echo(_preview_summary(result))


@main.command()
@click.argument("openid")
@config_option
@db_option
@rules_option
@as_of_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@handle_errors
def explain(openid, config_path, db_url, rules_paths, as_of, fmt):
    """Show why a follower has or lacks each tag: every rule with its values."""
    engine = _runtime_engine(config_path, db_url)
    with engine:
        result = engine.explain(openid, list(rules_paths) or None, as_of=_as_of_arg(engine, as_of))
    if fmt == "json":
        _echo_json(result.to_dict())
    else:
        click.echo(result.render())


@main.command()
@click.option("--tag", "tag_name", metavar="NAME", help="Only the memberships of this tag.")
@click.option("--audience", "audience_name", metavar="NAME", help="The openids of a named audience instead.")
@config_option
@db_option
@rules_option
@as_of_option
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@handle_errors
def export(tag_name, audience_name, config_path, db_url, rules_paths, as_of, fmt):
    """Write memberships (openid,tag,source) or an audience's openids to stdout."""
    import csv
    import json

    if tag_name is not None and audience_name is not None:
        _fail("give --tag or --audience, not both")
    engine = _runtime_engine(config_path, db_url)
    with engine:
        rows = engine.export(tag=tag_name, audience=audience_name, ruleset=list(rules_paths) or None,
                             as_of=_as_of_arg(engine, as_of))
        out = click.get_text_stream("stdout")
        columns = ["openid"] if audience_name is not None else ["openid", "tag", "source"]
        if fmt == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow([row[c] for c in columns])
        else:
            for row in rows:
                out.write(json.dumps({c: row[c] for c in columns}, ensure_ascii=False) + "\n")
        out.flush()


@main.command(name="compile")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@config_option
@click.option("--dialect", type=click.Choice(["sqlite", "postgresql", "mysql"]), default="sqlite",
              show_default=True)
@click.option("--tag", "tag_name", metavar="NAME", help="Only this computed tag.")
@as_of_option
@handle_errors
def compile_cmd(paths, config_path, dialect, tag_name, as_of):
    """Print the SQL that computes the memberships of PATHS' computed tags."""
    from runtime.engine import resolve_as_of
    from tagdsl import load_ruleset
    from tagdsl.compile.sql import compile_sql, sql_text

    config = get_config(config_path)
    when = resolve_as_of(as_of, config.tz)
    ruleset = load_ruleset(list(paths), config)
    tags = None
    if tag_name is not None:
        rule = ruleset.tags.get(tag_name)
        if rule is None or rule.manual:
            known = ", ".join(t.name for t in ruleset.computed)
            _fail(f"no computed tag `{tag_name}` in the ruleset (computed tags: {known})")
        tags = [tag_name]
    click.echo(sql_text(compile_sql(ruleset, config).desired_memberships(when, tags=tags), dialect))


@main.command()
@click.option("--dir", "directory", default="tagdsl-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where to create the demo project (its database is recreated on every run).")
@click.option("--followers", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed of the synthetic population.")
@handle_errors
def demo(directory, followers, seed):
    """Create a demo store with a synthetic population, apply the shipped rulesets, preview an audience."""
    from runtime.demo import DEFAULT_SEED, run_demo

    def loaded(counts):
        click.echo(f"loaded {counts.followers:,} followers, {counts.orders:,} orders and {counts.events:,} "
                   f"events in {counts.seconds:.1f} s")

    with _ProgressBar("generating and loading followers") as bar:
        result = run_demo(directory, followers, DEFAULT_SEED if seed is None else seed, progress=bar,
                          on_loaded=loaded)
    click.echo(_apply_summary(result.apply))
    click.echo("")
    click.echo(_preview_summary(result.preview))
    click.echo("")
    busiest = max(result.apply.tags, key=lambda name: result.apply.tags[name].total, default=None)
    click.echo(f"the demo project is in {result.directory}; try:")
    if busiest is not None:
        click.echo(f"  cd {result.directory} && tagdsl preview 'tag(\"{busiest}\") and city == \"广州\"' --by gender")
    click.echo(f"  cd {result.directory} && tagdsl explain {result.preview.sample[0] if result.preview.sample else 'OPENID'}")


# --- test (rulesets as code) -------------------------------------------------------

@main.command("test")
@click.argument("paths", nargs=-1, type=click.Path())
@config_option
@click.option("--db", "db_url", metavar="URL",
              help="Evaluate through the SQL compiler on this database (fixtures go into a scratch schema, "
                   "database or throwaway SQLite file) instead of in memory.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "junit"]), default="text", show_default=True,
              help="Output format; json and junit write only that to stdout.")
@click.option("--coverage", is_flag=True, help="Report which rules tests saw both hold and not hold, "
                                               "and which exclusive-group branches were taken.")
@click.option("-v", "--verbose", is_flag=True, help="List every test, not only failures.")
@handle_errors
def test_command(paths, config_path, db_url, fmt, coverage, verbose):
    """Run the .tagtest files in PATHS against the .tag files there (default: project.rulesets)."""
    import os

    from tagdsl.testing import render, render_text, run_tests

    config = get_config(config_path)
    backend = None
    if db_url:
        from runtime.testing_db import DatabaseBackend

        backend = DatabaseBackend(db_url)
    report = run_tests(list(paths) or None, config, backend=backend, coverage=coverage)
    colored = fmt == "text" and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if fmt == "text":
        click.echo(render_text(report, click.style if colored else None, verbose=verbose), nl=False)
    else:
        click.echo(render(fmt, report), nl=False)
    sys.exit(report.exit_code)


# --- sync / import (WeChat, WeCom) --------------------------------------------------

@main.group(name="import")
def import_group() -> None:
    """Pull followers, tags and memberships from WeChat or WeCom into the store."""


def _import(platform: str, config_path: str | None) -> None:
    from runtime.wechat_import import format_import, import_wechat_mp, import_wecom

    config = get_config(config_path)
    run = import_wechat_mp if platform == "wechat_mp" else import_wecom
    report = run(config, out=lambda line: click.echo(line, err=True))
    out, err = format_import(report)
    click.echo(out, nl=False)
    if err:
        click.echo(err, nl=False, err=True)
    sys.exit(report.exit_code)


@import_group.command(name="wechat-mp")
@config_option
@handle_errors
def import_wechat_mp_cmd(config_path):
    """Followers (user/get, user/info/batchget), tags and memberships of the official account.

    Credentials: [wechat_mp] appid (or appid_env) and the secret in the variable named by secret_env."""
    _import("wechat_mp", config_path)


@import_group.command(name="wecom")
@config_option
@handle_errors
def import_wecom_cmd(config_path):
    """External contacts, (follow user, contact) pairs and corp tags of WeCom.

    Credentials: [wecom] corpid (or corpid_env) and the customer-contact secret in secret_env."""
    _import("wecom", config_path)


@main.group(name="sync")
def sync_group() -> None:
    """Make the platform's tags equal to the store's computed and manual tags."""


def _sync(platform: str, config_path: str | None, dry_run: bool, prune: bool, restart: bool) -> None:
    from runtime.sync import format_plan, format_report, sync

    config = get_config(config_path)
    report = sync(platform, config, dry_run=dry_run, prune=prune, restart=restart,
                  out=lambda line: click.echo(line, err=True),
                  on_plan=lambda plan: click.echo(format_plan(plan), nl=False))
    out, err = format_report(report)
    click.echo(out, nl=False)
    if err:
        click.echo(err, nl=False, err=True)
    sys.exit(report.exit_code)


_sync_options = [
    click.option("--dry-run", is_flag=True, help="Print the plan; send nothing."),
    click.option("--prune", is_flag=True,
                 help="Also delete platform tags and memberships tagdsl did not create (not in the store)."),
    click.option("--restart", is_flag=True, help="Abandon an unfinished run instead of resuming it; plan afresh."),
    config_option,
]


def _with_sync_options(fn):
    for option in reversed(_sync_options):
        fn = option(fn)
    return fn


@sync_group.command(name="wechat-mp")
@_with_sync_options
@handle_errors
def sync_wechat_mp_cmd(dry_run, prune, restart, config_path):
    """Sync to the official account: tags/create, batchtagging, batchuntagging (50 a call).

    Exit status: 0 complete, 1 stopped (quota, unexpected error; resumable) or refused, 2 usage."""
    _sync("wechat_mp", config_path, dry_run, prune, restart)


@sync_group.command(name="wecom")
@_with_sync_options
@handle_errors
def sync_wecom_cmd(dry_run, prune, restart, config_path):
    """Sync to WeCom corp tags: groups and tags, then mark_tag per (follow user, contact) pair.

    Exit status: 0 complete, 1 stopped (quota, unexpected error; resumable) or refused, 2 usage."""
    _sync("wecom", config_path, dry_run, prune, restart)


# --- serve (event callbacks) -----------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8080, show_default=True,
              help="Port to listen on (0: any free port, printed at startup).")
@config_option
@click.option("--db", "db_url", metavar="URL",
              help="Database URL (default: [database] url of tagdsl.toml, or TAGDSL_DATABASE_URL).")
@click.option("--rules", "rules_paths", multiple=True, type=click.Path(),
              help="Rule files or directories (default: [project] rulesets of tagdsl.toml).")
@click.option("--replay-window", type=click.IntRange(min=1), default=300, show_default=True,
              help="Refuse requests whose timestamp is further than this many seconds from the server clock.")
@click.option("--max-body", type=click.IntRange(min=256), default=64 * 1024, show_default=True,
              help="Largest accepted request body, in bytes.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes sharing the port (PostgreSQL/MySQL only; SQLite has one writer).")
@handle_errors
def serve(host, port, config_path, db_url, rules_paths, replay_window, max_body, workers):
    """Receive WeChat official-account pushes at /wechat: store each event, re-tag its follower at once.

    Token and EncodingAESKey come from the variables named by [wechat_mp] token_env and aes_key_env,
    the appid from [wechat_mp] appid. Plaintext and safe mode (encrypt_type=aes) are accepted."""
    import logging

    from runtime.server import make_server
    from tagdsl import load_ruleset

    config = get_config(config_path)
    ruleset = load_ruleset(list(rules_paths) or config.ruleset_paths(), config)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    server = make_server(config, ruleset, db_url or config.database_url, host=host, port=port,
                         replay_window=replay_window, max_body=max_body, workers=workers)
    click.echo(f"listening on http://{host}:{server.port}/wechat", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()



if __name__ == "__main__":  # pragma: no cover
    main()
