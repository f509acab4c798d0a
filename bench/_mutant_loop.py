"""A pytest plugin for ``bench/mutation.py --rerun --in-process``: one pytest
session runs the collected tests once per mutant, in mutmut's ``mutants/``
tree, instead of one interpreter (and one slapd) per mutant.

mutmut's trampolines read ``MUTANT_UNDER_TEST`` at every call, so setting it
between runs switches the mutant.  After each mutant every fixture is torn
down (module-scoped servers included), so the next one starts from scratch;
a mutant stops at its first failing test.  Each result is a line
``NAME killed|survived`` appended to ``--mutants-out`` as soon as it is known,
so that a mutant that hangs until pytest-timeout ends the process can be
told from those done (the caller marks it killed and starts again after it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from _pytest.runner import runtestprotocol


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--mutants-in", help="file of mutant names, one a line")
    parser.addoption("--mutants-out", help="file the results are appended to")


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: Any) -> bool:
    names = Path(session.config.getoption("mutants_in")).read_text().split()
    out = Path(session.config.getoption("mutants_out"))
    items = session.items
    for name in names:
        os.environ["MUTANT_UNDER_TEST"] = name
        killed = False
        for index, item in enumerate(items):
            last = index + 1 == len(items)
            reports = runtestprotocol(item, nextitem=None if last else items[index + 1], log=False)
            if any(report.failed for report in reports):
                killed = True
                if not last:
                    session._setupstate.teardown_exact(None)
                break
        with out.open("a") as f:
            f.write(f"{name} {'killed' if killed else 'survived'}\n")
    os.environ.pop("MUTANT_UNDER_TEST", None)
    return True
