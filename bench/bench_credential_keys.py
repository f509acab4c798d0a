"""What decrypting an HA1 costs a digest check (a micro-timing, not a load test).

    PYTHONPATH=. python bench/bench_credential_keys.py

Times, per call: ``KeySet.open`` of a sealed value alone (AES-256-GCM), the
key file's ``stat``-per-use check, and ``UserStore.ha1`` on SQLite with a
sealed value against the same read of a plain-text value.
"""

from __future__ import annotations

import tempfile
import timeit
from pathlib import Path

from sipshield.auth._digest import compute_ha1
from sipshield.auth._keys import KeyFile, KeySet
from sipshield.auth._users import UserStore


def per_call(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        store = UserStore(f"sqlite:///{data / 'u.db'}", keys=KeyFile(data / "credential.keys"))
        store.create_schema()
        store.add("alice", "example.com", "a-long-password")
        keys = store.keys.require()
        sealed = keys.seal(compute_ha1("SHA-256", "alice", "example.com", "a-long-password"), "alice", "example.com", "SHA-256")
        print(f"KeySet.open (AES-256-GCM decrypt):   {per_call(lambda: keys.open(sealed, 'alice', 'example.com', 'SHA-256'), 20000):7.1f} us")
        print(f"KeyFile.load (stat, cached keys):    {per_call(store.keys.load, 20000):7.1f} us")
        encrypted = per_call(lambda: store.ha1("alice", "example.com", "SHA-256"), 2000)
        store.keys.update(lambda k: KeySet(k.keys, k.current, accept_plaintext=True))  # then a plain-text row, as before encryption
        with store._live_engine().begin() as conn:
            conn.execute(store.credentials.update().values(ha1=compute_ha1("SHA-256", "alice", "example.com", "a-long-password")))
        plain = per_call(lambda: store.ha1("alice", "example.com", "SHA-256"), 2000)
        print(f"UserStore.ha1, encrypted value:      {encrypted:7.1f} us")
        print(f"UserStore.ha1, plain-text value:     {plain:7.1f} us")
        store.close()


if __name__ == "__main__":
    main()
