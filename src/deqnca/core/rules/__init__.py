"""Local, weight-tied update rules. A rule owns its weights and, bound to an input, is a map z -> z'.

Every rule in `RULES` provides one protocol: ``__init__(input_channels=, state_channels=, **rule_kw)`` and
``bind(u, conditioning) -> (z -> z')``; optionally ``after_step()`` (called after every optimiser step,
e.g. a renormalisation). The MNIST classifier's rules live here; the maze task registers its own
(``recall``, ``geodesic``) when it is imported. Register yours with ``@RULES.register("name")``.
Rules of another protocol have their own registry beside their model kind (the self-classifying
task's `CELL_RULES`); the growing NCA has one rule.
"""
from deqnca.core.registry import Registry
from deqnca.core.rules.contractive import ContractiveTanhRule, conv_operator_norm
from deqnca.core.rules.residual_tanh import ResidualTanhRule

RULES = Registry("rule", "an nn.Module(input_channels=, state_channels=, **rule_kw) with bind(u, conditioning)")
RULES.register("residual_tanh", ResidualTanhRule)
RULES.register("contractive_tanh", ContractiveTanhRule)

__all__ = ["RULES", "make_rule", "conv_operator_norm", "ContractiveTanhRule", "ResidualTanhRule"]


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
