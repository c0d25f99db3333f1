"""The public face of the package."""

from __future__ import annotations

import importlib
import inspect
import types

import aftlib
import aftlib.config
import aftlib.engines
import aftlib.testing

PACKAGES = (
    "aftlib",
    "aftlib.config",
    "aftlib.engines",
    "aftlib.evaluate",
    "aftlib.finetune",
    "aftlib.ray",
    "aftlib.run",
    "aftlib.serve",
    "aftlib.testing",
)


def test_all_lists_exactly_the_public_names() -> None:
    """Every name in __all__ exists, and every public class or function is listed in __all__."""
    for module in (aftlib, aftlib.config, aftlib.engines, aftlib.testing):
        assert isinstance(module.__all__, tuple)
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name} is listed but missing"
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and name != "annotations" and not isinstance(value, types.ModuleType)
        }
        assert public - set(module.__all__) == set(), module.__name__
    assert {"config", "engines", "presets", "testing"} <= set(aftlib.__all__)


def test_the_names_examples_rely_on() -> None:
    """The names the README and examples use are importable where documented."""
    from aftlib import Aggregator, Layer, Proposer, SamplingParams, Topology, config, presets  # noqa: F401
    from aftlib.engines import VLLMEngine  # noqa: F401
    from aftlib.testing import FakeEngine, build_tiny_model  # noqa: F401

    assert callable(presets.aft)
    assert callable(config.load)


def test_errors_share_one_root() -> None:
    """Every aftlib error class derives from AftError."""
    errors = [v for v in vars(aftlib).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(errors) >= 8
    assert all(issubclass(e, aftlib.AftError) for e in errors)


def test_public_classes_report_their_public_module() -> None:
    """Reprs and tracebacks show public paths: aftlib.Topology, aftlib.engines.RetryingEngine, ..."""
    assert aftlib.Topology.__module__ == "aftlib"
    assert aftlib.QuorumError.__module__ == "aftlib"
    assert aftlib.engines.RetryingEngine.__module__ == "aftlib.engines"
    assert aftlib.testing.FakeEngine is aftlib.engines.FakeEngine
    assert aftlib.testing.FakeEngine.__module__ == "aftlib.engines"
    assert repr(aftlib.SamplingParams()).startswith("SamplingParams(")
    assert aftlib.config.TopologyConfig.__module__ == "aftlib.config"


def test_every_public_name_of_every_package_reports_a_public_module() -> None:
    """Each class and function in a package's __all__ says it lives in a public module (none with "._").

    Classes shared by two packages (FakeEngine in aftlib.engines and aftlib.testing) report the package that
    owns them; a name defined in the package itself reports that package.
    """
    private = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        for public in package.__all__:
            value = getattr(package, public)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            module = str(value.__module__)
            if module.startswith("aftlib") and "._" in module:
                private.append(f"{name}.{public} reports {module}")
    assert private == []


def test_subpackages_are_attributes_of_aftlib() -> None:
    """aftlib.evaluate and aftlib.serve, like config, finetune, ray and testing, load on first access."""
    for name in ("config", "evaluate", "finetune", "ray", "run", "serve", "testing"):
        assert isinstance(getattr(aftlib, name), types.ModuleType)
        assert name in aftlib.__all__
