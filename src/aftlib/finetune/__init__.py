"""Aggregation fine-tuning: build AFT training data and train an aggregator.

The data builders need nothing beyond aftlib; training needs the ``train`` extra
(``pip install 'aftlib[train]'``).
"""

from __future__ import annotations

__all__: tuple[str, ...] = ()
