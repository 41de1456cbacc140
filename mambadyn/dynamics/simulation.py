"""Batched simulation of token systems with blow-up and convergence detection.

Solver: ``solver.integrate``, a Dormand-Prince 5(4) with one adaptive step size per system (see
there for why not torchdiffeq's shared step or a loop of scipy calls). The few stiff systems it cannot
finish within ``max_steps`` continue one by one in scipy's LSODA (``stiff.py``).

Finite-time blow-up is detected per token by its relative rate r = |dx/dt| / |x|: for power-law
blow-up x' = c x^p it equals 1 / ((p - 1)(T* - t)), so r large means T* is near, and t + 1/(3 r)
(p = 4, the 1-D fast regime) estimates T*. Slow divergence keeps r ~ l / (t ln t), far below the
threshold. A token is frozen (its derivative masked to 0) at the first accepted step where r passes
the threshold *while its norm grows* (x . dx/dt > 0) *and r grew since its last step*, as it must on
the way to a blow-up; a large token that shrinks (a converging system started far out, where r is
large for a while) is a transient, not a blow-up. A blow-up is a result recorded in the trajectory,
never a crash, a NaN, or a stalled solver.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..typed import check_fields
from .solver import integrate
from .stiff import blowing_up, rhs_numpy, solve_one
from .system import TokenSystem, token_rhs


@dataclass
class SimConfig:
    t_end: float = 100.0
    n_points: int = 400  # output times: 0 then log-spaced from t_start to t_end
    t_start: float = 1e-3
    rtol: float = 1e-7
    atol: float = 1e-10
    blowup_rate: float = 1e3  # relative rate |x'|/|x| above which a token counts as blowing up
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
        if not 0 < self.t_start < self.t_end:
            raise ValueError(f"t_start must be in (0, t_end), got {self.t_start}")
        if self.n_points < 3:
            raise ValueError(f"n_points must be >= 3, got {self.n_points}")
        if not self.blowup_rate > 0:
            raise ValueError(f"blowup_rate must be > 0, got {self.blowup_rate}")


@dataclass
class Trajectory:
    """t (T,); x (T, batch, L, D); blowup_time (batch, L): when token l's trajectory ends (inf if it
    exists through t_end): the first blow-up among tokens 1..l, since token l's equation contains them;
    primary (batch, L): the token's own rate crossed the threshold there (it blew up itself, rather
    than its trajectory ending with an earlier token's);
    valid (T, batch, L): False after a token's blow-up (its values there are frozen, not the solution);
    reached (batch,): False where the solver gave up before t_end (then nothing after is valid)."""

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

    def outcome(self) -> list[str]:
        """Observed behaviour per system: 'blow-up', 'converging', 'diverging', 'bounded', or 'unfinished'
        (the step budget ran out before t_end). The trend is the log-log slope of the largest token norm
        over the last fifth of the time decades, or, on a grid too coarse for a fit there, between the
        last two output times after 0."""
        from .rates import tail_slope

        slopes = tail_slope(self)
        norms = self.norms().amax(-1)  # (T, batch)
        out = []
        for i in range(self.x.shape[1]):
            slope = float(slopes[i])
            if slope != slope:  # too few points in the tail: two-point slope
                ok = torch.nonzero(torch.isfinite(norms[:, i]) & (self.t > 0)).flatten()
                if len(ok) >= 2:
                    a, b = ok[-2], ok[-1]
                    slope = float((norms[b, i] / norms[a, i]).log() / (self.t[b] / self.t[a]).log())
            if self.blew_up[i].any():
                out.append("blow-up")
            elif not self.reached[i]:
                out.append("unfinished")
            elif slope < -0.1:
                out.append("converging")
            elif slope > 0.02:
                out.append("diverging")
            else:
                out.append("bounded")
        return out


def _rel_rate(F: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """|x'| / |x| per token (batch, L)."""
    return F.norm(dim=-1) / X.norm(dim=-1).clamp_min(1e-300)


