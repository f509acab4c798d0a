"""A network namespace of the test's own, for tests that change the kernel's
packet filter (nftables) without touching the machine's.

``network_namespace()`` creates one (``ip netns add``) with its loopback up
and nft working inside, or skips with the reason (failing under CI=true, as
``conftest.require_tool`` does); it is deleted when the test ends.
``inside(name)`` moves the calling thread into it for a moment: a socket
created there stays there (Linux binds a socket to the namespace it was made
in), so the test talks to a server in the namespace from its own process.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import IN_CI, require_tool

CLONE_NEWNET = 0x40000000


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (required under CI=true)")
    pytest.skip(message)


@contextmanager
def network_namespace() -> Iterator[str]:
    """The name of a fresh namespace (lo up, nft usable in it); deleted after."""
    require_tool("nft", "nftables")
    ip = require_tool("ip", "iproute2")
    name = f"sipshield-test-{os.getpid()}-{secrets.token_hex(3)}"
    made = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        _unavailable(f"cannot create a network namespace (ip netns add: {made.stderr.strip()}): needs root or CAP_SYS_ADMIN")
    try:
        for command in (["ip", "link", "set", "lo", "up"], ["nft", "list", "ruleset"]):
            ran = run_in(name, *command)
            if ran.returncode != 0:
                _unavailable(f"{' '.join(command)} fails inside a network namespace: {ran.stderr.strip()}")
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], capture_output=True, timeout=30)


def run_in(namespace: str, *command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """*command* run inside *namespace*."""
    return subprocess.run(["ip", "netns", "exec", namespace, *command], input=stdin, capture_output=True, text=True, timeout=30)


def nft_json(namespace: str, *what: str) -> list[dict[str, Any]]:
    """``nft -j list WHAT`` inside *namespace*: its objects (sets, rules...)."""
    ran = run_in(namespace, "nft", "-j", "list", *what)
    assert ran.returncode == 0, ran.stderr
    return [item for item in json.loads(ran.stdout)["nftables"] if "metainfo" not in item]


def set_elements(namespace: str, table: str, set_name: str) -> dict[str, int]:
    """Each element of the set (an address, or ``network/len``) and its timeout in seconds."""
    (found,) = nft_json(namespace, "set", "inet", table, set_name)
    elements: dict[str, int] = {}
    for entry in found["set"].get("elem", []):
        elem = entry["elem"] if isinstance(entry, dict) and "elem" in entry else {"val": entry, "timeout": 0}
        value = elem["val"]
        if isinstance(value, dict) and "prefix" in value:
            value = f"{value['prefix']['addr']}/{value['prefix']['len']}"
        elements[str(value)] = int(elem.get("timeout", 0))
    return elements


def rule_counters(namespace: str, table: str, chain: str) -> dict[str, int]:
    """Packets counted by each rule of the chain, keyed ``ip udp``, ``ip6 tcp``..."""
    counters: dict[str, int] = {}
    for item in nft_json(namespace, "chain", "inet", table, chain):
        if "rule" not in item:
            continue
        exprs = item["rule"]["expr"]
        family = next(e["match"]["left"]["payload"]["protocol"] for e in exprs if "match" in e and e["match"]["left"].get("payload", {}).get("field") == "saddr")
        proto = next(e["match"]["left"]["payload"]["protocol"] for e in exprs if "match" in e and e["match"]["left"].get("payload", {}).get("field") == "dport")
        counters[f"{family} {proto}"] = next(e["counter"]["packets"] for e in exprs if "counter" in e)
    return counters


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    """The calling thread in *namespace* meanwhile (sockets made here stay in it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"/run/netns/{namespace}", "rb") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
