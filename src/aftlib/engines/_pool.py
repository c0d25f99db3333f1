"""Start many engines once, together, and close them together."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AsyncExitStack
from types import TracebackType

from attrs import define, field

from .._errors import ConfigError
from ._base import Engine

__all__ = ("GPU_SHARE", "EnginePool", "split_gpu_memory")

GPU_SHARE = 0.9
"""The share of GPU memory that the vLLM engines of one process may claim together."""


def _distinct(engines: Iterable[Engine]) -> tuple[Engine, ...]:
    seen: dict[int, Engine] = {}
    for engine in engines:
        seen.setdefault(id(engine), engine)
    return tuple(seen.values())


def split_gpu_memory(engines: Iterable[Engine]) -> dict[str, float]:
    """Give each in-process vLLM engine that sets no ``gpu_memory_utilization`` a fair share of the GPU.

    vLLM engines start one after another and each would claim most of the GPU. When two or more are
    about to start, the memory the others do not claim explicitly (of :data:`GPU_SHARE`) is split evenly
    among those that set no share (their ``engine_args`` get it).

    Returns:
        The share given to each engine, by engine name (empty when there is nothing to split).

    Raises:
        ConfigError: The explicit shares leave too little for the engines that set none.
    """
    from ._vllm import VLLMEngine

    vllm = [
        e
        for e in _distinct(leaf for engine in engines for leaf in engine.leaves())
        if isinstance(e, VLLMEngine)
    ]
    if len(vllm) < 2:
        return {}
    claimed = sum(
        float(e.engine_args["gpu_memory_utilization"])
        for e in vllm
        if "gpu_memory_utilization" in e.engine_args
    )
    unset = [e for e in vllm if "gpu_memory_utilization" not in e.engine_args]
    if not unset:
        return {}
    left = GPU_SHARE - claimed
    if left <= 0.05 * len(unset):
        raise ConfigError(
            f"the vLLM engines claim {claimed:.2f} of the GPU, leaving too little for the {len(unset)} "
            "that set no gpu_memory_utilization",
            path="engines",
        )
    share = round(left / len(unset), 3)
    for engine in unset:
        engine.engine_args["gpu_memory_utilization"] = share
    return {engine.name: share for engine in unset}


@define(eq=False)
class EnginePool:
    """Engines started once and closed together: ``async with EnginePool(engines):``.

    Each distinct engine is entered once (an engine listed twice, or shared by several agents, starts
    once), after the GPU memory is split among the in-process vLLM engines (:func:`split_gpu_memory`).
    If one engine fails to start, the ones already started are closed. On exit they close in reverse
    order, also when the block was cancelled.

    Args:
        engines: The engines, in the order to start them.
    """

    engines: tuple[Engine, ...] = field(converter=_distinct)
    _stack: AsyncExitStack | None = field(default=None, init=False, repr=False)

    async def __aenter__(self) -> EnginePool:
        split_gpu_memory(e for e in self.engines if not e._entered)
        async with AsyncExitStack() as stack:
            for engine in self.engines:
                await stack.enter_async_context(engine)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
