"""An engine on vLLM's in-process asynchronous engine (``AsyncLLM``)."""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from attrs import define, field

from .._errors import ConfigError, ContextLengthError, EngineError, MissingExtraError
from .._io import prompt_token_ids
from .._logging import get_logger
from .._streams import iterate
from .._tools import CallReader, Tool, calls_grammar
from .._types import ChatRequest, Completion, Delta, Message, Sample, TokenLogprob, Usage
from ._base import Engine, EngineStream, StreamItem

__all__ = ("VLLMEngine", "check_model")


CPU_KV_CACHE_BYTES = 1 << 30
"""The KV cache a CPU engine gets when none is configured (vLLM would otherwise claim most of memory)."""

STRUCTURED_OUTPUTS = {"backend": "guidance", "disable_any_whitespace": True}
"""The structured-outputs settings an engine gets when none are configured: llguidance (it takes any
JSON schema, and honours the whitespace rule), and compact JSON with no whitespace between tokens."""


def _cpu_needs_kv_cache_size(vllm: Any, engine_args: dict[str, Any]) -> bool:
    if "kv_cache_memory_bytes" in engine_args or os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return False
    return bool(vllm.platforms.current_platform.is_cpu())


def _import_vllm() -> Any:
    try:
        import vllm
        import vllm.config
        import vllm.v1.engine.async_llm
    except ImportError as exc:
        raise MissingExtraError(
            "VLLMEngine (vllm on a GPU machine, or cpu for the CPU build)", "vllm", exc.name or "vllm"
        ) from exc
    return vllm


def _looks_local(model: str) -> bool:
    """A folder path rather than a hub name (``org/name`` or ``name``)."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or Path(model).expanduser().exists()


def check_model(model: str) -> None:
    """Fail at once, with what to do, when ``model`` cannot be loaded from this machine.

    A folder must hold a ``config.json``. A hub name must be in the local Hugging Face cache, or the hub
    must be reachable (when ``HF_HUB_OFFLINE`` is not set): vLLM would otherwise spend half a minute on
    retries before failing with a message about repository names.

    Raises:
        ConfigError: No model at that path, or a hub model that is neither cached nor reachable.
    """
    if _looks_local(model):
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            why = "no config.json" if folder.is_dir() else "no such folder"
            raise ConfigError(f"no model at {model} ({why})")
        return
    try:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:  # vLLM brings it; without it vLLM reports the problem itself
        return
    if isinstance(huggingface_hub.try_to_load_from_cache(model, "config.json"), str):
        return
    cache = constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            f"model {model} is not on this machine: it is neither a folder nor in the Hugging Face cache "
            f"({cache}), and HF_HUB_OFFLINE is set",
        )
    try:
        huggingface_hub.model_info(model, timeout=10)
    except HfHubHTTPError:
        return  # the hub answered: vLLM downloads it, or says why not (a gated or private model)
    except Exception as exc:
        raise ConfigError(
            f"model {model} is not on this machine (not a folder, not in the Hugging Face cache at {cache}) "
            f"and the hub cannot be reached ({type(exc).__name__}: {exc}); download it first or give the "
            "path of a model folder",
        ) from None


def _offered(request: ChatRequest) -> tuple[Tool, ...]:
    """The tools the prompt shows the model: none when ``tool_choice`` is ``"none"``."""
    return request.tools if request.tool_choice.mode != "none" else ()


def _reader(request: ChatRequest) -> CallReader:
    """Reads a sample's ``<tool_call>`` tags (constrained to them when a call is required)."""
    return CallReader(request.tools, request.tool_choice)


def _structured_outputs(vllm: Any, request: ChatRequest) -> Any:
    """The structured-output parameters of vLLM for a request (None: free text).

    A required tool call (``tool_choice`` ``"required"`` or a named function) is constrained to
    :func:`~aftlib._tools.calls_grammar` (free text, then tagged calls valid for the tools; a Lark
    grammar, which needs the default llguidance backend); else the response format, if any.

    Raises:
        ConfigError: The request asks for both a response format and a required tool call.
    """
    fmt = request.sampling.response_format
    params = vllm.sampling_params.StructuredOutputsParams
    if request.tools and request.tool_choice.must_call:
        if fmt is not None:
            raise ConfigError(
                "a request cannot both require a tool call and a response_format: the answer is the call",
                path="response_format",
            )
        return params(grammar=calls_grammar(request.tools, request.tool_choice))
    if fmt is None:
        return None
    if fmt.type == "json_object":
        return params(json_object=True)
    return params(json=fmt.schema)


