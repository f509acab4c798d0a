"""Finding pipeline stages: twisted.plugin discovery over sipshield.plugins
and the packages named in ``[server] plugins``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.plugin import getPlugins

from sipshield.config import ConfigError
from sipshield.interfaces import IPipelineStage, IStageFactory

if TYPE_CHECKING:
    from sipshield.environment import StageEnvironment

__all__ = ["StageFactory", "available_stages", "build_stages"]


class StageFactory:
    """A ready-made IStageFactory for plugin modules:
    ``mystage = StageFactory("name", "what it does", build_function)``.

    ``build_function(environment, options)`` returns the stage:
    ``environment`` is the service's StageEnvironment (sipshield.environment),
    ``options`` the stage's ``[stage.NAME]`` table.  A Router subclass is
    such a function.  Instances of this class provide IPlugin and
    IStageFactory.
    """

    def __init__(self, name: str, description: str, build: Callable[[StageEnvironment, dict[str, Any]], Any]) -> None:
        self.name = name
        self.description = description
        self._build = build

    def build(self, environment: StageEnvironment, options: dict[str, Any]) -> IPipelineStage:
        return self._build(environment, options)  # type: ignore[no-any-return]


def _declare() -> None:
    # Declared here, not at class creation, to keep zope's declaration next to
    # the import of twisted.plugin's IPlugin.
    from twisted.plugin import IPlugin
    from zope.interface import classImplements

    classImplements(StageFactory, IPlugin, IStageFactory)


_declare()


def available_stages(packages: Iterable[str] = ()) -> dict[str, IStageFactory]:
    """Every stage factory found, by name; later packages may not silently
    replace a built-in name (that would hide a security stage)."""
    import sipshield.plugins

    found: dict[str, IStageFactory] = {}
    modules: list[Any] = [sipshield.plugins]
    for name in packages:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as e:
            raise ConfigError(f"cannot import plugin package {name!r}: {e}", key="server.plugins") from None
    for module in modules:
        for factory in getPlugins(IStageFactory, module):
            if factory.name in found and found[factory.name] is not factory:
                raise ConfigError(f"two plugins name a stage {factory.name!r}", key="server.plugins")
            found[factory.name] = factory
    return found


def build_stages(names: Iterable[str], environment: StageEnvironment, packages: Iterable[str] = (), options: dict[str, dict[str, Any]] | None = None) -> list[IPipelineStage]:
    """Build the configured stages in order; an unknown name is a ConfigError
    listing the known ones."""
    factories = available_stages(packages)
    options = options or {}
    stages = []
    for name in names:
        factory = factories.get(name)
        if factory is None:
            known = ", ".join(sorted(factories))
            raise ConfigError(f"unknown stage {name!r} (known: {known})", key="pipeline.stages")
        stages.append(factory.build(environment, options.get(name, {})))
    return stages
