"""Local, weight-tied update rules. A rule owns its weights and, bound to an input, is a map z -> z'.

The protocol a rule registered for `EquilibriumModel` provides (see `deqnca.protocols.Rule`):
``__init__(input_channels=, state_channels=, **rule_kw)`` and ``bind(u, conditioning) -> (z -> z')``;
optionally ``after_step()`` (called after every optimiser step, e.g. a renormalisation).
Register your own with ``@RULES.register("name")``.
"""
from ..registry import Registry
from .contractive import ContractiveTanhRule, conv_operator_norm
from .geodesic import GeodesicRule
from .growing import GrowingNCARule
from .recall import RecallRule
from .seed import ResidualTanhRule
from .selfclass import SelfClassifyingRule
from .selfclass_consensus import ConsensusCellsRule
from .selfclass_equilibrium import ContractiveCellsRule

RULES = Registry("rule", "an nn.Module(input_channels=, state_channels=, **rule_kw) with bind(u, conditioning)")
RULES.register("residual_tanh", ResidualTanhRule)
RULES.register("contractive_tanh", ContractiveTanhRule)
RULES.register("growing", GrowingNCARule)     # the growing NCA's own rule (grow task), not for EquilibriumModel
RULES.register("recall", RecallRule)
RULES.register("geodesic", GeodesicRule)         # max-plus flood: unique fixed point, no contraction (maze)
RULES.register("selfclass", SelfClassifyingRule)     # self-classifying digits (cells task), the article's rule
RULES.register("selfclass_contractive", ContractiveCellsRule)   # ... and its contraction (equilibrium model)
RULES.register("selfclass_consensus", ConsensusCellsRule)       # ... contraction + max-plus flood (consensus)

__all__ = ["RULES", "make_rule", "conv_operator_norm", "ContractiveTanhRule", "GeodesicRule", "GrowingNCARule",
           "RecallRule", "ResidualTanhRule", "SelfClassifyingRule", "ContractiveCellsRule"]


def make_rule(name: str, **kw):
    """Build the rule registered as `name` with keyword arguments `kw`.

    Args:
        name: a registered rule name (``RULES.names()``).
        **kw: the rule's constructor arguments (channel counts and the config's ``rule_kw``).

    Returns:
        The rule module.

    Examples:
        >>> rule = make_rule("residual_tanh", input_channels=4, state_channels=8)
    """
    cls = RULES.get(name)
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"rule {name!r} does not take these settings ({e}); check rule_kw, or use a rule "
                         "that fits (EquilibriumModel: contractive_tanh, residual_tanh or one you registered)") \
            from None
