"""Policy evaluation: a plan scored through 300 contracts, phases A-G (see README.md).

``sisas run examples.policy_evaluation --input examples/policy_evaluation/data/plan.json``
"""

from examples.policy_evaluation.pipeline import pipeline

__all__ = ["pipeline"]
