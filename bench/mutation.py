"""Mutation testing of the security layers with mutmut 3 (a bench, not CI).

    pip install 'mutmut>=3.3,<4'
    python bench/mutation.py                 # the security-decision modules (about 10 minutes)
    python bench/mutation.py --all           # sipshield/auth, proxy, transport (much longer)
    python bench/mutation.py sipshield/proxy/_response.py ...   # these files only

mutmut mutates a copy of the tree, so the checkout is never touched: this
script copies the tracked and untracked-but-not-ignored files into
``--workdir`` (default: a fresh temporary directory), writes the
``[tool.mutmut]`` table there, and runs ``mutmut run`` in it.  The runner is
the fast unit tests only: mutmut runs pytest several times in one process,
so the tests that drive the real reactor through pytest-twisted (it cannot
be restarted), the two that run the CLI or pytest in a subprocess, and the
end-to-end tests are left out; so is the PYTHONPATH, which would make the
tests import the unmutated tree.  The transport's decisions are scored
all the same: tests/unit drives the transports without a reactor
(StringTransport, MemoryReactorClock, TLS handshakes through memory BIOs).
On a shared machine: ``nice -n 10 ... --max-children 1``, one layer per run.

    python bench/mutation.py --workdir DIR --rerun tests/integration/test_ldap.py sipshield/auth/_ldap.py

runs the mutants that run left (of these files only, if named) against
other tests, one pytest subprocess each: tests the in-process runner cannot
hold (the LDAP tests drive a real slapd through pytest-twisted's reactor),
or new tests against the survivors of a run over the same source.

It prints the score (killed / all, per file) and every surviving mutant
with its diff, and writes the same to ``mutation-report.txt`` in the
workdir.  docs/development.md records the last run and which survivors are
security decisions.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SECURITY_MODULES = (
    "sipshield/auth/_stages.py",
    "sipshield/auth/_digest.py",
    "sipshield/auth/_nonce.py",
    "sipshield/proxy/_signer.py",
    "sipshield/proxy/_forward.py",
)
ALL_LAYERS = ("sipshield/auth/*", "sipshield/proxy/*", "sipshield/transport/*")


# They run `python -m sipshield.cli` or pytest itself in a subprocess, which
# cannot import mutmut's trampolined copy outside its runner.
_SUBPROCESS_TESTS = ("tests/unit/test_cli_user.py", "tests/unit/test_ci_skips.py")


def fast_unit_tests() -> list[str]:
    """tests/unit files that mutmut can run in-process (no pytest-twisted reactor, no CLI subprocess)."""
    return sorted(
        name
        for name in (str(path.relative_to(ROOT)) for path in (ROOT / "tests" / "unit").glob("test_*.py"))
        if name not in _SUBPROCESS_TESTS and "pytest_twisted" not in (ROOT / name).read_text()
    )


def copy_tree(workdir: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            target = workdir / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def toml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def configure(workdir: Path, modules: tuple[str, ...], tests: list[str]) -> None:
    pyproject = workdir / "pyproject.toml"
    text = pyproject.read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml already has [tool.mutmut]: this script writes its own")
    pyproject.write_text(
        text
        + "\n[tool.mutmut]\n"
        + 'source_paths = ["sipshield/"]\n'
        # what the tests read besides tests/ (mutmut copies that itself)
        + 'also_copy = ["examples/", "docs/", "twisted/", "README.md", "setup.cfg"]\n'
        + f"only_mutate = {toml_list(modules)}\n"
        + f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        # pytest-twisted would start the reactor in each of mutmut's pytest runs.
        + 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:twisted", "-q"]\n'
    )


def mutmut(workdir: Path, *args: str, log: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-m", "mutmut", *args]
    if log is None:
        return subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True, text=True).stdout
    with log.open("w") as out:
        subprocess.run(command, cwd=workdir, env=env, check=True, stdout=out, stderr=subprocess.STDOUT)
    return ""


# a status may be two words ("no tests"): those mutants count in the total, not as killed
_RESULT = re.compile(r"^\s*(\S+): (\S.*?)\s*$")


def report(workdir: Path) -> str:
    rows = [m.groups() for m in map(_RESULT.match, mutmut(workdir, "results", "--all", "true").splitlines()) if m]
    by_file: dict[str, Counter[str]] = {}
    for name, status in rows:
        module = name.split(".x", 1)[0]
        by_file.setdefault(module, Counter())[status] += 1
    lines = ["mutation score (killed / all):"]
    total = Counter(status for _, status in rows)
    for module, counts in sorted(by_file.items()):
        lines.append(f"  {module}: {counts['killed']} / {sum(counts.values())}  {dict(counts)}")
    lines.append(f"  all: {total['killed']} / {sum(total.values())}  {dict(total)}")
    survivors = [name for name, status in rows if status != "killed"]
    lines.append(f"\n{len(survivors)} not killed:")
    for name in survivors:
        lines.append(mutmut(workdir, "show", name))
    return "\n".join(lines)


def _module_of(name: str) -> str:
    return name.split(".x", 1)[0]


def _rerun_in_process(mutants: Path, todo: list[str], tests: list[str], timeout: float, env: dict[str, str]) -> dict[str, str]:
    """The mutants of *todo* in one pytest session (bench/_mutant_loop.py),
    after a control run without any mutant that must pass; a session that
    ends early (a mutant hung past *timeout* seconds per test, or crashed
    the interpreter) marks the mutant it was on killed and starts again
    after it."""
    shutil.copy2(ROOT / "bench" / "_mutant_loop.py", mutants / "_mutant_loop.py")
    names, out = mutants / "mutants-in.txt", mutants / "mutants-out.txt"
    results: dict[str, str] = {}
    # Twice without a mutant: the tests must pass, and pass again in the same
    # process (a test that changes its own parameters would fail every mutant after).
    controls = ["control-no-mutant", "control-no-mutant-again"]
    left = [*controls, *todo]
    while left:
        names.write_text("\n".join(left) + "\n")
        out.write_text("")
        plugin = ["-p", "_mutant_loop", "-o", f"timeout={timeout:g}", "--mutants-in", str(names), "--mutants-out", str(out)]
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, *tests]
        subprocess.run(command, cwd=mutants, env=env, capture_output=True)
        done = dict(line.split() for line in out.read_text().splitlines())
        if left[0] in controls and [done.pop(c, "killed") for c in controls] != ["survived", "survived"]:
            raise SystemExit(f"without any mutant, the tests fail (or fail when run again in one process) in {mutants}: {' '.join(tests)}")
        results.update(done)
        left = [name for name in left if name not in done and name not in controls]
        if left:
            results[left.pop(0)] = "killed"  # the session ended on it: a hang or a crash
        print(f"{len(results)}/{len(todo)} mutants run", flush=True)
    return results


def rerun(workdir: Path, modules: tuple[str, ...], tests: list[str], timeout: float, only: list[str] | None = None, in_process: bool = False) -> str:
    """Run every mutant of an earlier run (in *workdir*) that it did not kill
    against *tests*, one pytest subprocess per mutant in mutmut's own
    ``mutants/`` tree (its trampolines, ``MUTANT_UNDER_TEST`` naming the
    mutant).  For tests the in-process runner cannot hold (pytest-twisted's
    reactor, a slapd: tests/integration/test_ldap.py) and for new tests
    against the survivors of a run over unchanged source.  The checkout's
    tests/ are copied in first.  A mutant is killed when pytest fails or runs
    past *timeout* seconds.  *only*: mutant name patterns (fnmatch), run
    in that order (the security decisions of a module first, say)."""
    mutants = workdir / "mutants"
    shutil.copytree(ROOT / "tests", mutants / "tests", dirs_exist_ok=True)
    wanted = {m.removesuffix(".py").replace("/", ".") for m in modules}
    rows = [m.groups() for m in map(_RESULT.match, mutmut(workdir, "results", "--all", "true").splitlines()) if m]
    todo = [name for name, status in rows if status != "killed" and (not wanted or _module_of(name) in wanted)]
    if only:
        todo = list(dict.fromkeys(name for pattern in only for name in todo if fnmatch.fnmatchcase(name, pattern)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    killed: list[str] = []
    survived: list[str] = []
    if in_process:
        results = _rerun_in_process(mutants, todo, tests, timeout, env)
    else:
        results = {}
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        for index, name in enumerate(todo, 1):
            try:
                code = subprocess.run(command, cwd=mutants, env={**env, "MUTANT_UNDER_TEST": name}, capture_output=True, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = -1
            results[name] = "killed" if code != 0 else "survived"
            print(f"[{index}/{len(todo)}] {name}: {results[name]}", flush=True)
    for name in todo:
        (killed if results[name] == "killed" else survived).append(name)
    total = Counter(_module_of(name) for name, _ in rows if not wanted or _module_of(name) in wanted)
    before = Counter(_module_of(name) for name, status in rows if status == "killed" and (not wanted or _module_of(name) in wanted))
    now = before + Counter(_module_of(name) for name in killed)
    lines = [f"re-run of {len(todo)} mutants not killed, against {' '.join(tests)}: killed / all, before -> after:"]
    for module in sorted(total):
        lines.append(f"  {module}: {before[module]} -> {now[module]} / {total[module]}")
    lines.append(f"\n{len(survived)} still not killed:")
    for name in survived:
        lines.append(mutmut(workdir, "show", name))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="files to mutate (default: the security-decision modules)")
    parser.add_argument("--all", action="store_true", help="mutate sipshield/auth, proxy and transport")
    parser.add_argument("--workdir", type=Path, help="where to copy the tree (default: a new temporary directory)")
    parser.add_argument("--max-children", default=str(max(1, (os.cpu_count() or 2) - 1)), help="parallel mutant runs")
    parser.add_argument("--rerun", nargs="+", metavar="TEST", help="no new run: the mutants --workdir's run left, against these test files")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant with --rerun")
    parser.add_argument("--in-process", action="store_true", help="with --rerun: one pytest session for all mutants (bench/_mutant_loop.py)")
    parser.add_argument("--only", nargs="+", metavar="PATTERN", help="with --rerun: only mutants matching these names (fnmatch), in this order")
    options = parser.parse_args()
    if options.rerun:
        if options.workdir is None or not (options.workdir / "mutants").is_dir():
            raise SystemExit("--rerun needs the --workdir of an earlier run")
        text = rerun(options.workdir, tuple(options.modules), options.rerun, options.timeout, options.only, options.in_process)
        (options.workdir / "rerun-report.txt").write_text(text + "\n")
        print(text)
        return
    modules = tuple(options.modules) or (ALL_LAYERS if options.all else SECURITY_MODULES)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="sipshield-mutation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    copy_tree(workdir)
    configure(workdir, modules, fast_unit_tests())
    print(f"mutating {', '.join(modules)} in {workdir} (progress: {workdir / 'mutmut.log'})", flush=True)
    mutmut(workdir, "run", "--max-children", options.max_children, log=workdir / "mutmut.log")
    text = report(workdir)
    (workdir / "mutation-report.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
