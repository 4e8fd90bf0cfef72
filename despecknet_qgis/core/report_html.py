"""HTML report of region statistics: per polygon, a table and histograms with the fitted Gamma law."""
from __future__ import annotations

import html
import math

import numpy as np

from .region_stats import RegionStats


def gamma_pdf(u: np.ndarray, looks: float) -> np.ndarray:
    """Density of normalised intensity u = I / mean for L-look Gamma speckle."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(looks * math.log(looks) + (looks - 1) * np.log(u) - looks * u - math.lgamma(looks))


def histogram_svg(stats: RegionStats, width=320, height=180, bins=40) -> str:
    u = stats.values / stats.mean if stats.values is not None and stats.values.size and stats.mean > 0 else np.array([])
    if u.size < 2:
        return "<p>(too few pixels for a histogram)</p>"
    top = float(np.quantile(u, 0.995)) * 1.05
    counts, edges = np.histogram(u, bins=bins, range=(0.0, top), density=True)
    grid = np.linspace(edges[0] + 1e-6, edges[-1], 200)
    curve = gamma_pdf(grid, stats.gamma_looks) if math.isfinite(stats.gamma_looks) else np.zeros_like(grid)
    ymax = max(float(counts.max()), float(np.nanmax(curve[np.isfinite(curve)])) if np.isfinite(curve).any() else 0.0) * 1.1
    sx, sy = (width - 40) / top, (height - 30) / ymax
    bars = "".join(
        f'<rect x="{30 + edges[i] * sx:.1f}" y="{height - 20 - c * sy:.1f}" width="{max((edges[1] - edges[0]) * sx - 1, 1):.1f}" '
        f'height="{c * sy:.1f}" fill="#8fb3d1"/>' for i, c in enumerate(counts))
    pts = " ".join(f"{30 + g * sx:.1f},{height - 20 - min(c, ymax) * sy:.1f}" for g, c in zip(grid, curve) if np.isfinite(c))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{bars}'
            f'<polyline points="{pts}" fill="none" stroke="#c0392b" stroke-width="2"/>'
            f'<line x1="30" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" stroke="black"/>'
            f'<text x="{width / 2:.0f}" y="{height - 4}" font-size="11" text-anchor="middle">intensity / mean '
            f'(0 to {top:.2f}); red: Gamma, L = {stats.gamma_looks:.2f}</text></svg>')


def region_report(rows: list[tuple[str, str, RegionStats]], title: str = "deSpeckNet speckle statistics") -> str:
    """rows: (polygon label, raster label, stats). Groups by polygon."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif} table{border-collapse:collapse} td,th{border:1px solid #999;"
             "padding:3px 8px;text-align:right} .warn{color:#b03a2e}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>ENL = mean²/variance (higher is smoother); Cx = std/mean (lower is "
             "smoother); Gamma L: number of looks of a Gamma law fitted by maximum likelihood. Values in intensity.</p>"]
    polygons: dict[str, list] = {}
    for poly, raster, st in rows:
        polygons.setdefault(poly, []).append((raster, st))
    for poly, items in polygons.items():
        parts.append(f"<h2>Polygon {html.escape(poly)}</h2><table><tr><th>raster</th><th>pixels</th><th>mean</th>"
                     "<th>std</th><th>ENL</th><th>Cx</th><th>Gamma L</th></tr>")
        for raster, st in items:
            cls = " class='warn'" if st.too_small else ""
            parts.append(f"<tr{cls}><td style='text-align:left'>{html.escape(raster)}</td><td>{st.pixels}</td>"
                         f"<td>{st.mean:.5g}</td><td>{st.std:.5g}</td><td>{st.enl:.3f}</td><td>{st.cv:.4f}</td>"
                         f"<td>{st.gamma_looks:.3f}</td></tr>")
        parts.append("</table>")
        for raster, st in items:
            note = " <span class='warn'>(few pixels: unreliable)</span>" if st.too_small else ""
            parts.append(f"<h3>{html.escape(raster)}{note}</h3>{histogram_svg(st)}")
    parts.append("</body></html>")
    return "\n".join(parts)
