"""The backend registry: a pluggy manager, built-ins first, then entry points one at a time.

A plugin that fails to import, or whose hook raises, is recorded as broken (name and error) and
listed as an unavailable backend; it never stops the other backends from loading.
"""

from __future__ import annotations

import importlib.metadata
import threading
import traceback
from dataclasses import dataclass

import pluggy

from . import hookspecs
from .contract import Backend, BackendInfo, BackendUnavailable

ENTRY_POINT_GROUP = "specsample.backends"


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin whose import or registration raised."""

    name: str
    error: str
    traceback: str


class Registry:
    """Backends by name. Built lazily on first use; :func:`reset` rebuilds it (tests use this)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        self.backends: dict[str, type[Backend]] = {}
        self.plugin_of: dict[str, str] = {}
        self.broken: list[BrokenPlugin] = []
        self.instances: dict[str, Backend] = {}
        self.manager = pluggy.PluginManager("specsample")
        self.manager.add_hookspecs(hookspecs)

    def load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            import specsample.backends as builtin  # the built-ins, through the same hook

            self.manager.register(builtin, name="specsample")
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                if self.manager.has_plugin(ep.name):
                    continue
                try:
                    self.manager.register(ep.load(), name=ep.name)
                except Exception as exc:  # one broken plugin must not take the others down
                    self._record_broken(ep.name, exc)
            for impl in self.manager.hook.register_backends.get_hookimpls():
                try:
                    impl.function(register=lambda cls, _p=impl.plugin_name: self._add(cls, _p))
                except Exception as exc:
                    self._record_broken(impl.plugin_name, exc)
            self._loaded = True

    def _record_broken(self, plugin: str, exc: BaseException) -> None:
        self.broken.append(
            BrokenPlugin(plugin, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        )

    def _add(self, cls: type, plugin: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"register() takes a subclass of specsample.Backend, got {cls!r}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"backend class {cls.__qualname__} has no 'name'")
        if name in self.backends:
            raise ValueError(
                f"backend {name!r} from plugin {plugin!r} is already registered by plugin "
                f"{self.plugin_of[name]!r}"
            )
        self.backends[name] = cls
        self.plugin_of[name] = plugin

    def info(self, name: str) -> BackendInfo:
        cls = self.backends[name]
        try:
            available, reason = cls.is_available()
        except Exception as exc:  # a crashing availability check means "unavailable", with why
            available, reason = False, f"is_available() raised {type(exc).__name__}: {exc}"
        return BackendInfo(
            name=name,
            description=cls.description,
            available=bool(available),
            reason="" if available else str(reason),
            capabilities=cls.capabilities,
            plugin=self.plugin_of[name],
        )


_registry = Registry()


def _get_registry() -> Registry:
    _registry.load()
    return _registry


def reset() -> None:
    """Forget every loaded plugin; the next call loads them again (for tests and notebooks)."""
    global _registry
    _registry = Registry()


def list_backends(include_broken: bool = True) -> list[BackendInfo]:
    """Every registered backend, available or not, in registration order.

    With ``include_broken`` a plugin that failed to load appears as an unavailable backend named
    after its entry point, with the error as its reason.
    """
    reg = _get_registry()
    infos = [reg.info(name) for name in reg.backends]
    if include_broken:
        infos += [
            BackendInfo(b.name, "(plugin failed to load)", False, b.error, None, plugin=b.name)
            for b in reg.broken
        ]
    return infos


def broken_plugins() -> list[BrokenPlugin]:
    """Plugins whose import or hook raised, with their errors."""
    return list(_get_registry().broken)


def backend_class(name: str) -> type[Backend]:
    """The registered class of backend ``name`` (available or not)."""
    reg = _get_registry()
    if name not in reg.backends:
        known = ", ".join(sorted(reg.backends)) or "none"
        raise BackendUnavailable(name, f"no backend of that name is registered (known: {known})")
    return reg.backends[name]


def get_backend(name: str) -> Backend:
    """The backend called ``name``, ready to ``verify``. Instances are cached per name.

    Raises:
        BackendUnavailable: the name is unknown (the message lists the known names) or the backend
            is not available here (the message says why).
    """
    reg = _get_registry()
    if name in reg.instances:
        return reg.instances[name]
    cls = backend_class(name)
    info = reg.info(name)
    if not info.available:
        raise BackendUnavailable(name, info.reason)
    instance = cls()
    reg.instances[name] = instance
    return instance
