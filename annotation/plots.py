"""Pictures for the curator dashboard: score distributions as PNG bar charts (matplotlib)."""

from __future__ import annotations

import base64
import io

from annotation.agreement import Variable


def distribution_plots(distributions: list[tuple[Variable, dict[int, int]]]) -> list[tuple[Variable, str]]:
    """A bar chart per variable as a PNG data URI (small images wrap on narrow screens);
    none when nothing has been rated yet."""
    if not any(sum(counts.values()) for _, counts in distributions):
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    plots = []
    for variable, counts in distributions:
        # Figure, not pyplot: no global state, safe in a threaded web server.
        figure = Figure(figsize=(3.4, 2.4), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.bar([variable.value_name(value) for value in counts], list(counts.values()), color="#2f5fd0")
        axes.set_title(variable.label, fontsize=10)
        axes.set_ylabel("answers", fontsize=8)
        axes.tick_params(labelsize=8)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
        axes.spines[["top", "right"]].set_visible(False)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plots.append(
            (variable, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
        )
    return plots
