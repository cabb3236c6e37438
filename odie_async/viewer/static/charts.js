// Tiny SVG charts for odie view: line charts (over time, or against load) and horizontal grouped bars.
// Every label is set through textContent, so no data can become markup.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#3b6fd8", "#d8573b", "#2a9d5b", "#a855c8", "#d89a1e", "#1e9bb0", "#c83b7d", "#6b7385"];
  const MAX_DRAWN = 600;

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    return v.toFixed(2).replace(/\.?0+$/, "") || "0";
  }

  function niceStep(raw) {
    // A round step (1, 2, 2.5, 3, 4 or 5 times a power of ten): the y axis reads 0, 2500, 5000 ... not 0, 2396, 4793 ...
    if (!(raw > 0) || !isFinite(raw)) return 0.25;
    const power = 10 ** Math.floor(Math.log10(raw));
    return power * [1, 2, 2.5, 3, 4, 5, 10].find((m) => m * power >= raw * (1 - 1e-9));
  }

  function thin(points) {
    // At most MAX_DRAWN points: the highest of each run of `step` (a spike stays visible), and the last.
    // A run of any length draws in the same time, and no array is ever spread into a call.
    if (points.length <= MAX_DRAWN) return points;
    const step = Math.ceil(points.length / MAX_DRAWN);
    const out = [];
    for (let i = 0; i < points.length; i += step) {
      let best = points[i];
      for (let j = i + 1; j < Math.min(i + step, points.length); j++) {
        const y = points[j][1];
        if (y !== null && y !== undefined && (best[1] === null || best[1] === undefined || y > best[1])) best = points[j];
      }
      out.push(best);
    }
    if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
    return out;
  }

  function extent(values, lo, hi) {
    // [min, max] by a loop: Math.min(...values) overflows the stack on a long run.
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    return [lo, hi];
  }

  function legend(card, names, colors) {
    const box = document.createElement("div");
    box.className = "legend";
    names.forEach((name, i) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = colors ? colors[i] : COLORS[i % COLORS.length];
      item.append(swatch, document.createTextNode(name));
      box.append(item);
    });
    card.append(box);
  }

  function frame(card, title) {
    card.replaceChildren();
    card.classList.add("card", "chart");
    card.append(Object.assign(document.createElement("h3"), { textContent: title }));
  }

  // series: [{name, points: [[x, y], ...], color?, dash?}]; x in seconds unless opts.xUnit says otherwise.
  // opts: minMax (least top of the y axis), xUnit, xLog (log2 x axis), xTicks (x values to label),
  // dots (a dot per point), marks ([{x, label, color}]: vertical lines, the knee), limits ([{y, label}]:
  // horizontal lines, the SLO), legendValues (false: names only in the legend).
  function line(card, title, series, opts) {
    opts = opts || {};
    frame(card, title);
    const W = 440, H = 190, L = 46, R = 10, T = 8, B = 24;
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    svg.dataset.points = String(extent(series.map((s) => s.points.length), 0, 0)[1]);
    series = series.map((s) => Object.assign({}, s, { points: thin(s.points) }));
    const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
    svg.dataset.drawn = String(extent(series.map((s) => s.points.length), 0, 0)[1]);
    card.append(svg);
    if (!all.length) {
      card.append(Object.assign(document.createElement("div"), { className: "empty", textContent: "no data yet" }));
      return;
    }
    const [x0, xMax] = extent(all.map((p) => p[0]), Infinity, -Infinity);
    const top = extent(all.map((p) => p[1]), Infinity, opts.minMax || 0)[1];
    const limits = (opts.limits || []).filter((l) => isFinite(l.y));
    const shown = limits.filter((l) => l.y <= 4 * top);  // a far-off SLO would flatten the data: named, not drawn
    const x1 = Math.max(xMax, opts.xLog ? x0 * 2 : x0 + 1);
    const high = Math.max(top, ...shown.map((l) => l.y)) * 1.04;
    const step = niceStep(high / 4), rungs = Math.max(1, Math.ceil(high / step)), y1 = rungs * step, y0 = 0;
    const fx = opts.xLog ? (x) => Math.log2(Math.max(x, 1e-9)) : (x) => x;
    const sx = (x) => L + ((fx(x) - fx(x0)) / (fx(x1) - fx(x0))) * (W - L - R);
    const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
    for (let i = 0; i <= rungs; i++) {
      const y = y0 + step * i;
      svg.append(el("line", { class: "grid-line", x1: L, x2: W - R, y1: sy(y), y2: sy(y) }));
      svg.append(el("text", { x: L - 4, y: sy(y) + 4, "text-anchor": "end" }, fmt(y)));
    }
    svg.append(el("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    const unit = opts.xUnit === undefined ? "s" : opts.xUnit;
    const ticks = opts.xTicks || [0, 1, 2, 3, 4].map((i) => opts.xLog ? 2 ** (fx(x0) + ((fx(x1) - fx(x0)) * i) / 4) : x0 + ((x1 - x0) * i) / 4);
    let lastTick = -Infinity;
    ticks.forEach((x, i) => {
      const at = sx(x);
      if (at - lastTick < 18) return;  // keep the labels apart
      lastTick = at;
      const anchor = i === ticks.length - 1 && at > W - R - 12 ? "end" : "middle";
      svg.append(el("text", { x: at, y: H - 6, "text-anchor": anchor }, fmt(x) + unit));
    });
    for (const l of shown) {
      svg.append(el("line", { class: "limit", "data-y": l.y, x1: L, x2: W - R, y1: sy(l.y), y2: sy(l.y) }));
      svg.append(el("text", { class: "limit-label", x: W - R - 2, y: sy(l.y) - 3, "text-anchor": "end" }, l.label));
    }
    (opts.marks || []).filter((m) => m.x !== null && m.x !== undefined && isFinite(m.x)).forEach((m, i) => {
      const at = sx(m.x), right = at > W - R - 110;
      svg.append(el("line", { class: "mark", "data-x": m.x, x1: at, x2: at, y1: T, y2: H - B, stroke: m.color || "#c0392b" }));
      const label = el("text", { class: "mark-label", x: right ? at - 3 : at + 3, y: T + 10 + 12 * i,
        "text-anchor": right ? "end" : "start" }, m.label);  // one label under the other: two knees may share a load
      label.style.fill = m.color || "#c0392b";
      svg.append(label);
    });
    series.forEach((s, i) => {
      // A sample with no value (no request finished in that second) breaks the line.
      const color = s.color || COLORS[i % COLORS.length];
      const pts = s.points;
      const d = pts.map((p, j) => {
        if (p[1] === null || p[1] === undefined) return "";
        const gap = j === 0 || pts[j - 1][1] === null || pts[j - 1][1] === undefined;
        return `${gap ? "M" : "L"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`;
      }).join("");
      const last = lastPoint(pts);
      if (!last) return;
      const path = el("path", { d, fill: "none", stroke: color, "stroke-width": 1.8 });
      if (s.dash) path.setAttribute("stroke-dasharray", s.dash);
      svg.append(path);
      const dotted = opts.dots ? pts.filter((p) => p[1] !== null && p[1] !== undefined) : [last];
      for (const p of dotted) svg.append(el("circle", { class: opts.dots ? "dot" : "last", cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color }));
    });
    const names = series.map((s) => opts.legendValues === false ? s.name : `${s.name}: ${fmt(lastValue(s.points))}`);
    legend(card, names, series.map((s, i) => s.color || COLORS[i % COLORS.length]));
    const off = limits.filter((l) => !shown.includes(l));
    if (off.length) card.append(Object.assign(document.createElement("div"), { className: "empty", textContent: off.map((l) => `${l.label}: above the chart`).join(" · ") }));
  }

  function lastPoint(points) {
    for (let i = points.length - 1; i >= 0; i--) if (points[i][1] !== null && points[i][1] !== undefined) return points[i];
    return null;
  }

  function lastValue(points) {
    const last = lastPoint(points);
    return last ? last[1] : null;
  }

  // groups: ["label", ...]; series: [{name, values: [number|null per group]}]; horizontal bars.
  function bars(card, title, groups, series, opts) {
    opts = opts || {};
    frame(card, title);
    if (!groups.length || !series.length) {
      card.append(Object.assign(document.createElement("div"), { className: "empty", textContent: "nothing to show" }));
      return;
    }
    const W = 440, L = 150, R = 48, bar = 14, gap = 10;
    const rowH = series.length * bar + gap;
    const H = groups.length * rowH + 8;
    const max = opts.max || extent(series.flatMap((s) => s.values.filter((v) => v !== null && isFinite(v))), Infinity, 1e-9)[1];
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    svg.dataset.bars = String(groups.length * series.length);
    groups.forEach((g, gi) => {
      const top = 4 + gi * rowH;
      const label = el("text", { x: L - 6, y: top + (series.length * bar) / 2 + 4, "text-anchor": "end" },
        g.length > 24 ? g.slice(0, 23) + "…" : g);
      label.append(el("title", {}, g));
      svg.append(label);
      series.forEach((s, si) => {
        const v = s.values[gi];
        const w = v === null || v === undefined ? 0 : (Math.max(0, v) / max) * (W - L - R);
        svg.append(el("rect", { x: L, y: top + si * bar, width: w, height: bar - 2, fill: COLORS[si % COLORS.length] }));
        svg.append(el("text", { x: L + w + 4, y: top + si * bar + bar - 4 }, opts.percent ? fmt(v * 100) + "%" : fmt(v)));
      });
    });
    card.append(svg);
    if (series.length > 1 || opts.legend) legend(card, series.map((s) => s.name));
  }

  return { line, bars, fmt, COLORS };
})();
