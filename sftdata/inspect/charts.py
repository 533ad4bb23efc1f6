"""Charts of a build's distributions as inline SVG (no script, no network): document lengths,
trained-token ratios and row fill, one series per build (the report has one, a diff page two)."""

from __future__ import annotations

import html

import numpy as np

from .build_data import BuildData


def _nice(n: float) -> str:
    if n >= 10000:
        return f"{n / 1000:.0f}k"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return f"{n:g}" if n != int(n) else f"{int(n)}"


def histogram_svg(title: str, series: list[tuple[str, np.ndarray, str]], bins: np.ndarray, x_label: str,
                  x_format=_nice, marker: tuple[float, str] | None = None, note: str = "") -> str:
    """A histogram as inline SVG; several series share the bins as side-by-side bars."""
    w, h, left, right, top, bottom = 400, 220, 46, 14, 40, 44
    pw, ph = w - left - right, h - top - bottom
    esc = html.escape
    counts = [np.histogram(np.asarray(v, dtype=np.float64), bins=bins)[0] for _, v, _ in series]
    ymax = max([int(c.max()) for c in counts if c.size] + [1])
    ymax += ymax % 2  # so the middle grid line is a whole count
    nb = len(bins) - 1
    bw = pw / nb
    out = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
           f'aria-label="{esc(title)}" xmlns="http://www.w3.org/2000/svg">',
           f'<text x="{left}" y="16" class="ct">{esc(title)}</text>']
    if note:
        out.append(f'<text x="{left}" y="31" class="cn">{esc(note)}</text>')
    for frac in (0, 0.5, 1):
        y = top + ph - frac * ph
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="gl"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" class="yt">{esc(_nice(round(ymax * frac)))}</text>')
    s = len(series)
    for k, ((name, _, color), c) in enumerate(zip(series, counts)):
        for i, n in enumerate(c.tolist()):
            if not n:
                continue
            bh = n / ymax * ph
            x = left + i * bw + k * bw / s + 0.5
            label = f"{name}: " if s > 1 else ""
            out.append(f'<rect x="{x:.1f}" y="{top + ph - bh:.1f}" width="{max(bw / s - 1, 1):.1f}" '
                       f'height="{bh:.1f}" fill="{color}"><title>{esc(label)}{esc(x_format(bins[i]))}–'
                       f'{esc(x_format(bins[i + 1]))}: {n:,}</title></rect>')
    for i in range(0, nb + 1, max(nb // 5, 1)):
        x = left + i * bw
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" class="xt">{esc(x_format(bins[i]))}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{h - 6}" class="xl">{esc(x_label)}</text>')
    if marker is not None and bins[0] <= marker[0] <= bins[-1]:
        x = left + (marker[0] - bins[0]) / (bins[-1] - bins[0]) * pw
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" class="mk"/>'
                   f'<text x="{x - 4:.1f}" y="{top + 10}" class="mt">{esc(marker[1])}</text>')
    if s > 1:
        x = w - right
        for name, _, color in reversed(series):
            x -= 14 + 6 * len(name) + 10
            out.append(f'<rect x="{x:.0f}" y="8" width="10" height="10" fill="{color}"/>'
                       f'<text x="{x + 14:.0f}" y="17" class="lg">{esc(name)}</text>')
    if not any(c.sum() for c in counts):
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" class="xl">no data</text>')
    out.append("</svg>")
    return "".join(out)


def length_bins(lengths: np.ndarray, max_length: int | None) -> np.ndarray:
    """About 30 bins of a round width, up to the longest document; up to the length limit too when that
    is at most twice as long (the data then still fills half the axis)."""
    longest = max(int(lengths.max()) if len(lengths) else 1, 1)
    top = max_length if max_length and longest < max_length <= 2 * longest else longest
    raw = top / 30
    step = next(m * 10 ** e for e in range(12) for m in (1, 2, 5) if m * 10 ** e >= raw)
    return np.arange(0, top + step, step, dtype=np.float64)


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def distribution_charts(sides: list[tuple[str, BuildData, str]]) -> list[str]:
    """Document lengths, trained-token ratios and row fill, one series per build."""
    max_length = max((s[1].max_length or 0) for s in sides) or None
    lengths = np.concatenate([s[1].docs.length for s in sides]) if sides else np.zeros(0)
    bins = length_bins(lengths, max_length)
    marked = max_length is not None and max_length <= bins[-1]
    charts = [
        histogram_svg("Document length", [(n, b.docs.length, c) for n, b, c in sides], bins, "tokens per document",
                      marker=(max_length, f"max length {max_length:,}") if marked else None,
                      note=f"max length {max_length:,}: beyond the longest document" if max_length and not marked
                      else ""),
        histogram_svg("Trained-token ratio", [(n, b.docs.ratio, c) for n, b, c in sides],
                      np.linspace(0, 1, 21), "trained tokens / tokens, per document", x_format=_pct),
    ]
    if max_length:
        packed = any(b.packed for _, b, _ in sides)
        charts.append(histogram_svg(
            "Packing fill" if packed else "Row fill (not packed)",
            [(n, np.minimum(b.row_tokens / max_length, 1.0), c) for n, b, c in sides], np.linspace(0, 1, 21),
            f"tokens per row / max length {max_length:,}", x_format=_pct,
            note="" if packed else "one document per row: the rest of each row is padding"))
    return charts
