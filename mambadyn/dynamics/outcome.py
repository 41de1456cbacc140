"""One vocabulary for what a token or a system does, predicted or observed.

Predictions (``classify``) use CONVERGES, DIVERGES_SLOWLY, BLOWS_UP and STAYS where a proof or a stated
derivation backs them, and UNDETERMINED where none does. Observations of a trajectory use CONVERGES,
GROWS, BOUNDED, BLOWS_UP, STAYS and UNFINISHED; GROWS and SHRINKS also say which way a norm went over a
finite stretch (the probe's layers), with no rate claimed. GROWS is deliberately not DIVERGES_SLOWLY: a
token that grows up to the horizon may still blow up later; SHRINKS is not CONVERGES for the same reason.
"""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    CONVERGES = "converges"  # |x_l| -> 0 as t -> inf (observed: falls like a power of t at the horizon)
    DIVERGES_SLOWLY = "diverges_slowly"  # |x_l| -> inf as t -> inf, and the solution exists for all t
    BLOWS_UP = "blows_up"  # the token's solution ends at a finite time, at its own or an earlier token's blow-up
    STAYS = "stays"  # the token does not move (it is 0, or mu = 0)
    GROWS = "grows"  # observed only: growing at the horizon, no blow-up before it
    SHRINKS = "shrinks"  # observed only: its norm fell over a finite stretch (no rate, no limit claimed)
    BOUNDED = "bounded"  # observed only: neither growing nor falling at the horizon
    UNDETERMINED = "undetermined"  # predicted only: no theorem applies
    UNFINISHED = "unfinished"  # observed only: the solver stopped before the horizon

    @property
    def paper_name(self) -> str:
        """The paper's name for a system in which this is the most severe token outcome."""
        return _PAPER.get(self, self.value.replace("_", " "))


# what a predicted fate rests on (``classify.TokenFate.basis``)
THEOREM = "theorem"  # the paper's, or a short argument written in the module that states it
NONE = "none"  # no theorem applies

_PAPER = {Outcome.CONVERGES: "convergent", Outcome.DIVERGES_SLOWLY: "slow divergence",
          Outcome.BLOWS_UP: "fast divergence"}

# a system's scenario is its most severe token outcome, in this order
_SEVERITY = (Outcome.UNFINISHED, Outcome.BLOWS_UP, Outcome.UNDETERMINED, Outcome.DIVERGES_SLOWLY, Outcome.GROWS,
             Outcome.BOUNDED, Outcome.SHRINKS, Outcome.CONVERGES, Outcome.STAYS)


def system_outcome(tokens) -> Outcome:
    """The outcome of a system from its tokens' (an iterable of ``Outcome``): the most severe one, so a
    system with one blow-up is fast-divergent, as in the paper."""
    tokens = set(tokens)
    if not tokens:
        raise ValueError("a system needs at least one token")
    return next(o for o in _SEVERITY if o in tokens)


def describe_tokens(outcomes, ends=None) -> str:
    """One line naming each group of tokens by outcome, e.g. "token 1 converges; tokens 3-6 blow up
    (t = 65.2-65.3); token 2 grows". ``outcomes``: the L token outcomes; ``ends``: their blow-up times
    (inf where none), shown for the tokens that blow up."""
    verbs = {Outcome.CONVERGES: "converge", Outcome.DIVERGES_SLOWLY: "diverge slowly", Outcome.BLOWS_UP: "blow up",
             Outcome.STAYS: "stay at 0", Outcome.GROWS: "grow", Outcome.BOUNDED: "stay bounded",
             Outcome.UNDETERMINED: "are undetermined", Outcome.UNFINISHED: "are unfinished",
             Outcome.SHRINKS: "shrink"}
    singular = {"converge": "converges", "diverge slowly": "diverges slowly", "blow up": "blows up",
                "stay at 0": "stays at 0", "grow": "grows", "stay bounded": "stays bounded",
                "are undetermined": "is undetermined", "are unfinished": "is unfinished", "shrink": "shrinks"}
    parts = []
    for o in dict.fromkeys(outcomes):
        idx = [i for i, x in enumerate(outcomes) if x == o]
        runs, start = [], idx[0]
        for a, b in zip(idx, idx[1:] + [None]):
            if b != a + 1:
                runs.append(f"{start + 1}" if start == a else f"{start + 1}-{a + 1}")
                start = b
        verb = verbs[o] if len(idx) > 1 else singular[verbs[o]]
        text = f"token{'s' if len(idx) > 1 else ''} {', '.join(runs)} {verb}"
        if o == Outcome.BLOWS_UP and ends is not None:
            ts = sorted(float(ends[i]) for i in idx)
            text += f" (t = {ts[0]:.4g})" if ts[0] == ts[-1] else f" (t = {ts[0]:.4g}-{ts[-1]:.4g})"
        parts.append(text)
    return "; ".join(parts)
