"""Aggregation fine-tuning: build training data and train an aggregator, supervised or by reinforcement.

The data builders need nothing beyond aftlib; training needs the ``train`` extra
(``pip install 'aftlib[train]'``).
"""

from __future__ import annotations

from .._util import publish as _publish
from ._build import ICL_TEMPLATE, build_off_policy, build_on_policy, choose_proposals
from ._card import DataCard, DatasetWriter, card_path, load_tokenizer, skipped_path, write_dataset
from ._examples import Example, Skip, Source, aggregation_example, direct_example
from ._grpo import GrpoSettings, RlRecord, grpo_rows, prompt_text, read_rl_records, reward_functions
from ._preference import PreferenceRecord, Response, read_preferences
from ._rl_data import RlCard, build_rl_data
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
    "RlCard",
    "RlRecord",
    "Skip",
    "Source",
    "aggregation_example",
    "build_off_policy",
    "build_on_policy",
    "build_rl_data",
    "card_path",
    "choose_proposals",
    "direct_example",
    "examples_from_trace",
    "load_tokenizer",
    "read_preferences",
    "read_rl_records",
    "skipped_path",
    "write_dataset",
    # train
    "GrpoSettings",
    "LoraSettings",
    "LossPoint",
    "TrainConfig",
    "TrainResult",
    "grpo_rows",
    "prompt_text",
    "reward_functions",
    "train",
)

_publish(globals(), __name__)
