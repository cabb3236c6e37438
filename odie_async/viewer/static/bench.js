// odie view: an odie bench result (results.json and recommended.yaml) as charts against load, a table
// of the points and the settings to use; in Compare, several bench results on the same axes.
// Everything in results.json is untrusted (the endpoint's URL, the model, the workload, the warnings):
// it only ever reaches the page through textContent (h() with text or children, Charts). The command lines
// it suggests are built by the server, every value checked against its type and shell-quoted.
"use strict";

const Bench = (() => {
  const store = {};  // run id -> the last snapshot /api/runs/ID/bench answered
  let selected = null, stale = false;
  const KNEE = "#c0392b";
  const QUANTILES = { latency_ms: ["p50", "p95", "p99"], ttft_ms: ["p50", "p95"], itl_ms: ["p50", "p95"] };
  const CHARTS = [  // key, title, value of a point for a quantile (or none), whether streamed answers are needed
    ["rps", "Requests/s", (p) => p.requests_per_s, false],
    ["tps", "Output tokens/s", (p) => p.output_tokens_per_s, false],
    ["latency", "Latency (ms)", "latency_ms", false],
    ["ttft", "Time to first token (ms)", "ttft_ms", true],
    ["itl", "Inter-token latency (ms)", "itl_ms", true],
  ];

  const runs = () => state.runs.filter((r) => r.bench);

  function axis(points) {
    const rate = points.length && points[0].kind !== "concurrency";
    const loads = points.map((p) => p.load);
    const lo = loads.reduce((a, b) => Math.min(a, b), Infinity), hi = loads.reduce((a, b) => Math.max(a, b), -Infinity);
    return { name: rate ? "requests/s sent" : "concurrency", unit: rate ? "/s" : "", log: !rate && hi / Math.max(lo, 1) >= 8 };
  }

  const streamed = (points) => points.some((p) => p.ttft_ms || p.itl_ms);
  const quantile = (p, key, q) => (p[key] || {})[q] ?? null;

  // entries: [{name, results, color?}]; one series per entry and quantile, each entry's knee and SLO marked.
  // quantiles given (Compare): the runs overlaid, each in its colour and named; else one run's own page.
  function charts(entries, ids, quantiles) {
    const points = entries.flatMap((e) => e.results.points);
    const ax = axis(points);
    const ticks = [...new Set(points.map((p) => p.load))].sort((a, b) => a - b);
    const many = Boolean(quantiles);
    const cards = [];
    for (const [key, title, pick, needsStream] of CHARTS) {
      if (needsStream && !entries.some((e) => streamed(e.results.points))) continue;
      const series = entries.flatMap((e) => {
        const sorted = [...e.results.points].sort((a, b) => a.load - b.load);
        if (typeof pick === "function") return [{ name: many ? e.name : title.replace(/ \(.*/, ""), color: e.color, points: sorted.map((p) => [p.load, pick(p)]) }];
        return (quantiles || QUANTILES[pick]).map((q, qi) => ({
          name: many ? `${e.name} ${q}` : q, color: many ? e.color : undefined, dash: (many && qi) || q === "p99" ? "4 3" : undefined,
          points: sorted.map((p) => [p.load, quantile(p, pick, q)]),
        }));
      });
      const marks = entries.filter((e) => e.results.recommended).map((e) => ({
        x: e.results.recommended.point.load, color: many ? e.color : KNEE,
        label: many ? `${e.name} knee` : `knee: ${e.results.recommended.point.label}`,
      }));
      const limits = typeof pick === "function" ? [] : entries.flatMap((e) => Object.entries(e.results.slo_ms || {})
        .filter(([k]) => `${k.split("_p")[0]}_ms` === pick)
        .map(([k, v]) => ({ y: v, label: `${many ? e.name + " " : ""}SLO ${k.replace("_", " ")} ${Charts.fmt(v)} ms` })));
      const card = h("div", { id: `${ids}-${key}` });
      const label = quantiles ? title.replace(" (ms)", ` ${quantiles.join(" / ")} (ms)`) : title;
      Charts.line(card, `${label} against ${ax.name}`, series,
        { xUnit: ax.unit, xLog: ax.log, xTicks: ticks, dots: true, marks, limits, legendValues: false });
      cards.push(card);
    }
    return cards;
  }

  // ---- one run ------------------------------------------------------------------------------

  function field(name, value) {
    return [h("dt", { text: name }), h("dd", { text: value })];
  }

  const ms = (v) => (v === null || v === undefined ? "–" : v >= 1000 ? Math.round(v).toLocaleString("en-US") : Charts.fmt(v));

  function head(run, r) {
    const knee = r.recommended;
    const slo = Object.entries(r.slo_ms || {}).map(([k, v]) => `${k} ≤ ${Charts.fmt(v)} ms`).join(", ") || "none given";
    const machine = r.client_machine || {};
    const rows = [
      ["Endpoint", r.embedded ? `${r.base_url} (the embedded model, served for this bench)` : r.base_url],
      ["Model", r.model || "–"],
      ["Workload", r.workload],
      ["Mode", `${r.mode || "–"}, ${Charts.fmt(r.duration_s)} s per load level, ${r.points.length} levels`],
      ["SLO", slo],
      ["Knee", knee ? `${knee.point.label}: ${Charts.fmt(knee.point.requests_per_s)} req/s, ${Charts.fmt(knee.point.output_tokens_per_s)} output tok/s, `
        + `latency p95 ${ms(quantile(knee.point, "latency_ms", "p95"))} ms (best seen ${Charts.fmt(knee.max_requests_per_s)} req/s)`
        : "none: no load level met the SLO without errors"],
      [r.running ? "Running" : "Stopped", r.interrupted ? `interrupted: the ${r.points.length} levels measured before it` : r.stop_reason],
      ["Finished", r.finished_at || "–"],
    ];
    if (machine.cpus) rows.push(["Client", `${machine.cpus} CPUs, load average ${machine.load_average_at_start} at the start, ${machine.load_average_at_end} at the end`]);
    if (!streamed(r.points)) rows.push(["TTFT, ITL", "not measured: no answer was streamed"]);
    const box = h("div", { class: "card", id: "bench-head" }, h("h3", { text: `odie bench: ${run.name}` }),
      h("dl", { class: "fields" }, ...rows.flatMap(([k, v]) => field(k, v))));
    if (r.interrupted) box.classList.add("interrupted");
    const warnings = r.warnings || [];
    if (warnings.length) box.append(h("ul", { class: "warnings" }, ...warnings.map((w) => h("li", { text: w }))));
    return box;
  }

  const COLUMNS = [
    ["load", (p) => p.label], ["req/s", (p) => Charts.fmt(p.requests_per_s)], ["tok/s", (p) => Charts.fmt(p.output_tokens_per_s)],
    ...["p50", "p95", "p99"].map((q) => [`latency ${q} ms`, (p) => ms(quantile(p, "latency_ms", q))]),
    ...["p50", "p95"].map((q) => [`TTFT ${q} ms`, (p) => ms(quantile(p, "ttft_ms", q))]),
    ...["p50", "p95"].map((q) => [`ITL ${q} ms`, (p) => ms(quantile(p, "itl_ms", q))]),
    ["ok", (p) => String(p.succeeded ?? "–")],
    ["errors", (p) => `${p.failed ?? 0}` + (Object.keys(p.error_codes || {}).length ? ` (${Object.entries(p.error_codes).map(([c, n]) => `${c} ${n}`).join(", ")})` : "")],
    ["429s", (p) => String(p.rate_limited_429 ?? 0)],
    ["client µs/req", (p) => ms((p.client || {}).cpu_us_per_request)],
    ["client-bound", (p) => p.client_bound || ""],
  ];

  function table(r) {
    const kneeLoad = r.recommended ? r.recommended.point.load : null;
    const sorted = [...r.points].sort((a, b) => a.load - b.load);
    const streamedCols = streamed(r.points);
    const cols = COLUMNS.filter(([name]) => streamedCols || !/^(TTFT|ITL)/.test(name));
    const body = sorted.map((p) => {
      const row = h("tr", { "data-load": p.load }, ...cols.map(([name, value]) => h("td", { class: name === "client-bound" ? "warning" : "", text: value(p) })));
      if (p.load === kneeLoad) { row.classList.add("knee"); row.firstChild.append(" ", h("span", { class: "badge knee", text: "knee" })); }
      if (p.client_bound) row.classList.add("client-bound");
      return row;
    });
    return h("div", { class: "card", id: "bench-points" }, h("h3", { text: "Load levels" }),
      h("table", { class: "points" }, h("thead", {}, h("tr", {}, ...cols.map(([name]) => h("th", { text: name })))), h("tbody", {}, ...body)));
  }

  function recommended(snap) {
    const yaml = snap.recommended === null ? "no recommended.yaml beside results.json: the settings below come from results.json" : snap.recommended;
    return h("div", { class: "card", id: "bench-recommended" }, h("h3", { text: "Recommended settings (recommended.yaml)" }),
      h("pre", { id: "bench-yaml", text: yaml }), h("h3", { text: "Use them" }), h("pre", { id: "bench-command", text: snap.command || "" }));
  }

  function page(run, snap) {
    if (!snap) return [h("p", { class: "empty", text: "loading…" })];
    if (snap.error) return [h("p", { class: "error", id: "bench-error", text: snap.error })];
    const where = `${(snap.folder || ".").replace(/\/+$/, "")}/results.json`;
    if (snap.waiting) return [h("p", { class: "empty", id: "bench-waiting", text: `waiting for ${where}: odie bench writes it when its last load level ends (or it is interrupted)` })];
    const r = snap.results;
    if (!r.points.length) return [head(run, r), h("p", { class: "empty", text: "no load level was measured" })];
    return [head(run, r), h("div", { class: "grid", id: "bench-charts" }, ...charts([{ name: run.name, results: r }], "bench")), table(r), recommended(snap)];
  }

  function draw() {
    const list = runs();
    if (!list.length) return;
    if (selected === null || !list.some((r) => r.id === selected)) selected = list[0].id;
    const picker = $("bench-run");
    picker.parentElement.hidden = list.length < 2;
    if (picker.options.length !== list.length) picker.replaceChildren(...list.map((r) => h("option", { value: r.id, text: r.name })));
    picker.value = String(selected);
    $("bench-page").replaceChildren(...page(list.find((r) => r.id === selected), store[selected]));
    stale = false;
  }

  function select(id) {
    selected = Number(id);
    draw();
  }

  // Called on the page's one-second tick, beside the live metrics: a finished bench costs two stat calls a second.
  async function poll() {
    let changed = false;
    for (const run of runs()) {
      const known = store[run.id];
      try {
        const got = await api(`/api/runs/${run.id}/bench` + (known ? `?since=${encodeURIComponent(known.version)}` : ""));
        if (got.unchanged) continue;
        store[run.id] = got;
        changed = true;
      } catch (err) { console.warn(err); }
    }
    if (!changed && !stale) return false;
    if (!document.hidden && !$("view-bench").hidden) draw();
    else stale = true;
    return changed;
  }

  // ---- compare ------------------------------------------------------------------------------

  function compareCards(compared) {
    const good = compared.filter((c) => c.bench && c.bench.results && c.bench.results.points.length);
    const cards = compared.filter((c) => c.bench && c.bench.error).map((c) => h("p", { class: "error", text: c.bench.error }));
    if (!good.length) return cards;
    const entries = good.map((c, i) => ({ name: c.name, results: c.bench.results, color: Charts.COLORS[i % Charts.COLORS.length] }));
    const groups = new Map();  // concurrency sweeps and request rates have different x axes
    for (const e of entries) {
      const key = axis(e.results.points).name;
      groups.set(key, [...(groups.get(key) || []), e]);
    }
    for (const [key, group] of groups) cards.push(...charts(group, groups.size > 1 ? `compare-bench-${key.split(" ")[0]}` : "compare-bench", ["p95"]));
    cards.push(compareTable(entries));
    return cards;
  }

  function compareTable(entries) {
    const cols = ["run", "endpoint", "model", "workload", "knee", "req/s at knee", "best req/s", "latency p95 at knee", "TTFT p95 at knee", "stopped"];
    const rows = entries.map((e) => {
      const r = e.results, k = r.recommended ? r.recommended.point : null;
      const cells = [e.name, r.base_url, r.model || "–", r.workload, k ? k.label : "none",
        k ? Charts.fmt(k.requests_per_s) : "–", r.recommended ? Charts.fmt(r.recommended.max_requests_per_s) : "–",
        k ? ms(quantile(k, "latency_ms", "p95")) : "–", k ? ms(quantile(k, "ttft_ms", "p95")) : "–", r.interrupted ? "interrupted" : r.stop_reason];
      return h("tr", {}, h("td", {}, h("i", { class: "swatch", "data-color": e.color }), e.name),
        ...cells.slice(1).map((c, i) => h("td", { class: [0, 1, 2, 3, 8].includes(i) ? "text" : "", text: c })));
    });
    const card = h("div", { class: "card wide", id: "compare-bench-table" }, h("h3", { text: "Bench results side by side" }),
      h("table", { class: "points" }, h("thead", {}, h("tr", {}, ...cols.map((c, i) => h("th", { class: [1, 2, 3, 4, 9].includes(i) ? "text" : "", text: c })))),
        h("tbody", {}, ...rows)));
    card.querySelectorAll("i.swatch").forEach((i) => { i.style.background = i.dataset.color; });
    return card;
  }

  return { poll, draw, select, compareCards, runs };
})();
