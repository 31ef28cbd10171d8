"""The backend registry: a pluggy manager, the built-ins first and complete, then each installed
third-party plugin on its own.

Rules a plugin cannot get around:

- The built-in backends register before any third-party code runs, by calling their hook directly
  (so ``tryfirst``/``trylast`` on a plugin's hook changes nothing), and their names are reserved:
  a plugin that registers one is recorded as broken and none of its backends are kept.
- A plugin loads completely or not at all. Its import, its hook validation (a ``@hookimpl``
  function must match a hookspec: a misspelled hook name is an error, not zero backends) and its
  ``register_backends`` call are each contained: an exception of any kind other than
  ``KeyboardInterrupt`` (``SystemExit`` and ``GeneratorExit`` included) marks that plugin broken,
  with the error, and the next plugin loads as if nothing happened.
- ``SPECSAMPLE_PLUGINS`` selects which installed plugins load: unset loads all of them, a
  comma-separated list of entry-point names loads only those, and an empty string loads none (the
  built-ins always load). ``specsample --plugins a,b COMMAND`` sets it for one command.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .contract import Backend, BackendInfo, BackendUnavailable, Capabilities

ENTRY_POINT_GROUP = "specsample.backends"
PLUGINS_ENV = "SPECSAMPLE_PLUGINS"
BUILTIN_PLUGIN = "specsample"

# The built-in backends' names. Reserved even when a built-in fails to register here (a broken
# optional module must not let a plugin take its name).
RESERVED_NAMES = frozenset(
    ("torch-loop", "torch-vectorized", "torch-compile", "cuda-cpp", "triton", "cupy")
)


class UnknownBackend(BackendUnavailable):
    """Raised by :func:`get_backend`/:func:`backend_class` for a name no plugin registered.

    A subclass of :class:`BackendUnavailable`, so ``except BackendUnavailable`` still catches it;
    catch this one to tell "no such backend" from "known, but cannot run here".
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.args = (f"unknown backend {name!r}: {reason}",)