def _logprobs(token_ids: Sequence[int], positions: Any, k: int | None) -> tuple[TokenLogprob, ...] | None:
    """Log probabilities from vLLM's, or None when none were asked for.

    vLLM gives, per position, ``{token id: Logprob}`` holding the ``k`` most likely tokens (ranks 1..k)
    and the generated one (whatever its rank).
    """
    if positions is None or k is None:
        return None
    out = []
    for chosen, entries in zip(token_ids, positions, strict=False):
        ranked = sorted(
            (e for e in entries.values() if e.rank is not None and e.rank <= k), key=lambda e: e.rank
        )
        mine = entries[chosen]
        top = [(e.decoded_token or "", e.logprob) for e in ranked]
        out.append(TokenLogprob(mine.decoded_token or "", mine.logprob, top))
    return tuple(out)


def _build_llm(vllm: Any, args: Any) -> Any:
    return vllm.v1.engine.async_llm.AsyncLLM.from_engine_args(args)


_RenderKey = tuple[tuple[Message, ...], tuple[Tool, ...]]
"""A rendering's key: the messages and the tools shown."""


@define(eq=False)
class _Renders:
    """Recent prompt renderings keyed by their messages, shared by the loop and worker threads.

    ``tokenizing`` is held while the tokenizer works: a Hugging Face tokenizer is not safe to use from
    two threads at once.
    """

    size: int = 256
    tokenizing: threading.Lock = field(factory=threading.Lock)
    _items: OrderedDict[_RenderKey, tuple[int, ...]] = field(factory=OrderedDict)
    _lock: threading.Lock = field(factory=threading.Lock)

    def get(self, key: _RenderKey) -> tuple[int, ...] | None:
        with self._lock:
            ids = self._items.get(key)
            if ids is not None:
                self._items.move_to_end(key)
            return ids

    def put(self, key: _RenderKey, ids: tuple[int, ...]) -> None:
        with self._lock:
            self._items[key] = ids
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@define(eq=False, init=False)
class VLLMEngine(Engine):
    """A model served in this process by vLLM's ``AsyncLLM``.

    The chat template of the model renders each request once; the prompt goes to vLLM as token ids (so
    the BOS token is never doubled). The ``n`` samples of a request share one prefill in one engine
    request. Generation stops at the tokenizer's EOS token, as well as at the model's own stop tokens.
    Closing a stream early, or cancelling its consumer, aborts the request inside the engine.

    Args:
        model: A model folder, or a model name that vLLM resolves (set ``HF_HUB_OFFLINE=1`` to make sure
            nothing is downloaded).
        name: A label for logs and results; the model by default.
        lora_adapters: LoRA adapters to serve on this base model, ``{name: adapter folder}``; agents
            pick one by name (``Proposer(engine, lora="name")``). Turns on ``enable_lora``.
        **engine_args: Passed to vLLM's ``AsyncEngineArgs`` unchanged: ``dtype``, ``max_model_len``,
            ``gpu_memory_utilization``, ``kv_cache_memory_bytes``, ``tensor_parallel_size``, ``seed``,
            ``enforce_eager``, ``enable_lora``, ``max_num_seqs``, ... On a machine without a GPU, when
            neither ``kv_cache_memory_bytes`` nor ``VLLM_CPU_KVCACHE_SPACE`` is set, the KV cache is 1 GiB.
            ``scheduling_policy`` is ``"priority"`` unless given: vLLM runs each request by its
            :attr:`~aftlib.ChatRequest.priority` (a topology's later steps first, older records first);
            ``scheduling_policy="fcfs"`` serves requests in arrival order and ignores priorities.

    Example:
        >>> async with VLLMEngine(model="path/to/model", max_model_len=4096) as engine:  # doctest: +SKIP
        ...     completion = await engine.generate(request)
    """

    model: str
    engine_args: dict[str, Any]
    lora_adapters: dict[str, str] = field(factory=dict)
    scheduling_policy: str = "priority"
    _llm: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _max_model_len: int = field(default=0, repr=False)
    _renders: _Renders = field(factory=lambda: _Renders(), repr=False)
    _lora_ids: dict[tuple[str, str], int] = field(factory=dict, repr=False)

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        lora_adapters: Mapping[str, str] | None = None,
        **engine_args: Any,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model must be a non-empty string, got {model!r}", path="model")
        adapters = dict(lora_adapters or {})
        policy = engine_args.pop("scheduling_policy", "priority")
        if policy not in ("priority", "fcfs"):
            raise ConfigError(
                f"scheduling_policy is 'priority' or 'fcfs', got {policy!r}", path="scheduling_policy"
            )
        if adapters:
            engine_args.setdefault("enable_lora", True)
            engine_args.setdefault("max_loras", len(adapters))
        self.__attrs_init__(
            model=model,
            engine_args=engine_args,
            lora_adapters=adapters,
            scheduling_policy=policy,
            name=name or model,
        )

    def check_adapter(self, name: str) -> None:
        """Raise :class:`~aftlib.ConfigError` unless ``name`` is one of :attr:`lora_adapters`."""
        if name not in self.lora_adapters:
            known = ", ".join(self.lora_adapters) or "none (pass lora_adapters={name: path})"
            raise ConfigError(f"engine {self.name!r} has no LoRA adapter {name!r}; it has {known}")

    @property
    def llm(self) -> Any:
        """The underlying ``vllm.v1.engine.async_llm.AsyncLLM`` (after start)."""
        if self._llm is None:
            raise EngineError(f"engine {self.name!r} is not started: use 'async with engine:'")
        return self._llm

    @property
    def max_model_len(self) -> int:
        """The model's context length in tokens (after start)."""
        return self._max_model_len

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (after start)."""
        if self._tokenizer is None:
            raise EngineError(f"engine {self.name!r} is not started: use 'async with engine:'")
        return self._tokenizer

    async def start(self) -> None:
        """Load the model into a new ``AsyncLLM``; runs in a worker thread so the event loop stays free.

        The model is checked first (:func:`check_model`). A cancellation while the engine starts (Ctrl-C)
        takes effect once it is up, and then shuts it down: no engine process is left behind.
        """
        check_model(self.model)
        vllm = _import_vllm()
        engine_args = dict(self.engine_args)
        # Compact JSON under structured outputs: vLLM reads the whitespace rule from the engine's
        # config, not from the request, and a model that hesitates would fill max_tokens with spaces.
        outputs = engine_args.setdefault("structured_outputs_config", STRUCTURED_OUTPUTS)
        if isinstance(outputs, Mapping):  # vLLM's engine arguments take its config object
            engine_args["structured_outputs_config"] = vllm.config.StructuredOutputsConfig(**outputs)
        if _cpu_needs_kv_cache_size(vllm, engine_args):
            engine_args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        try:
            args = vllm.AsyncEngineArgs(
                model=self.model, scheduling_policy=self.scheduling_policy, **engine_args
            )
        except TypeError as exc:
            raise ConfigError(f"engine {self.name!r}: bad engine argument: {exc}") from None
        log = get_logger(__name__, engine=self.name)
        log.info("starting vLLM engine", model=self.model)
        try:
            with anyio.CancelScope(shield=True):  # the engine's processes must not be lost half-started
                llm = await anyio.to_thread.run_sync(_build_llm, vllm, args)
        except (OSError, ValueError) as exc:
            raise EngineError(f"engine {self.name!r} failed to load {self.model!r}: {exc}") from exc
        self._llm = llm
        try:
            await anyio.lowlevel.checkpoint()  # a cancellation that came while starting lands here
            self._tokenizer = llm.get_tokenizer()
            self._max_model_len = int(llm.model_config.max_model_len)
            if getattr(self._tokenizer, "chat_template", None) is None:
                raise ConfigError(f"model {self.model!r} has no chat template in its tokenizer")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        log.info("vLLM engine ready", max_model_len=self._max_model_len)

    async def aclose(self) -> None:
        """Shut the engine down and free its memory."""
        llm, self._llm = self._llm, None
        if llm is not None:
            # Stop reading the engine's outputs first: once its process is gone, the reader would log the
            # dead engine as an error. Shutting down waits for the processes: keep the event loop free.
            handler = getattr(llm, "output_handler", None)
            if handler is not None:
                handler.cancel()
            await anyio.to_thread.run_sync(llm.shutdown)
            # AsyncLLM.__del__ shuts down a second time, which fails noisily once the interpreter is
            # exiting; the engine is already down, so make that second call a no-op.
            llm.shutdown = lambda *args, **kwargs: None

    def prompt_token_ids(self, request: ChatRequest) -> list[int]:
        """Render ``request.messages`` (and its tools) with the model's chat template and tokenize it."""
        return self._render(request.messages, _offered(request))

    def _render(self, messages: Sequence[Message], tools: tuple[Tool, ...] = ()) -> list[int]:
        # An agent counts its prompt's tokens (to fit the context) right before sending it, and the
        # budget may render a few variants: recent renderings are kept, keyed by the messages.
        key = (tuple(messages), tools)
        ids = self._renders.get(key)
        if ids is None:
            with self._renders.tokenizing:
                ids = tuple(prompt_token_ids(self.tokenizer, messages, tools=tools))
            self._renders.put(key, ids)
        return list(ids)

    async def _prompt_ids(self, request: ChatRequest) -> list[int]:
        """The request's prompt tokens: from the recent renderings, else rendered in a worker thread."""
        if self._renders.get((tuple(request.messages), _offered(request))) is not None:
            return self.prompt_token_ids(request)
        return await anyio.to_thread.run_sync(self.prompt_token_ids, request)

    @property
    def supports_logprobs(self) -> bool:
        """True: vLLM gives the log probabilities of generated tokens and their top alternatives."""
        return True

    @property
    def supports_structured_outputs(self) -> bool:
        """True: vLLM's structured outputs constrain decoding to a JSON object or schema."""
        return True

    @property
    def supports_priority(self) -> bool:
        """True unless the engine was made with ``scheduling_policy="fcfs"``."""
        return self.scheduling_policy == "priority"

    @property
    def capacity(self) -> int | None:
        """The sequences one batch runs: vLLM's ``max_num_seqs`` (after start)."""
        if self._llm is None:
            return None
        return int(self._llm.vllm_config.scheduler_config.max_num_seqs)

    @property
    def load(self) -> int:
        """Sequences in vLLM now, running or waiting (each of a request's ``n`` samples counts)."""
        return 0 if self._llm is None else int(self._llm.get_num_unfinished_requests())

    def _priority(self, request: ChatRequest) -> int:
        # An FCFS engine gets 0: vLLM ignores priorities then, but older releases refused them.
        return request.priority if self.supports_priority else 0

    @property
    def context_window(self) -> int | None:
        """The engine's ``max_model_len`` (after start)."""
        return self._max_model_len or None

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of ``messages`` after the chat template."""
        return len(self._render(messages))

    def text_tokens(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        with self._renders.tokenizing:
            ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of token ids."""
        with self._renders.tokenizing:
            text: str = self.tokenizer.decode(list(tokens))
        return text

    def _sampling_params(self, request: ChatRequest, prompt_len: int, *, streaming: bool) -> Any:
        vllm = _import_vllm()
        room = self._max_model_len - prompt_len
        if room < 1:
            raise ContextLengthError(
                f"engine {self.name!r}: the prompt has {prompt_len} tokens, "
                f"the model's context is {self._max_model_len}"
            )
        s = request.sampling
        eos = self.tokenizer.eos_token_id
        kinds = vllm.sampling_params.RequestOutputKind
        return vllm.SamplingParams(
            n=s.n,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=min(s.max_tokens, room),
            seed=s.seed,
            stop=list(s.stop) or None,
            stop_token_ids=[eos] if eos is not None else None,
            logprobs=s.logprobs,
            output_kind=kinds.DELTA if streaming else kinds.FINAL_ONLY,
            structured_outputs=_structured_outputs(vllm, request),
        )

    def _lora_request(self, name: str | None) -> Any:
        if name is None:
            return None
        self.check_adapter(name)
        from vllm.lora.request import LoRARequest

        # vLLM caches an adapter's weights by its number: each (name, folder) gets its own, for good, so
        # an adapter added later never takes the number (and the cached weights) of one removed
        key = (name, self.lora_adapters[name])
        number = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        return LoRARequest(name, number, key[1])

    async def generate(self, request: ChatRequest) -> Completion:
        """Generate ``request.sampling.n`` samples in one engine request, without streaming.

        vLLM returns only the finished samples, which spares this process the work of every token:
        what a dataset run wants when no one watches the tokens.
        """
        llm = self.llm
        prompt_ids = await self._prompt_ids(request)
        params = self._sampling_params(request, len(prompt_ids), streaming=False)
        k = request.sampling.logprobs
        lora = self._lora_request(request.lora)
        final = None
        outputs = llm.generate(
            {"prompt_token_ids": prompt_ids},
            params,
            uuid.uuid4().hex,
            lora_request=lora,
            priority=self._priority(request),
        )
        try:
            async with aclosing(outputs):
                async for output in outputs:
                    final = output
        except Exception as exc:
            raise EngineError(f"engine {self.name!r} failed: {exc!r}") from exc
        if final is None:
            raise EngineError(f"engine {self.name!r} returned no output")
        samples = []
        for o in sorted(final.outputs, key=lambda o: o.index):
            content, calls, error = _reader(request).read(o.text)
            entries = _logprobs(o.token_ids, o.logprobs, k)
            samples.append(Sample(o.index, content, o.finish_reason, len(o.token_ids), entries, calls, error))
        completion_tokens = sum(s.completion_tokens for s in samples)
        return Completion(samples, Usage(len(prompt_ids), completion_tokens, final.num_cached_tokens or 0, 1))

    def stream(self, request: ChatRequest) -> EngineStream:
        """Give text deltas as vLLM produces them, then the completion; leaving early aborts the request."""
        return iterate(self._stream(request))

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        llm = self.llm
        prompt_ids = await self._prompt_ids(request)
        params = self._sampling_params(request, len(prompt_ids), streaming=True)
        k = request.sampling.logprobs
        lora = self._lora_request(request.lora)
        request_id = uuid.uuid4().hex
        texts: dict[int, list[str]] = {i: [] for i in range(request.sampling.n)}
        tokens = dict.fromkeys(texts, 0)
        reasons: dict[int, str | None] = dict.fromkeys(texts)
        logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in texts}
        cached = 0
        readers = {i: _reader(request) for i in texts}  # tool calls are held back from the deltas
        outputs = llm.generate(
            {"prompt_token_ids": prompt_ids},
            params,
            request_id,
            lora_request=lora,
            priority=self._priority(request),
        )
        try:
            async with aclosing(outputs):
                async for output in outputs:
                    cached = output.num_cached_tokens or cached
                    for sample in output.outputs:
                        tokens[sample.index] += len(sample.token_ids)
                        new = _logprobs(sample.token_ids, sample.logprobs, k) or ()
                        logprobs[sample.index] += new
                        if sample.finish_reason is not None:
                            reasons[sample.index] = sample.finish_reason
                        if sample.text or new:
                            texts[sample.index].append(sample.text)
                            yield Delta(sample.index, readers[sample.index].feed(sample.text), new)
        except Exception as exc:
            raise EngineError(f"engine {self.name!r} failed: {exc!r}") from exc
        samples = []
        for i in sorted(texts):
            content, calls, error = readers[i].read("".join(texts[i]))
            entries = None if k is None else tuple(logprobs[i])
            samples.append(Sample(i, content, reasons[i], tokens[i], entries, calls, error))
        yield Completion(samples, Usage(len(prompt_ids), sum(tokens.values()), cached, 1))