def _finish_one(system: TokenSystem, i: int, t0: float, x: torch.Tensor, alive: torch.Tensor, t: torch.Tensor,
                xs: torch.Tensor, blowup: torch.Tensor, primary: torch.Tensor, reached: torch.Tensor,
                config: SimConfig) -> None:
    """Continue system i from (t0, x) with LSODA, writing its results into the batch's tensors in place."""
    F = rhs_numpy(*(p[i].cpu().numpy() for p in (system.S_B, system.S_C, system.S_delta, system.A)))
    one = solve_one(F, x.cpu().numpy(), t.cpu().numpy(), rtol=config.rtol, atol=config.atol,
                    blowup_rate=config.blowup_rate, t0=t0, alive=alive.cpu().numpy(), max_steps=config.stiff_max_steps)
    later = t > t0
    xs[later, i] = torch.from_numpy(one.x).to(xs)[later.cpu()]
    blowup[i] = torch.minimum(blowup[i], torch.from_numpy(one.blowup).to(blowup))  # LSODA only ends live tokens
    primary[i] |= torch.from_numpy(one.primary).to(primary.device)
    reached[i] = one.reached


def simulate(system: TokenSystem, x0: torch.Tensor, t_end: float | None = None,
             config: SimConfig | None = None, **overrides) -> Trajectory:
    """Integrate dX/dt = F(X) from tokens x0 (batch, L, D) (or (batch, L) in 1-D) to ``t_end``.

    Returns a ``Trajectory`` on the output grid with per-token blow-up times."""
    config = config or SimConfig()
    if t_end is not None:
        overrides["t_end"] = t_end
    if overrides:
        config = SimConfig(**{**config.__dict__, **overrides})
    X = system.check_state(x0)
    b, L, _ = X.shape
    dev, dt = X.device, X.dtype
    t = torch.cat([torch.zeros(1, dtype=dt),
                   torch.logspace(torch.log10(torch.tensor(config.t_start)).item(),
                                  torch.log10(torch.tensor(config.t_end)).item(),
                                  config.n_points - 1, dtype=dt)]).to(dev)
    params = (system.S_B, system.S_C, system.S_delta, system.A)
    alive = torch.ones(b, L, dtype=torch.bool, device=dev)
    blowup = torch.full((b, L), torch.inf, dtype=dt, device=dev)
    primary = torch.zeros(b, L, dtype=torch.bool, device=dev)
    last_rate = torch.full((b, L), torch.inf, dtype=dt, device=dev)  # no rise can be seen at the first step

    def f(idx):
        p_i, mask = [p[idx] for p in params], alive[idx][..., None]
        return lambda Y: token_rhs(*p_i, Y) * mask

    def on_step(idx, t_new, Y, F):
        r = _rel_rate(F, Y)
        hit = alive[idx] & blowing_up(Y, F, r, last_rate[idx], config.blowup_rate)
        last_rate[idx] = r
        if hit.any():
            # remaining time of a power-law blow-up; token l's trajectory ends when any j <= l blows up
            est = torch.where(hit, t_new[:, None] + 1.0 / (3.0 * r), torch.inf)
            ends = est.cummin(dim=-1).values
            newly = alive[idx] & torch.isfinite(ends)
            blowup[idx] = torch.where(newly, ends, blowup[idx])
            primary[idx] = primary[idx] | (hit & (est == ends))
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
            _finish_one(system, i, float(t_stop[i]), x_stop[i], alive[i], t, xs, blowup, primary, reached, config)
    if not reached.all():
        warnings.warn(f"{int((~reached).sum())} systems stopped before t_end (the solver gave up)",
                      RuntimeWarning, stacklevel=2)
    after = t[:, None, None] >= blowup[None]
    valid = ~after & reached[None, :, None]
    return Trajectory(t=t, x=xs, blowup_time=blowup, primary=primary, valid=valid, reached=reached,
                      config=config)
