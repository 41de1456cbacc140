"""Batched simulation of token systems with blow-up and convergence detection.

Solver: ``solver.integrate``, a Dormand-Prince 5(4) with one adaptive step size per system (see
there for why not torchdiffeq's shared step or a loop of scipy calls). The few stiff systems it cannot
finish within ``max_steps`` continue one by one in scipy's LSODA (``stiff.py``).

Finite-time blow-up is detected per token by its dimensionless rate t |dx/dt| / |x|, with the rule and the
blow-up-time estimate of ``blowup.py`` (shared with the LSODA path); rescaling time or x does not change it. A token whose rate passes the
threshold while its norm grows is frozen (its derivative masked to 0) and its blow-up time recorded. A
blow-up is a result recorded in the trajectory, never a crash, a NaN, or a stalled solver.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..typed import check_fields
from .blowup import THRESHOLD, blowing_up, blowup_end_times, local_power
from .fits import loglog_slopes
from .outcome import Outcome, system_outcome
from .solver import integrate
from .stiff import rhs_numpy, solve_one
from .system import TokenSystem, token_rhs


@dataclass
class SimConfig:
    t_end: float = 100.0
    n_points: int = 400  # output times: 0, then n_points - 1 log-spaced from t_first to t_end
    t_first: float = 1e-3  # the first output time after 0 (the log grid's start; integration starts at 0)
    rtol: float = 1e-7
    atol: float = 1e-10
    blowup_threshold: float = THRESHOLD  # t |x'|/|x| past which a growing token counts as blowing up (blowup.py)
    max_steps: int = 20_000  # explicit steps per system; then it is stiff and goes to LSODA (or is unfinished)
    stiff_fallback: bool = True  # finish the systems the batched solver could not with scipy's LSODA
    stiff_max_steps: int = 20_000  # LSODA steps per system before it is left unfinished
    progress: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.t_end > 0:
            raise ValueError(f"t_end must be > 0, got {self.t_end}")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"rtol and atol must be > 0, got rtol={self.rtol}, atol={self.atol}")
        if self.rtol < 1e-14:
            raise ValueError(f"rtol {self.rtol} is below what float64 can resolve (use >= 1e-14)")
        if self.max_steps < 1 or self.stiff_max_steps < 1:
            raise ValueError(f"max_steps and stiff_max_steps must be >= 1, got {self.max_steps}, "
                             f"{self.stiff_max_steps}")
        if not 0 < self.t_first < self.t_end:
            raise ValueError(f"t_first must be in (0, t_end), got {self.t_first}")
        if self.n_points < 3:
            raise ValueError(f"n_points must be >= 3, got {self.n_points}")
        if not self.blowup_threshold > 0:
            raise ValueError(f"blowup_threshold must be > 0, got {self.blowup_threshold}")


@dataclass
class Trajectory:
    """t (T,); x (T, batch, L, D); blowup_time (batch, L): when token l's trajectory ends (inf if it
    exists through t_end): the first blow-up among tokens 1..l, since token l's equation contains them;
    primary (batch, L): the token's own rate crossed the threshold there (it blew up itself, rather
    than its trajectory ending with an earlier token's);
    valid (T, batch, L): False once a token is frozen on its way to a blow-up (its values there are not
    the solution), and after the solver stopped;
    reached (batch,): False where the solver gave up before t_end (the times it did reach stay valid)."""

    t: torch.Tensor
    x: torch.Tensor
    blowup_time: torch.Tensor
    primary: torch.Tensor
    valid: torch.Tensor
    reached: torch.Tensor
    config: SimConfig = field(repr=False)

    @property
    def blew_up(self) -> torch.Tensor:
        """(batch, L) bool."""
        return torch.isfinite(self.blowup_time)

    def norms(self) -> torch.Tensor:
        """Token norms (T, batch, L), NaN where ``valid`` is False (for plotting and fitting)."""
        n = self.x.norm(dim=-1)
        return torch.where(self.valid, n, torch.nan)

    def token_outcomes(self, tail: float = 0.2) -> list[list[Outcome]]:
        """What each token did, observed (batch lists of L), decided in this order:
        UNFINISHED (the solver stopped before the horizon, and the token's solution had not ended by then:
        no other fate is observed, whatever the values before it say); STAYS (its norm never changed at
        float64 resolution while its solution existed: it is 0, mu = 0, or its motion is below rounding);
        BLOWS_UP (its solution ended: its own or an earlier token's blow-up); else, over the last ``tail``
        of the time decades, CONVERGES (its norm falls like a power of t: log-log slope < -0.1), GROWS (its
        norm rose by more than 1% across the window) or BOUNDED. The growth test is a ratio, not a slope,
        so a logarithmic divergence (slope 1 / ln t, 0.007 at t = 1e60) still reads as growth at any
        horizon. A fit over a window is an observation, not a proof: a token that grows may still blow up
        after the horizon."""
        norms = self.norms()
        slopes = loglog_slopes(self.t, norms, tail)  # (batch, L)
        n0 = self.x[0].norm(dim=-1)
        # a token whose solution ended counts as staying only if it started at 0 (x_l' is proportional to x_l)
        still = ((norms == n0) | ~self.valid).all(0) & ((n0 == 0) | ~self.blew_up)
        t0 = self.t[-1] ** (1 - tail) * self.t[1] ** tail  # start of the tail window (log scale)
        k0 = int(torch.searchsorted(self.t, t0.clamp_max(self.t[-1])).clamp_max(len(self.t) - 1))
        rise = norms[-1] / norms[k0]
        out = []
        for i in range(self.x.shape[1]):
            row = []
            for l in range(self.x.shape[2]):
                if not self.reached[i] and not self.blew_up[i, l]:
                    row.append(Outcome.UNFINISHED)
                elif still[i, l]:
                    row.append(Outcome.STAYS)
                elif self.blew_up[i, l]:
                    row.append(Outcome.BLOWS_UP)
                elif float(slopes[i, l]) < -0.1:
                    row.append(Outcome.CONVERGES)
                elif float(rise[i, l]) > 1.01:
                    row.append(Outcome.GROWS)
                else:
                    row.append(Outcome.BOUNDED)
            out.append(row)
        return out

    def reached_times(self) -> list[float]:
        """Per system, how far the solver got: the horizon where it reached it, else the last output time
        with a valid token (0.0 if none)."""
        out = []
        for i in range(len(self.reached)):
            ok = self.valid[:, i].any(-1)
            out.append(float(self.t[-1]) if bool(self.reached[i]) else float(self.t[ok][-1]) if ok.any() else 0.0)
        return out

    def stop_reasons(self) -> list[str | None]:
        """Per system, why its tokens are UNFINISHED (None where the solver reached the horizon)."""
        return [None if bool(done) else
                f"the solver gave up after t = {last:.4g}, before the horizon t = {float(self.t[-1]):.4g} "
                "(step limit, or steps too small for float64): no fate is observed"
                for done, last in zip(self.reached, self.reached_times())]

    def outcome(self, tail: float = 0.2) -> list[Outcome]:
        """Per system, its most severe observed token outcome (``outcome.system_outcome``)."""
        return [system_outcome(row) for row in self.token_outcomes(tail)]


def _rel_rate(F: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """|x'| / |x| per token (batch, L)."""
    return F.norm(dim=-1) / X.norm(dim=-1).clamp_min(1e-300)


def _finish_one(system: TokenSystem, i: int, t0: float, x: torch.Tensor, alive: torch.Tensor, t: torch.Tensor,
                xs: torch.Tensor, blowup: torch.Tensor, primary: torch.Tensor, frozen_at: torch.Tensor,
                reached: torch.Tensor,
                config: SimConfig) -> None:
    """Continue system i from (t0, x) with LSODA, writing its results into the batch's tensors in place."""
    w = None if system.norm_weight is None else system.norm_weight[i].cpu().numpy()
    F = rhs_numpy(*(p[i].cpu().numpy() for p in system.params), norm_weight=w, norm_eps=system.norm_eps)
    one = solve_one(F, x.cpu().numpy(), t.cpu().numpy(), rtol=config.rtol, atol=config.atol,
                    blowup_threshold=config.blowup_threshold, t0=t0, alive=alive.cpu().numpy(), max_steps=config.stiff_max_steps)
    later = t > t0
    xs[later, i] = torch.from_numpy(one.x).to(xs)[later.cpu()]
    blowup[i] = torch.minimum(blowup[i], torch.from_numpy(one.blowup).to(blowup))  # LSODA only ends live tokens
    primary[i] |= torch.from_numpy(one.primary).to(primary.device)
    frozen_at[i] = torch.minimum(frozen_at[i], torch.from_numpy(one.frozen_at).to(frozen_at))
    reached[i] = one.reached


def output_grid(config: SimConfig, dtype=torch.float64) -> torch.Tensor:
    """The default output times (n_points,): 0, then log-spaced from t_first to t_end."""
    return torch.cat([torch.zeros(1, dtype=dtype),
                      torch.logspace(math.log10(config.t_first), math.log10(config.t_end), config.n_points - 1,
                                     dtype=dtype)])


def _check_grid(t_out) -> torch.Tensor:
    t = torch.as_tensor(t_out, dtype=torch.float64).flatten()
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError("t_out must hold finite times >= 0 (it has NaN, inf or negative entries)")
    if not (t[1:] > t[:-1]).all():
        k = int(torch.nonzero(t[1:] <= t[:-1])[0])
        raise ValueError(f"t_out must increase strictly: t_out[{k + 1}] = {float(t[k + 1]):g} follows {float(t[k]):g}")
    if t[0] > 0:  # integration starts at 0, where x0 is given
        t = torch.cat([torch.zeros(1, dtype=t.dtype), t])
    if len(t) < 3:
        raise ValueError(f"t_out needs at least 2 output times after 0, got {len(t) - 1}")
    return t


def simulate(system: TokenSystem, x0: torch.Tensor, t_end: float | None = None,
             config: SimConfig | None = None, t_out=None, **overrides) -> Trajectory:
    """Integrate dX/dt = F(X) from tokens x0 (batch, L, D) (or (batch, L) in 1-D) at t = 0.

    Output times: ``t_out`` (a 1-D increasing sequence; 0 is prepended when it does not start there),
    else the config's log grid up to ``t_end``. Returns a ``Trajectory`` on those times with per-token
    blow-up times."""
    config = config or SimConfig()
    if t_out is not None:
        if t_end is not None:
            raise ValueError("give t_end or t_out, not both")
        grid = _check_grid(t_out)
        overrides.update(t_end=float(grid[-1]), n_points=len(grid), t_first=float(grid[1]))
    if t_end is not None:
        overrides["t_end"] = t_end
    if overrides:
        config = SimConfig(**{**config.__dict__, **overrides})
    X = system.check_state(x0)
    b, L, _ = X.shape
    dev, dt = X.device, X.dtype
    t = (grid if t_out is not None else output_grid(config)).to(dev, dt)
    params = system.params
    alive = torch.ones(b, L, dtype=torch.bool, device=dev)
    blowup = torch.full((b, L), torch.inf, dtype=dt, device=dev)
    primary = torch.zeros(b, L, dtype=torch.bool, device=dev)
    frozen_at = torch.full((b, L), torch.inf, dtype=dt, device=dev)
    last_rate = torch.full((b, L), torch.inf, dtype=dt, device=dev)  # no rise can be seen at the first step
    last_norm = X.norm(dim=-1)

    def f(idx):
        mask, low = alive[idx][..., None], None
        S_B, S_C, S_delta, A, bias = params
        if system.S_delta_factors is not None:
            # the rhs reads Δ through the low rank alone: gathering the (D, D) S_Δ each step cost more than
            # the rhs itself at a 2.8B layer's D = 5120 (210 MB a system in float64)
            low, S_delta = tuple(t[idx] for t in system.S_delta_factors), None
        else:
            S_delta = S_delta[idx]
        p_i = (S_B[idx], S_C[idx], S_delta, A[idx], bias[idx])
        return lambda Y: token_rhs(*p_i, system.reads(Y, idx), low) * mask

    def on_step(idx, t_new, Y, F):
        r, n = _rel_rate(F, Y), Y.norm(dim=-1)
        hit = alive[idx] & blowing_up(Y, F, r, last_rate[idx], t_new[:, None], config.blowup_threshold)
        power = local_power(r, last_rate[idx], n, last_norm[idx])
        last_rate[idx], last_norm[idx] = r, n
        if hit.any():
            ends, own = blowup_end_times(t_new[:, None], r, hit, power)
            newly = alive[idx] & torch.isfinite(ends)
            blowup[idx] = torch.where(newly, ends, blowup[idx])
            primary[idx] = primary[idx] | (own & newly)
            frozen_at[idx] = torch.where(newly, t_new[:, None], frozen_at[idx])
            alive[idx] = alive[idx] & ~newly
            return newly.any(dim=-1)
        return None

    with tqdm(total=b * (len(t) - 1), desc="simulate", unit="pt", disable=not config.progress,
              leave=False) as bar:
        xs, t_stop, x_stop = integrate(f, X, t, config.rtol, config.atol, on_step=on_step,
                                       max_steps=config.max_steps, progress=bar.update)
    reached = t_stop == t[-1]
    if config.stiff_fallback and not reached.all():
        stiff = torch.nonzero(~reached).flatten().tolist()
        for i in tqdm(stiff, desc="stiff systems (LSODA)", disable=not config.progress, leave=False):
            _finish_one(system, i, float(t_stop[i]), x_stop[i], alive[i], t, xs, blowup, primary, frozen_at,
                        reached, config)
    if not reached.all():
        warnings.warn(f"{int((~reached).sum())} systems stopped before t_end (the solver gave up)",
                      RuntimeWarning, stacklevel=2)
    after = (t[:, None, None] >= blowup[None]) | (t[:, None, None] > frozen_at[None])
    valid = ~after & torch.isfinite(xs).all(-1)  # NaN after a solver stopped: only what it reached is valid
    return Trajectory(t=t, x=xs, blowup_time=blowup, primary=primary, valid=valid, reached=reached,
                      config=config)


UNDECIDED = (Outcome.GROWS, Outcome.BOUNDED)


def simulate_until_decided(system: TokenSystem, x0: torch.Tensor, t_end: float, horizon: float,
                           config: SimConfig | None = None, **overrides) -> Trajectory:
    """``simulate`` to t_end, then to 10x further, up to ``horizon``, until no token only grows or stays
    bounded: each has blown up, converges or stays at 0. A converging token is not a proof (a later
    token's blow-up ends it too); the horizon reached is the trajectory's t[-1]."""
    if not 0 < t_end <= horizon:
        raise ValueError(f"need 0 < t_end <= horizon, got t_end={t_end}, horizon={horizon}")
    while True:
        traj = simulate(system, x0, t_end, config=config, **overrides)
        if t_end >= horizon or not any(o in UNDECIDED for row in traj.token_outcomes() for o in row):
            return traj
        t_end = min(10 * t_end, horizon)
