"""sipshield's plugin package (Twisted's "alternate plugin packages").

Built-in stages and stores live here as twisted.plugin providers; other
installed packages can add modules to ``sipshield/plugins/`` (no
``__init__.py`` of their own), or be named in ``[server] plugins``.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
