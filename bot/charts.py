"""A PNG bar chart of usage per day and task, drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from bot.usage import UsageStats

COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2")
WIDTH, HEIGHT, MARGIN, LEGEND = 800, 400, 40, 140


def usage_chart(stats: UsageStats) -> bytes:
    """Stacked bars: one per day, one colour per task, with a legend and the day's total."""
    days = sorted({day for day, _ in stats.per_day})
    tasks = sorted({task for _, task in stats.per_day})
    color = {task: COLORS[i % len(COLORS)] for i, task in enumerate(tasks)}
    totals = {day: sum(n for (d, _), n in stats.per_day.items() if d == day) for day in days}
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    plot_w, plot_h = WIDTH - 2 * MARGIN - LEGEND, HEIGHT - 2 * MARGIN
    draw.line([(MARGIN, MARGIN), (MARGIN, MARGIN + plot_h), (MARGIN + plot_w, MARGIN + plot_h)],
              fill="black")  # fmt: skip
    if not days:
        draw.text((MARGIN + 10, MARGIN + 10), "no usage in this period", fill="black")
    peak = max(totals.values(), default=1)
    slot = plot_w / max(1, len(days))
    for index, day in enumerate(days):
        left = MARGIN + index * slot + slot * 0.15
        right = left + slot * 0.7
        bottom = MARGIN + plot_h
        for task in tasks:
            count = stats.per_day.get((day, task), 0)
            height = plot_h * count / peak
            if count:
                draw.rectangle([(left, bottom - height), (right, bottom)], fill=color[task])
            bottom -= height
        draw.text((left, bottom - 14), str(totals[day]), fill="black")
        draw.text((left, MARGIN + plot_h + 6), day[5:], fill="black")
    for index, task in enumerate(tasks):
        y = MARGIN + index * 20
        draw.rectangle([(WIDTH - LEGEND, y), (WIDTH - LEGEND + 12, y + 12)], fill=color[task])
        draw.text((WIDTH - LEGEND + 18, y), task, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
