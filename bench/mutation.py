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

It prints the score (killed / all, per file) and every surviving mutant
with its diff, and writes the same to ``mutation-report.txt`` in the
workdir.  docs/development.md records the last run and which survivors are
security decisions.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="files to mutate (default: the security-decision modules)")
    parser.add_argument("--all", action="store_true", help="mutate sipshield/auth, proxy and transport")
    parser.add_argument("--workdir", type=Path, help="where to copy the tree (default: a new temporary directory)")
    parser.add_argument("--max-children", default=str(max(1, (os.cpu_count() or 2) - 1)), help="parallel mutant runs")
    options = parser.parse_args()
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
