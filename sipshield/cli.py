"""The ``sipshield`` command: operator tools beside ``twistd sipshield``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sipshield.config import ConfigError

__all__ = ["main"]


def twistd_sees_plugin() -> bool:
    """True when twistd's plugin discovery finds the sipshield dropin."""
    from twisted.plugin import IPlugin, getPlugins

    import twisted.plugins

    return any(getattr(p, "tapname", None) == "sipshield" for p in getPlugins(IPlugin, twisted.plugins))


def _check_config(args: argparse.Namespace) -> int:
    from sipshield.tap import build_config

    try:
        config = build_config(args.file)
    except ConfigError as e:
        print(f"sipshield: {e}", file=sys.stderr)
        return 1
    where = config.source or "embedded default"
    listeners = ", ".join(lc.description for lc in config.server.listen)
    print(f"{where}: ok")
    print(f"  listeners: {listeners}")
    print(f"  domains: {', '.join(config.server.domains) or '(none: answers for its own addresses)'}")
    print(f"  data_dir: {config.server.data_dir}")
    if config.tls.certificate is None:
        print("  tls: self-signed certificate, generated in data_dir on first start")
    else:
        print(f"  tls: {config.tls.certificate}")
    if twistd_sees_plugin():
        print("  twistd plugin: visible")
    else:
        print(
            "  twistd plugin: NOT visible to twistd; install without -e, or regenerate the cache with\n"
            '    python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"'
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipshield", description="sipshield operator tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a configuration file without starting")
    check.add_argument("file", nargs="?", help="TOML file (the embedded default when omitted)")
    check.set_defaults(func=_check_config)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda args: print(__import__("sipshield").__version__) or 0)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
