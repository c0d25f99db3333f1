"""Models and extras that are not there fail at once, with what to do, before any engine starts."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from aftlib import AftError, ConfigError, MissingExtraError
from aftlib.engines import OpenAIEngine, VLLMEngine, check_model

pytestmark = pytest.mark.anyio


def test_a_missing_model_folder_is_named(tmp_path: Path) -> None:
    """A folder that does not exist, or holds no config.json, is 'no model at PATH (...)' naming why."""
    with pytest.raises(ConfigError, match=r"no model at .*nowhere \(no such folder\)"):
        check_model(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no model at .*empty \(no config.json\)") as info:
        check_model(str(empty))
    assert str(info.value).startswith("no model at ")


def test_a_model_folder_with_a_config_passes(tmp_path: Path) -> None:
    """A folder with config.json is accepted without importing vLLM."""
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    check_model(str(tmp_path))


def test_a_hub_model_not_in_the_cache_fails_at_once_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """With HF_HUB_OFFLINE, a hub name missing from the cache is refused in well under a second."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="model someone/not-here is not on this machine"):
        check_model("someone/not-here")
    assert time.monotonic() - start < 1


def test_a_hub_model_not_cached_and_hub_unreachable_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online but with no route to the hub, the message says the model is not on this machine."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(ConfigError, match=r"not on this machine .* the hub cannot be reached"):
        check_model("someone/not-here")


async def test_vllm_engine_start_checks_the_model_before_vllm(tmp_path: Path) -> None:
    """VLLMEngine.start on a missing folder raises the ConfigError without starting anything."""
    engine = VLLMEngine(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no model at"):
        async with engine:
            pass


async def test_a_missing_extra_is_one_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the openai package, OpenAIEngine raises MissingExtraError: an ImportError and an AftError."""
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'aftlib\[openai\]'") as info:
        async with OpenAIEngine("m", "http://127.0.0.1:9/v1"):
            pass
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value, AftError)
    assert info.value.extra == "openai"
