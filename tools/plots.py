"""Line charts drawn with PIL for the tools' reports: a score in [0, 1] against categorical x values (label budgets),
one coloured line per series, and the legend beside them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw

COLOURS = [(120, 120, 120), (31, 119, 180), (44, 160, 44), (255, 127, 14), (214, 39, 40), (148, 103, 189),
           (140, 86, 75)]


def draw_lines(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float],
               series: Mapping[str, Mapping], xs: Sequence, title: str, x_label: str) -> None:
    """One panel inside ``box = (left, top, width, height)``: y ticks 0..1, the ``xs`` evenly spaced, the title
    above and ``x_label`` below; ``series`` maps a name to ``{x: y}`` (missing x values are skipped)."""
    left, top, width, height = box
    x_of = {x: left + (i + 0.5) * width / len(xs) for i, x in enumerate(xs)}

    def y_of(value: float) -> float:
        return top + height * (1.0 - value)

    draw.rectangle([left, top, left + width, top + height], outline="black")
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line([left - 4, y_of(tick), left, y_of(tick)], fill="black")
        draw.text((left - 40, y_of(tick) - 6), f"{tick:.2f}", fill="black")
    for x, position in x_of.items():
        draw.text((position - 6, top + height + 8), str(x), fill="black")
    draw.text((left + width / 2 - 60, top + height + 30), x_label, fill="black")
    draw.text((left, top - 28), title, fill="black")
    for k, values in enumerate(series.values()):
        colour = COLOURS[k % len(COLOURS)]
        points = [(x_of[x], y_of(values[x])) for x in xs if x in values]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def draw_legend(draw: ImageDraw.ImageDraw, origin: tuple[float, float], names: Sequence[str]) -> None:
    """A colour swatch and the name of each series, one per line from ``origin``, in ``draw_lines``' colours."""
    left, top = origin
    for k, name in enumerate(names):
        colour = COLOURS[k % len(COLOURS)]
        draw.line([left, top + 18 * k, left + 20, top + 18 * k], fill=colour, width=3)
        draw.text((left + 25, top - 6 + 18 * k), name, fill="black")


def plot_panels(path: str, panels: Mapping[str, Mapping[str, Mapping]], xs: Sequence, x_label: str,
                panel: tuple[int, int] = (300, 300), margin: tuple[int, int, int, int] = (70, 50, 40, 60),
                legend: int = 170) -> None:
    """Save a row of ``draw_lines`` panels, ``{title: {series name: {x: y}}}``, with one legend (the first
    panel's series names) at the right; ``margin = (left, top, gap, bottom)``."""
    left, top, gap, bottom = margin
    size = (left + len(panels) * (panel[0] + gap + left) + legend, top + panel[1] + bottom)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for k, (title, series) in enumerate(panels.items()):
        draw_lines(draw, (left + k * (panel[0] + gap + left), top, *panel), series, xs, title, x_label)
    draw_legend(draw, (size[0] - legend + 10, top + 15), list(next(iter(panels.values()))))
    image.save(path)
