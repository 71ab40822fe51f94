"""Architecture search strategies behind one interface (strategy.py), selected by
`search.algorithm`: binary_gate (MMnas), snas (the NAS-VQA attempt); budget.py holds the FLOP
costs, the expected-FLOPs penalty and the budget fit."""
from .strategy import (Partition, SearchStrategy, StepAt, partition_split, register_strategy, strategy_class,
                       strategy_names, strategy_settings)

__all__ = ["Partition", "SearchStrategy", "StepAt", "partition_split", "register_strategy", "strategy_class",
           "strategy_names", "strategy_settings"]
