"""The overview's chart, drawn on the server as SVG: machine files expiring per week,
one bar per week of ``services.fleet.Overview.weeks``.

``expiry_chart`` computes the geometry (pure arithmetic on the counts);
``templates/chart.html`` draws it with presentation attributes and classes only (the
Content-Security-Policy forbids inline styles and scripts). No I/O here.
"""

import datetime as dt
from dataclasses import dataclass

from ...services.fleet import Week

WIDTH, HEIGHT = 1040, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 12, 28
MIN_TICK_GAP = 56  # px between month labels


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    week: str  # YYYY-MM-DD, the week's Monday
    files: int


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    baseline: float
    top: int
    most: int  # the tallest bar's count (the y axis' top label)
    bars: list[Bar]
    ticks: list[Tick]  # the first week of each month, labelled


def _date(t: int) -> dt.date:
    return dt.datetime.fromtimestamp(t, dt.UTC).date()


def expiry_chart(weeks: list[Week]) -> Chart:
    most = max((w.files for w in weeks), default=0)
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(weeks))
    bars: list[Bar] = []
    ticks: list[Tick] = []
    last_month = None
    for i, w in enumerate(weeks):
        h = 0.0 if most == 0 else plot_h * w.files / most
        if w.files and h < 1:
            h = 1.0  # a week with files never looks empty
        x = LEFT + i * step
        day = _date(w.starts_at)
        bars.append(Bar(x + 1, TOP + plot_h - h, max(1.0, step - 2), h, day.isoformat(), w.files))
        if day.month != last_month:
            last_month = day.month
            if not ticks or x - ticks[-1].x >= MIN_TICK_GAP:
                label = day.strftime("%b %Y" if day.month == 1 or not ticks else "%b")
                ticks.append(Tick(x, label))
    return Chart(WIDTH, HEIGHT, LEFT, TOP + plot_h, TOP, most, bars, ticks)
