"""How fast is `tagdsl lint` on the generated 1,000-rule ruleset (bench/run.py, scenario 6)?

    python bench/lint_speed.py [--repeat 3] [--rules 1000]

Prints, side by side in one run (the CPU is shared, so only figures from the
same run compare):
- in process: parse only (fast parser vs Lark only), the checks, and the
  whole `tagdsl.analyze` (fast parser vs Lark only);
- subprocess: `tagdsl lint rules.tag` (fast parser vs TAGDSL_PARSER=lark),
  next to a bare `python -c pass` and the import of the lint path; once as
  the environment is (with PYTHONDONTWRITEBYTECODE=1 and an editable install
  every start compiles tagdsl's sources again) and once with a bytecode cache
  (PYTHONPYCACHEPREFIX in a temporary directory, warmed first), as an
  installed package runs.
Each figure is repeated; the table shows every run and the best.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def thousand_rules(n: int) -> str:
    # bench/run.py owns the generator; load it without running its main().
    spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE))
    spec.loader.exec_module(module)
    return module.thousand_rules(n)


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def row(name: str, times: list[float]) -> str:
    return f"{name:<52} best {min(times):7.3f}s   runs " + " ".join(f"{t:.3f}" for t in times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rules", type=int, default=1000)
    args = ap.parse_args(argv)

    text = thousand_rules(args.rules)
    workdir = Path(tempfile.mkdtemp(prefix="tagdsl-lint-speed-"))
    try:
        (workdir / "tagdsl.toml").write_text('[project]\nplatform = "wecom"\nrulesets = ["rules.tag"]\n',
                                             encoding="utf-8")
        rules = workdir / "rules.tag"
        rules.write_text(text, encoding="utf-8")

        # Subprocesses first, while this process has imported nothing heavy.
        tagdsl_exe = shutil.which("tagdsl") or str(Path(sys.executable).with_name("tagdsl"))
        lark_env = dict(os.environ, TAGDSL_PARSER="lark")
        pyc_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        pyc_env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")

        # What `tagdsl lint` imports: the CLI, the loader, the check passes and the report.
        lint_imports = ("import cli, tagdsl.loader, tagdsl.report, tagdsl.check.resolve, tagdsl.check.names, "
                        "tagdsl.check.limits, tagdsl.check.graph, tagdsl.check.privacy, tagdsl.check.logic")

        def run(cmd, env=None):
            proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
            if proc.returncode not in (0, 1):
                raise SystemExit(f"{cmd} failed ({proc.returncode}): {proc.stderr.strip()}")

        sub = {
            "python -c pass": lambda: run([sys.executable, "-c", "pass"]),
            "import what lint imports": lambda: run([sys.executable, "-c", lint_imports]),
            "`tagdsl lint rules.tag` (fast parser)": lambda: run([tagdsl_exe, "lint", "rules.tag"]),
            "`tagdsl lint rules.tag` (TAGDSL_PARSER=lark)": lambda: run([tagdsl_exe, "lint", "rules.tag"], lark_env),
            "with a bytecode cache: python -c pass": lambda: run([sys.executable, "-c", "pass"], pyc_env),
            "with a bytecode cache: import what lint imports": lambda: run([sys.executable, "-c", lint_imports], pyc_env),
            "with a bytecode cache: `tagdsl lint rules.tag`": lambda: run([tagdsl_exe, "lint", "rules.tag"], pyc_env),
        }
        run([tagdsl_exe, "lint", "rules.tag"], pyc_env)  # fills the bytecode cache
        sub_times = {name: [] for name in sub}
        for _ in range(args.repeat):  # interleaved, so load changes hit every variant alike
            for name, fn in sub.items():
                sub_times[name] += timed(fn, 1)

        from tagdsl import analyze, parser
        from tagdsl.check import check
        from tagdsl.config import load_config

        config = load_config(workdir / "tagdsl.toml")
        module, diagnostics = parser.parse_text(text, "rules.tag")
        assert not diagnostics, diagnostics

        def with_parser(fast: bool, fn):
            def go():
                saved = parser.USE_FAST_PARSER
                parser.USE_FAST_PARSER = fast
                try:
                    return fn()
                finally:
                    parser.USE_FAST_PARSER = saved
            return go

        parse = lambda: parser.parse_text(text, "rules.tag")  # noqa: E731
        lint = lambda: analyze([rules], config)  # noqa: E731
        inproc = {
            "parse (fast parser)": with_parser(True, parse),
            "parse (Lark only)": with_parser(False, parse),
            "checks (tagdsl.check.check)": lambda: check([module], config),
            "tagdsl.analyze (fast parser)": with_parser(True, lint),
            "tagdsl.analyze (Lark only)": with_parser(False, lint),
        }
        in_times = {name: [] for name in inproc}
        for _ in range(args.repeat):
            for name, fn in inproc.items():
                in_times[name] += timed(fn, 1)
        analysis = lint()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"generated ruleset: {args.rules:,} rules, {len(text):,} characters; "
          f"{len(analysis.errors)} errors, {len(analysis.warnings)} warnings")
    print("\nin process (warm: after a first run)")
    for name, times in in_times.items():
        print(row(name, times))
    print("\nsubprocess (wall, including interpreter start)")
    for name, times in sub_times.items():
        print(row(name, times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
