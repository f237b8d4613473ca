"""Local, weight-tied update rules. A rule owns its weights and, bound to an input, is a map z -> z'."""
from .seed import ResidualTanhRule
from .contractive import ContractiveTanhRule, conv_operator_norm
from .growing import GrowingNCARule
from .recall import RecallRule

RULES = {"residual_tanh": ResidualTanhRule, "contractive_tanh": ContractiveTanhRule,
         "growing": GrowingNCARule, "recall": RecallRule}

__all__ = ["RULES", "make_rule", "conv_operator_norm", *(r.__name__ for r in RULES.values())]


def make_rule(name: str, **kw):
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; choose one of {sorted(RULES)}")
    return RULES[name](**kw)
