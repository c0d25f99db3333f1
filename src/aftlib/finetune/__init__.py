"""Aggregation fine-tuning: build AFT training data and train an aggregator.

The data builders need nothing beyond aftlib; training needs the ``train`` extra
(``pip install 'aftlib[train]'``).
"""

from __future__ import annotations

from .._util import publish as _publish
from ._build import ICL_TEMPLATE, build_off_policy, build_on_policy, choose_proposals
from ._card import DataCard, DatasetWriter, card_path, load_tokenizer, skipped_path, write_dataset
from ._examples import Example, Skip, Source, aggregation_example, direct_example
from ._preference import PreferenceRecord, Response, read_preferences
from ._traces import examples_from_trace
from ._train import LoraSettings, LossPoint, TrainConfig, TrainResult, train

__all__: tuple[str, ...] = (
    # data
    "ICL_TEMPLATE",
    "DataCard",
    "DatasetWriter",
    "Example",
    "PreferenceRecord",
    "Response",
    "Skip",
    "Source",
    "aggregation_example",
    "build_off_policy",
    "build_on_policy",
    "card_path",
    "choose_proposals",
    "direct_example",
    "examples_from_trace",
    "load_tokenizer",
    "read_preferences",
    "skipped_path",
    "write_dataset",
    # train
    "LoraSettings",
    "LossPoint",
    "TrainConfig",
    "TrainResult",
    "train",
)

_publish(globals(), __name__)
