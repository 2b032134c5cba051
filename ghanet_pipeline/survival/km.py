"""Kaplan-Meier curves of two risk groups with a log-rank test (lifelines + matplotlib Agg).

Censorship follows the MCAT convention used everywhere in the pipeline: ``censorship`` 1 means
censored (alive at last follow-up), so the event indicator is ``1 - censorship``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

GROUP_COLOURS = {"high": "#c0392b", "low": "#2471a3"}


@dataclass(frozen=True)
class KMResult:
    png: bytes
    p_value: float | None  # None when the test is undefined (a group is empty or has no events)
    n_high: int
    n_low: int
    events_high: int
    events_low: int


def split_at(risk: np.ndarray, threshold: float) -> np.ndarray:
    """``"high"`` where risk is above ``threshold``, else ``"low"`` (NaN risk: ``"low"``).

    The one high/low rule of the pipeline: the report's held-out curves and ``ghanet infer``'s
    ``risk_group`` both call it (a scalar risk gives a 0-d array; ``str()`` of it is the label).
    """
    return np.where(np.asarray(risk, dtype=float) > threshold, "high", "low")


def logrank_p(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> float | None:
    """Log-rank p-value of high vs low; ``None`` when a group is empty or there is no event."""
    from lifelines.statistics import logrank_test

    high, low = groups == "high", groups == "low"
    if not high.any() or not low.any() or event.sum() == 0:
        return None
    result = logrank_test(time[high], time[low], event_observed_A=event[high], event_observed_B=event[low])
    p = float(result.p_value)
    return p if np.isfinite(p) else None


def plot(time, censorship, groups, title: str) -> KMResult:
    """A PNG of the two Kaplan-Meier curves (with 95% bands) and the log-rank p-value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter

    time = np.asarray(time, dtype=float)
    event = 1 - np.asarray(censorship, dtype=int)
    groups = np.asarray(groups).astype(str)
    keep = np.isfinite(time)
    time, event, groups = time[keep], event[keep], groups[keep]
    p_value = logrank_p(time, event, groups)

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=100)
    try:
        for name in ("high", "low"):
            mask = groups == name
            if not mask.any():
                continue
            kmf = KaplanMeierFitter(label=f"{name} risk (n={int(mask.sum())}, events={int(event[mask].sum())})")
            kmf.fit(time[mask], event_observed=event[mask])
            kmf.plot_survival_function(ax=ax, color=GROUP_COLOURS[name], ci_show=True, show_censors=True,
                                       censor_styles={"ms": 5, "marker": "|"})
        p_text = "log-rank p = n/a" if p_value is None else f"log-rank p = {p_value:.3g}"
        ax.set_title(f"{title}\n{p_text}", fontsize=10)
        ax.set_xlabel("months")
        ax.set_ylabel("survival probability")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    high = groups == "high"
    return KMResult(
        png=buf.getvalue(),
        p_value=p_value,
        n_high=int(high.sum()),
        n_low=int((~high).sum()),
        events_high=int(event[high].sum()),
        events_low=int(event[~high].sum()),
    )