class PluginError(Exception):
    """Why one plugin was rejected (its message becomes the plugin's ``error``)."""


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not load: its entry-point name, the error in one line, the traceback."""

    name: str
    error: str
    traceback: str


def plugin_allowlist(value: str | None = None) -> frozenset[str] | None:
    """The entry-point names ``SPECSAMPLE_PLUGINS`` (or ``value``) allows; None means all.

    ``""`` (or only commas and spaces) allows none.
    """
    if value is None:
        value = os.environ.get(PLUGINS_ENV)
    if value is None:
        return None
    return frozenset(v.strip() for v in value.split(",") if v.strip())


def _hook_names() -> list[str]:
    return [n for n, v in vars(hookspecs).items() if hasattr(v, "specsample_spec")]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class _Staged:
    """Backends one plugin registered during its hook call, kept only if the call succeeds."""

    plugin: str
    classes: list[type[Backend]] = field(default_factory=list)


class Registry:
    """Backends by name. Built lazily on first use; :func:`reset` rebuilds it (tests use this)."""

    def __init__(self, allow: frozenset[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._instance_lock = threading.RLock()
        self._loaded = False
        self.allow = allow
        self.backends: dict[str, type[Backend]] = {}
        self.plugin_of: dict[str, str] = {}
        self.broken: list[BrokenPlugin] = []
        self.disabled: list[str] = []  # installed, but left out by the allow-list
        self.instances: dict[str, Backend] = {}
        self.manager = pluggy.PluginManager("specsample")
        self.manager.add_hookspecs(hookspecs)

    # -- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            # Plugin objects registered on ``manager`` by code before the first load (tests do
            # this) load after the installed ones, under the same rules.
            in_process = [
                (name, obj)
                for name, obj in self.manager.list_name_plugin()
                if name is not None and obj is not None
            ]
            for name, _ in in_process:
                self.manager.unregister(name=name)
            self._load_builtins()
            self._load_entry_points()
            for name, obj in in_process:
                self._load_plugin(name, lambda _obj=obj: _obj)
            self._loaded = True

    def _load_builtins(self) -> None:
        import specsample.backends as builtin

        self.manager.register(builtin, name=BUILTIN_PLUGIN)
        staged = _Staged(BUILTIN_PLUGIN)
        try:
            builtin.register_backends(register=lambda cls: self._stage(staged, cls))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a built-in failing is a bug, but must not hide the rest
            self._record_broken(BUILTIN_PLUGIN, _one_line(exc))
        for cls in staged.classes:  # the ones that registered before any failure
            self.backends[cls.name] = cls
            self.plugin_of[cls.name] = BUILTIN_PLUGIN

    def _load_entry_points(self) -> None:
        seen: dict[str, str] = {BUILTIN_PLUGIN: "specsample.backends"}
        installed: list[str] = []
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            installed.append(ep.name)
            if ep.name in seen:
                if seen[ep.name] != ep.value:
                    self._record_broken(
                        ep.name,
                        f"entry-point name {ep.name!r} ({ep.value}) is already taken by "
                        f"{seen[ep.name]}; plugin names must be unique",
                        with_traceback=False,
                    )
                continue
            seen[ep.name] = ep.value
            if self.allow is not None and ep.name not in self.allow:
                self.disabled.append(ep.name)
                continue
            self._load_plugin(ep.name, ep.load)
        if self.allow is not None:
            for name in sorted(self.allow - set(installed) - {BUILTIN_PLUGIN}):
                self._record_broken(
                    name,
                    f"named in {PLUGINS_ENV} but not installed (installed plugins: "
                    f"{', '.join(installed) or 'none'})",
                    with_traceback=False,
                )

    def _load_plugin(self, name: str, load: Callable[[], Any]) -> None:
        """Import (``load()``), validate and call one plugin; on any failure record it broken and
        undo its registration."""
        try:
            module = load()
            self.manager.register(module, name=name)
            impls = self._validate(name, module)
            staged = _Staged(name)
            for impl in impls:
                kwargs = {"register": lambda cls, _s=staged: self._stage(_s, cls)}
                impl.function(*(kwargs[a] for a in impl.argnames))
            self._commit(staged)
        except KeyboardInterrupt:
            raise
        except PluginError as exc:
            self._record_broken(name, str(exc), with_traceback=False)
            self._unregister(name)
        except BaseException as exc:  # SystemExit, GeneratorExit, ... from a plugin: contained
            self._record_broken(name, _one_line(exc))
            self._unregister(name)

    def _validate(self, plugin: str, module: Any) -> list[Any]:
        """The plugin's ``register_backends`` hookimpls; PluginError for any hook that matches no
        hookspec (pluggy's ``check_pending``, for this plugin only) or a wrapper."""
        callers = self.manager.get_hookcallers(self.manager.get_plugin(plugin)) or []
        for caller in callers:
            if not caller.has_spec():
                hint = difflib.get_close_matches(caller.name, _hook_names(), n=1)
                raise PluginError(
                    f"hook {caller.name!r} matches no specsample hookspec"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                )
        impls = [
            impl
            for impl in self.manager.hook.register_backends.get_hookimpls()
            if impl.plugin_name == plugin
        ]
        if not impls:
            raise PluginError(
                f"defines no @hookimpl register_backends (module {getattr(module, '__name__', module)!r})"
            )
        for impl in impls:
            if impl.hookwrapper or impl.wrapper:
                raise PluginError("register_backends must be a plain @hookimpl, not a wrapper")
        return impls

    def _unregister(self, plugin: str) -> None:
        try:
            if self.manager.has_plugin(plugin):
                self.manager.unregister(name=plugin)
        except Exception:  # nothing more to undo
            pass

    def _stage(self, staged: _Staged, cls: Any) -> None:
        """``register(cls)`` as a plugin sees it: checks the class, keeps it for :meth:`_commit`."""
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise PluginError(f"register() takes a subclass of specsample.Backend, got {cls!r}")
        name = cls.__dict__.get("name", getattr(cls, "name", None))
        if not isinstance(name, str) or not name:
            raise PluginError(f"backend class {cls.__qualname__} has no 'name' string")
        if not isinstance(getattr(cls, "capabilities", None), Capabilities):
            raise PluginError(
                f"backend {name!r}: 'capabilities' must be a specsample.Capabilities, "
                f"got {type(getattr(cls, 'capabilities', None)).__name__}"
            )
        if staged.plugin != BUILTIN_PLUGIN and name in RESERVED_NAMES:
            raise PluginError(
                f"registers {name!r}, a reserved built-in backend name; choose another name"
            )
        if name in self.backends or any(c.name == name for c in staged.classes):
            owner = self.plugin_of.get(name, staged.plugin)
            raise PluginError(f"backend {name!r} is already registered by plugin {owner!r}")
        staged.classes.append(cls)

    def _commit(self, staged: _Staged) -> None:
        for cls in staged.classes:
            self.backends[cls.name] = cls
            self.plugin_of[cls.name] = staged.plugin

    def _record_broken(self, plugin: str, error: str, with_traceback: bool = True) -> None:
        tb = traceback.format_exc() if with_traceback else ""
        self.broken.append(BrokenPlugin(plugin, error, tb))

    # -- queries ---------------------------------------------------------------------------------

    def info(self, name: str) -> BackendInfo:
        cls = self.backends[name]
        try:
            available, reason = cls.is_available()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a crashing availability check means "unavailable", with why
            available, reason = False, f"is_available() raised {_one_line(exc)}"
        return BackendInfo(
            name=name,
            description=str(cls.description),
            available=bool(available),
            reason="" if available else str(reason),
            capabilities=cls.capabilities,
            plugin=self.plugin_of[name],
        )

    def not_registered(self, name: str) -> BackendUnavailable:
        """The error for a name no plugin registered, with everything that could explain it.

        A broken plugin's entry-point name (listed as an unavailable backend by
        :func:`list_backends`) gives :class:`BackendUnavailable` with the plugin's load error;
        any other name gives :class:`UnknownBackend`.
        """
        for b in self.broken:
            if b.name == name:
                return BackendUnavailable(name, f"plugin {name!r} failed to load: {b.error}")
        known = ", ".join(sorted(self.backends)) or "none"
        reason = f"no backend of that name is registered (known: {known})"
        if self.broken:
            reason += "; plugins that failed to load: " + "; ".join(
                f"{b.name} ({b.error})" for b in self.broken
            )
        if self.disabled:
            reason += f"; installed plugins left out by {PLUGINS_ENV}: {', '.join(self.disabled)}"
        return UnknownBackend(name, reason)


_registry = Registry(plugin_allowlist())
_registry_lock = threading.Lock()


def _get_registry() -> Registry:
    reg = _registry
    reg.load()
    return reg


def reset() -> None:
    """Forget every loaded plugin; the next call loads them again, reading ``SPECSAMPLE_PLUGINS``
    anew (for tests, notebooks and the ``--plugins`` option)."""
    global _registry
    with _registry_lock:
        _registry = Registry(plugin_allowlist())


def list_backends(include_broken: bool = True) -> list[BackendInfo]:
    """Every registered backend, available or not, in registration order (built-ins first).

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
    """Plugins that could not load (import, hook validation or registration failed), with why."""
    return list(_get_registry().broken)


def disabled_plugins() -> list[str]:
    """Installed plugins (entry-point names) that ``SPECSAMPLE_PLUGINS`` left out."""
    return list(_get_registry().disabled)


def backend_class(name: str) -> type[Backend]:
    """The registered class of backend ``name`` (available or not).

    Raises:
        UnknownBackend: no plugin registered ``name``; the message lists the known names and any
            plugin that failed to load (with its error) or was left out by ``SPECSAMPLE_PLUGINS``.
        BackendUnavailable: ``name`` is the entry-point name of a plugin that failed to load; the
            message holds its error.
    """
    reg = _get_registry()
    if name not in reg.backends:
        raise reg.not_registered(name)
    return reg.backends[name]


def get_backend(name: str) -> Backend:
    """The backend called ``name``, ready to ``verify``. One instance per name, also when several
    threads ask at once.

    Raises:
        UnknownBackend: the name is unknown (see :func:`backend_class`).
        BackendUnavailable: the backend is registered but cannot run here (the message says why).
    """
    reg = _get_registry()
    instance = reg.instances.get(name)
    if instance is not None:
        return instance
    cls = backend_class(name)
    with reg._instance_lock:
        instance = reg.instances.get(name)
        if instance is not None:
            return instance
        info = reg.info(name)
        if not info.available:
            raise BackendUnavailable(name, info.reason)
        instance = cls()
        reg.instances[name] = instance
    return instance
