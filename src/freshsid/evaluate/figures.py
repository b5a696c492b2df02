"""Figure helpers shared by every report: a stateless matplotlib figure, its PNG bytes,
and point labels that do not stack."""

from __future__ import annotations

import io


def new_figure(width: float = 7.0, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # A bare Figure (not pyplot) keeps no global state, so nothing leaks between calls.
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    return fig, fig.add_subplot()


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def label_points(fig, ax, points: list[tuple[str, float, float, str]]) -> None:
    """Label each point to its right, pushing apart labels of points at similar x.

    Fine-tune policies share nearly the same compute, so their labels would stack;
    within a column of points, labels are spaced one text line apart.
    """
    fig.draw_without_rendering()  # run the layout so data->pixel transforms are final
    line = 11 * fig.dpi / 72  # pixels per label line
    pixels = sorted((*ax.transData.transform((x, y)), name, color, (x, y)) for name, x, y, color in points)
    columns: list[list] = []
    for item in pixels:
        if columns and item[0] - columns[-1][0][0] < 40:
            columns[-1].append(item)
        else:
            columns.append([item])
    for column in columns:
        column.sort(key=lambda item: item[1])
        placed: list[float] = []
        for item in column:
            placed.append(max(item[1], placed[-1] + line) if placed else item[1])
        shift = sum(item[1] - y for item, y in zip(column, placed, strict=True)) / len(column)
        for (_, py, name, color, xy), label_y in zip(column, placed, strict=True):
            dy = (label_y + shift - py) * 72 / fig.dpi
            arrow = {"arrowstyle": "-", "color": "0.6", "linewidth": 0.6} if abs(dy) > 3 else None
            text = ax.annotate(name, xy, xytext=(10, dy), textcoords="offset points", fontsize=8,
                               va="center", color=color, arrowprops=arrow)
            text.set_in_layout(False)  # labels must not shrink the axes after they were placed
