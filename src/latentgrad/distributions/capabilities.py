"""Declared capabilities of latentgrad families, and the one check estimators make.

Each family says on the class what it offers, as ``torch.distributions`` declares
``has_rsample``: ``Categorical.has_relaxation is True``, ``KSubset.has_trace is True``. An
estimator states what it needs and calls :func:`require`, which raises a ``TypeError`` naming
the missing capability, the estimator and the families that have it. Nothing probes for a hook
with ``hasattr``, ``try``/``except`` or method identity.

Capabilities (each a boolean attribute of every latentgrad distribution, ``False`` unless the
family sets it):

* ``has_noise``: :meth:`sample_noise`, :meth:`from_noise`, :meth:`sample_with_noise`: the
  sample as a deterministic function of parameter-free noise.
* ``has_relaxation``: :meth:`relaxed_from_noise`, :meth:`rsample_relaxed`: a continuous
  relaxation of :meth:`from_noise` at a temperature (Gumbel-Softmax, binary Concrete).
* ``has_local_variants``: :meth:`local_variants`, :attr:`unit_shape`: independent units that
  can be changed one at a time.
* ``has_trace``: :meth:`sample_with_trace`, :meth:`trace_log_prob`, :meth:`noise_log_prob`:
  sampled by a recursive algorithm on exponential noise, with its execution trace.
* ``has_conditional_noise``: :meth:`conditional_noise`, :meth:`item_scores`,
  :attr:`num_items`: the noise given the trace, reparameterized (what RELAX's critic needs).
* ``has_mean_field``: :attr:`mean` is ``E_q[z]`` with the event shape, a point at which a
  loss of ``z`` can be evaluated (MuProp's expansion point).
* ``has_logits``: :attr:`logits` and :meth:`with_logits`: the same family at other logits
  (slope-annealed straight-through, DARN's fixed point).
* ``has_enumerate_support``: :meth:`enumerate_support`, :meth:`support_probs`,
  :meth:`support_size`: every value of the support, for instances whose
  :meth:`support_size` is at most the family's ``max_support_size``
  (:meth:`can_enumerate_support` says whether this instance qualifies).
"""

from __future__ import annotations

from typing import Literal

from latentgrad.distributions._base import DiscreteDistribution, Independent

Capability = Literal[
    "has_noise",
    "has_relaxation",
    "has_local_variants",
    "has_trace",
    "has_conditional_noise",
    "has_mean_field",
    "has_logits",
    "has_enumerate_support",
]
"""The name of a declared capability."""

CAPABILITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "has_noise": ("sampling noise", ("sample_noise", "from_noise")),
    "has_relaxation": ("continuous relaxation", ("relaxed_from_noise",)),
    "has_local_variants": ("independent units to change one at a time", ("local_variants",)),
    "has_trace": (
        "execution trace of a recursive algorithm",
        ("sample_with_trace", "trace_log_prob", "noise_log_prob"),
    ),
    "has_conditional_noise": (
        "noise given the execution trace",
        ("conditional_noise", "item_scores"),
    ),
    "has_mean_field": ("mean-field point E[z] with the event shape", ("mean",)),
    "has_logits": ("logits to change", ("logits", "with_logits")),
    "has_enumerate_support": ("enumerable support", ("enumerate_support", "support_probs")),
}
"""Every capability: what it is (a noun phrase) and the hooks it declares."""


def _describe(dist: object) -> str:
    """``Categorical``, or ``Independent(KSubset)`` for a reinterpreted family."""
    if isinstance(dist, Independent):
        return f"Independent({_describe(dist.base_dist)})"
    return type(dist).__name__


def _family_classes() -> list[type[DiscreteDistribution]]:
    """Every registered family: public subclasses of :class:`DiscreteDistribution` (defined
    anywhere, including user code) that are not declared as base classes."""
    found: list[type[DiscreteDistribution]] = []
    stack = list(DiscreteDistribution.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if not cls.__name__.startswith("_") and not cls.__dict__.get("_base_class", False):
            found.append(cls)
    return found


def families_with(capability: Capability) -> list[str]:
    """Names of the registered families that declare ``capability``, sorted.

    Families are the public subclasses of
    :class:`~latentgrad.distributions.DiscreteDistribution`, yours included.

    Args:
        capability: one of :data:`CAPABILITIES`.

    Returns:
        The class names, e.g. ``["Bernoulli", "Categorical", "SparsemaxCategorical"]`` for
        ``"has_relaxation"``.

    Example:
        >>> from latentgrad.distributions import families_with
        >>> "KSubset" in families_with("has_trace"), "Categorical" in families_with("has_trace")
        (True, False)
    """
    _check_capability(capability)
    names = {cls.__name__ for cls in _family_classes() if getattr(cls, capability)}
    return sorted(names)


def _check_capability(capability: object) -> None:
    if not isinstance(capability, str) or capability not in CAPABILITIES:
        raise ValueError(
            f"unknown capability {capability!r}; the capabilities are {', '.join(CAPABILITIES)}"
        )


def require(dist: object, *capabilities: Capability, by: str, name: str = "dist") -> None:
    """Check that ``dist`` declares every capability in ``capabilities``.

    Only the declared flags are read; whether an instance's support is small enough to
    enumerate is a separate, size question
    (:meth:`~latentgrad.distributions.DiscreteDistribution.can_enumerate_support`).

    Args:
        dist: a latentgrad distribution.
        capabilities: names from :data:`CAPABILITIES`, checked in order.
        by: who needs them (an estimator's name), for the message.
        name: what ``dist`` is called where it was passed (an argument name), for the message.

    Raises:
        TypeError: if ``dist`` is not a latentgrad distribution, or lacks a capability: the
            message names the capability, ``by``, the hooks it stands for and the families
            that have it.
        ValueError: for an unknown capability name.

    Example:
        >>> import torch, latentgrad as lg
        >>> q = lg.Categorical(logits=torch.zeros(2, 3))
        >>> lg.require(q, "has_noise", "has_relaxation", by="GumbelSoftmax")
        >>> lg.require(q, "has_trace", by="TReinforce")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        TypeError: TReinforce needs dist.has_trace: Categorical has no execution trace of a recursive algorithm (dist.sample_with_trace, dist.trace_log_prob, dist.noise_log_prob); families that have it: Arborescence, BinaryTree, KSubset, ...
    """
    for capability in capabilities:
        _check_capability(capability)
    if not isinstance(dist, (DiscreteDistribution, Independent)):
        raise TypeError(
            f"{by} needs {name} to be a latentgrad distribution (e.g. lg.Categorical), "
            f"got {type(dist).__name__}"
        )
    for capability in capabilities:
        if not getattr(dist, capability):
            noun, hooks = CAPABILITIES[capability]
            calls = ", ".join(f"{name}.{hook}" for hook in hooks)
            have = ", ".join(families_with(capability)) or "none"
            raise TypeError(
                f"{by} needs {name}.{capability}: {_describe(dist)} has no {noun} ({calls}); "
                f"families that have it: {have}"
            )


__all__ = ["CAPABILITIES", "Capability", "families_with", "require"]


def declares(dist: object, *capabilities: Capability) -> bool:
    """Whether ``dist`` (a distribution or a family class) declares every one of ``capabilities``.

    Example:
        >>> import latentgrad as lg
        >>> from latentgrad.distributions.capabilities import declares
        >>> declares(lg.Categorical, "has_noise", "has_relaxation"), declares(lg.KSubset, "has_relaxation")
        (True, False)
    """
    for capability in capabilities:
        _check_capability(capability)
    return all(getattr(dist, capability, False) is True for capability in capabilities)
