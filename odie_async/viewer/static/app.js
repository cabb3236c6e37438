// odie view: Live, Bench, Read and Compare over the runs the server was given (the Bench view is bench.js).
// Model-written text is untrusted: it only ever reaches the page through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { runs: [], live: {}, timer: null, drawn: false, drawnAt: 0, stale: false, drawMs: 0, read: { run: 0, file: null, offset: 0, limit: 50, total: 0, selected: null } };

function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

// ---- navigation ---------------------------------------------------------------------------

function show() {
  const view = (location.hash || "#live").slice(1);
  for (const name of ["live", "bench", "read", "compare"]) {
    $(`view-${name}`).hidden = name !== view;
    $(`tab-${name}`).classList.toggle("active", name === view);
  }
  if (view === "live" && state.drawn) drawLive();
  if (view === "bench") Bench.draw();
  if (view === "read") openRead();
  if (view === "compare") loadCompare();
}

// ---- live -----------------------------------------------------------------------------------

const LIVE_CHARTS = [
  ["records", "Records done and failed"], ["rps", "Requests/s"], ["tps", "Tokens/s"],
  ["latency", "Latency p50 / p95 (ms)"], ["errors", "429s and errors by reason"], ["concurrency", "Concurrency"],
  ["stages", "Funnel: stages done of expected"], ["filter", "Filter: kept and dropped by reason"],
];

function liveSeries(run, label, pick) {
  const lines = state.live[run.id].lines;
  const t0 = lines.length ? lines[0].t : 0;
  return { name: label, points: lines.map((l, i) => [l.t - t0, pick(l, i)]) };
}

const WINDOW_S = 10;

function windowed(lines, key, fallback) {
  // The rate of a cumulative count over the last WINDOW_S seconds (since the start while the run is younger):
  // one sample taken a fraction of a second after the one before says nothing about the rate.
  const out = new Array(lines.length);
  let j = 0;
  for (let i = 0; i < lines.length; i++) {
    while (j + 1 < i && lines[i].t - lines[j + 1].t >= WINDOW_S) j++;
    const span = lines[i].t - lines[j].t, a = lines[j][key], b = lines[i][key];
    out[i] = typeof a === "number" && typeof b === "number" ? (span > 0 ? (b - a) / span : null) : lines[i][fallback];
  }
  return out;
}

function rates(run) {
  const live = state.live[run.id];
  if (live.ratesFor !== live.lines.length) {
    live.rates = { rps: windowed(live.lines, "done", "rps"), tps: windowed(live.lines, "tokens", "tps") };
    live.ratesFor = live.lines.length;
  }
  return live.rates;
}

function tag(run, name) {
  const runs = state.runs.filter((r) => r.live);
  const endpoint = state.live[run.id].endpoint;
  return runs.length > 1 ? `${run.name}${endpoint ? " @ " + endpoint : ""} ${name}` : name;
}

function drawLive() {
  const runs = state.runs.filter((r) => r.live);
  if (!runs.length) {
    $("live-charts").replaceChildren(h("p", { class: "empty", text: "none of these runs has a metrics file" }));
    return;
  }
  const head = runs.map((run) => liveStat(run));
  $("live-head").replaceChildren(...head);
  const cards = {};
  for (const [key] of LIVE_CHARTS) cards[key] = $(`chart-${key}`) || h("div", { id: `chart-${key}` });
  $("live-charts").replaceChildren(...LIVE_CHARTS.map(([key]) => cards[key]));
  const each = (fn) => runs.flatMap(fn);
  Charts.line(cards.records, "Records done and failed", each((r) => [
    liveSeries(r, tag(r, "done"), (l) => l.done), liveSeries(r, tag(r, "failed"), (l) => l.failed)]));
  Charts.line(cards.rps, `Requests/s (over ${WINDOW_S} s)`, each((r) => [liveSeries(r, tag(r, "req/s"), (l, i) => rates(r).rps[i])]));
  Charts.line(cards.tps, `Tokens/s (over ${WINDOW_S} s)`, each((r) => [liveSeries(r, tag(r, "tok/s"), (l, i) => rates(r).tps[i])]));
  Charts.line(cards.latency, "Latency p50 / p95 (ms)", each((r) => [
    liveSeries(r, tag(r, "p50"), (l) => l.p50_ms), liveSeries(r, tag(r, "p95"), (l) => l.p95_ms)]));
  Charts.line(cards.errors, "429s and errors by reason", each((r) => {
    const codes = new Set();
    state.live[r.id].lines.forEach((l) => Object.keys(l.errors || {}).forEach((c) => codes.add(c)));
    return [liveSeries(r, tag(r, "429s"), (l) => l.rate_limited), liveSeries(r, tag(r, "retries"), (l) => l.retries),
      ...[...codes].map((c) => liveSeries(r, tag(r, c), (l) => (l.errors || {})[c] || 0))];
  }));
  Charts.line(cards.concurrency, "Concurrency", each((r) => [
    liveSeries(r, tag(r, "in flight"), (l) => l.in_flight), liveSeries(r, tag(r, "limit"), (l) => l.concurrency_limit)]));
  drawFunnel(runs, cards);
}

function drawFunnel(runs, cards) {
  const withFunnel = runs.filter((r) => { const ls = state.live[r.id].lines; return ls.length && ls[ls.length - 1].funnel; });
  if (!withFunnel.length) { cards.stages.remove(); cards.filter.remove(); return; }
  const lastOf = (r) => { const ls = state.live[r.id].lines; return ls[ls.length - 1].funnel; };
  const stages = [...new Set(withFunnel.flatMap((r) => Object.keys(lastOf(r).stages)))];
  Charts.bars(cards.stages, "Funnel: stages done of expected", stages,
    withFunnel.map((r) => ({ name: r.name, values: stages.map((s) => { const c = lastOf(r).stages[s]; return c && c.expected ? c.done / c.expected : null; }) })),
    { max: 1, percent: true });
  const groups = [], values = {};
  for (const r of withFunnel) {
    for (const [variant, f] of Object.entries(lastOf(r).filter)) {
      const key = withFunnel.length > 1 ? `${r.name} ${variant}` : variant;
      values[`${key}: kept`] = f.kept;
      for (const [reason, n] of Object.entries(f.dropped)) values[`${key}: ${reason}`] = n;
    }
  }
  groups.push(...Object.keys(values));
  Charts.bars(cards.filter, "Filter: kept and dropped by reason", groups, [{ name: "records", values: groups.map((g) => values[g]) }]);
}

function liveStat(run) {
  const live = state.live[run.id];
  const last = live.lines[live.lines.length - 1];
  const finished = !last || last.final || Date.now() / 1000 - last.t > 5;
  const box = h("div", { class: "stat" }, h("span", { class: `state ${finished ? "finished" : ""}`, text: finished ? "finished" : "running" }),
    h("div", { text: run.name }));
  if (!last) { box.append(h("div", { class: "empty", text: "waiting for the first sample" })); return box; }
  const total = last.total ? ` of ${last.total}` : "";
  const whole = last.done && last.elapsed ? last.done / last.elapsed : 0;
  const recent = rates(run).rps[live.lines.length - 1];
  const shown = finished ? whole : recent;  // a finished run: its whole length; a running one: the last WINDOW_S seconds
  const rate = recent > 0 ? recent : whole;
  const eta = last.total && rate > 0 && !finished ? Math.max(0, (last.total - last.done - (last.cached || 0)) / rate) : null;
  box.append(h("b", { text: `${last.done}${total}` }), ` done · ${last.failed} failed · `,
    h("span", { class: "rate", text: `${Charts.fmt(shown)} req/s` }), finished ? " over the run" : ` over ${WINDOW_S} s`,
    h("div", { text: eta === null ? "" : `ETA ${Math.floor(eta / 60)}m${String(Math.round(eta % 60)).padStart(2, "0")}s` }));
  if (last.spend) box.append(h("div", { class: "spend", text: spendText(last.spend) }));
  return box;
}

// Spend so far and the total projected from the records done, beside the cap (numbers only: set as text).
function spendText(spend) {
  const usd = (v) => `$${Number(v).toFixed(4)}`;
  const projected = spend.projected_total_usd === null || spend.projected_total_usd === undefined ? "" : ` · ${usd(spend.projected_total_usd)} projected`;
  return `${usd(spend.spent_usd)} spent${projected} · cap $${Number(spend.cap_usd)}${spend.capped ? " (reached)" : ""}`;
}

async function pollLive() {
  const runs = state.runs.filter((r) => r.live);
  let changed = !state.drawn || Date.now() - state.drawnAt > 5000;  // a killed run turns "finished" too
  for (const run of runs) {
    const live = state.live[run.id] || (state.live[run.id] = { lines: [], next: 0, endpoint: "" });
    try {
      for (;;) {  // a long run's file comes in chunks
        const got = await api(`/api/runs/${run.id}/metrics?from=${live.next}`);
        if (got.next < live.next) { live.lines = []; }  // the file was replaced
        for (const line of got.lines) live.lines.push(line);
        changed = changed || got.lines.length > 0;
        const moved = got.next !== live.next;
        live.next = got.next;
        if (!got.lines.length || !moved) break;
      }
      const last = live.lines[live.lines.length - 1];
      if (last) live.endpoint = last.endpoint || "";
    } catch (err) { console.warn(err); }
  }
  // Redraw only what changed, and only when someone can see it: the page must never weigh on the run.
  if ((changed || state.stale) && !document.hidden && !$("view-live").hidden) {
    const started = performance.now();
    drawLive();
    state.drawMs += performance.now() - started;
    document.body.dataset.drawMs = state.drawMs.toFixed(1);  // what the charts cost, for the benchmark
    state.drawn = true;
    state.drawnAt = Date.now();
    state.stale = false;
  } else if (changed) {
    state.stale = true;
  }
}

// ---- read -----------------------------------------------------------------------------------

const FILTERS = ["status", "reason", "category", "domain", "stage", "variant"];

function fillRunSelect() {
  $("read-run").replaceChildren(...state.runs.filter((r) => r.files.length).map((r) => h("option", { value: r.id, text: r.name })));
}

function openRead() {
  if (state.read.file !== null) return;
  const run = state.runs.find((r) => r.files.length);
  if (!run) { $("read-list").replaceChildren(h("p", { class: "empty", text: "no record files in these runs" })); return; }
  selectRun(run.id);
}

function selectRun(id) {
  const run = state.runs.find((r) => r.id === Number(id));
  state.read.run = run.id;
  $("read-run").value = String(run.id);
  $("read-file").replaceChildren(...run.files.map((f) => h("option", { value: f, text: f })),
    ...(run.links || []).map((f) => h("option", { value: "", disabled: "", class: "link", text: `${f} (a link out of the run: not served)` })));
  const empty = run.empty || [];
  const preferred = ["dropped.jsonl", "train.jsonl"].find((f) => run.files.includes(f) && !empty.includes(f)) ||
    run.files.find((f) => !empty.includes(f)) || run.files[0];
  selectFile(preferred);
}

function selectFile(name) {
  state.read.file = name;
  state.read.offset = 0;
  $("read-file").value = name;
  $("read-q").value = "";
  $("read-filters").replaceChildren(h("span", { class: "empty", text: "building filters…" }));
  loadRows();
  loadFacets();
}

async function loadFacets() {
  const { run, file } = state.read;
  const got = await api(`/api/runs/${run}/files/${encodeURIComponent(file)}/facets`);
  if (state.read.run !== run || state.read.file !== file) return;
  const selects = FILTERS.filter((f) => got.facets[f] && Object.keys(got.facets[f]).length > 0).map((f) => {
    const select = h("select", { id: `filter-${f}`, "data-filter": f, onchange: () => { state.read.offset = 0; loadRows(); } },
      h("option", { value: "", text: `any ${f}` }),
      ...Object.entries(got.facets[f]).map(([v, n]) => h("option", { value: v, text: `${v} (${n})` })));
    return h("label", {}, select);
  });
  $("read-filters").replaceChildren(...selects);
}

function readQuery() {
  const params = new URLSearchParams({ offset: state.read.offset, limit: state.read.limit });
  const q = $("read-q").value.trim();
  if (q) params.set("q", q);
  for (const select of document.querySelectorAll("#read-filters select")) if (select.value) params.set(select.dataset.filter, select.value);
  return params;
}

async function loadRows() {
  const { run, file } = state.read;
  const got = await api(`/api/runs/${run}/files/${encodeURIComponent(file)}/rows?${readQuery()}`);
  state.read.total = got.total;
  const columns = ["n", "id", "status", "reason", "category", "domain", "stage", "preview"];
  const used = columns.filter((c) => ["n", "id", "status", "preview"].includes(c) || got.rows.some((r) => r[c]));
  $("read-table").tHead.replaceChildren(h("tr", {}, ...used.map((c) => h("th", { text: c === "n" ? "#" : c }))));
  $("read-table").tBodies[0].replaceChildren(...got.rows.map((row) => h("tr", { "data-n": row.n, onclick: () => openRecord(row.n) },
    ...used.map((c) => c === "status" ? h("td", { class: "status" }, h("span", { class: `badge ${row.status}`, text: row.status }))
      : h("td", { class: c, text: c === "n" ? row.n + 1 : row[c] })))));
  const end = Math.min(got.offset + got.rows.length, got.total);
  $("read-range").textContent = got.total ? `${got.offset + 1}–${end} of ${got.total}` + (got.total !== got.lines ? ` (of ${got.lines} lines)` : "") : "no records";
  $("read-prev").disabled = got.offset === 0;
  $("read-next").disabled = end >= got.total;
}

async function openRecord(n) {
  const { run, file } = state.read;
  const rec = await api(`/api/runs/${run}/files/${encodeURIComponent(file)}/record/${n}`);
  for (const tr of document.querySelectorAll("#read-table tbody tr")) tr.classList.toggle("selected", Number(tr.dataset.n) === n);
  if (rec.too_large) return openLarge(run, file, rec, 0);
  const cells = rec.table ? rec.table.rows.flat() : [];
  const box = $("read-detail");
  box.hidden = false;
  box.replaceChildren(...[
    h("h3", {}, `${rec.row.id} `, h("span", { class: `badge ${rec.row.status}`, text: rec.row.status })),
    section("Instruction", rec.instruction && h("div", { class: "text instruction", text: rec.instruction })),
    rec.original_instruction && rec.original_instruction !== rec.instruction ? section("Original instruction", h("div", { class: "text", text: rec.original_instruction })) : null,
    section("Source text (table cells highlighted)", rec.text && highlighted(rec.text, cells)),
    section("Table", rec.table ? renderTable(rec.table) : rec.answer && h("div", { class: "text answer", text: rec.answer })),
    section("Explanation", rec.explanation && h("div", { class: "text explanation", text: rec.explanation })),
    section("Scores and reasons", scores(rec)),
    section("Error", rec.error && h("div", { class: "text", text: `${rec.error.code}: ${rec.error.message || ""}` })),
    h("details", {}, h("summary", { text: "record JSON" }), h("pre", { text: JSON.stringify(rec.record, null, 2) })),
  ].filter(Boolean));
}

async function openLarge(run, file, rec, page) {
  // A record too large to open whole: its raw text, one page at a time.
  const response = await fetch(`/api/runs/${run}/files/${encodeURIComponent(file)}/record/${rec.n}/raw?page=${page}`, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`record ${rec.n}: ${response.status}`);
  const text = await response.text();
  const nav = h("div", { class: "pager" },
    h("button", { type: "button", onclick: () => openLarge(run, file, rec, page - 1), ...(page === 0 ? { disabled: "" } : {}) }, "previous"),
    ` page ${page + 1} of ${rec.pages} `,
    h("button", { type: "button", onclick: () => openLarge(run, file, rec, page + 1), ...(page + 1 >= rec.pages ? { disabled: "" } : {}) }, "next"));
  const box = $("read-detail");
  box.hidden = false;
  box.replaceChildren(h("h3", { text: `line ${rec.n + 1}: ${rec.bytes.toLocaleString("en-US")} bytes, shown raw in pages` }), nav,
    h("pre", { id: "read-raw", class: "text", text }));
}

function section(title, body) {
  return body ? h("section", {}, h("h4", { text: title }), body) : null;
}

function scores(rec) {
  const items = Object.entries(rec.scores || {}).map(([k, v]) => h("li", { text: `${k}: ${v === null ? "–" : typeof v === "object" ? JSON.stringify(v) : v}` }));
  items.push(...rec.reasons.map((r) => h("li", { class: "reason", text: `reason: ${r}` })));
  return items.length ? h("ul", {}, ...items) : null;
}

function renderTable(table) {
  return h("table", {}, h("thead", {}, h("tr", {}, ...table.header.map((c) => h("th", { text: c })))),
    h("tbody", {}, ...table.rows.map((row) => h("tr", {}, ...row.map((c) => h("td", { text: c }))))));
}

const NA = /^(n\/?a|-+|none|null|unknown|not (specified|mentioned|given))?$/i;

function highlighted(text, cells) {
  // Mark where the table's cell values occur in the text; every piece stays a text node.
  const lower = text.toLowerCase();
  const exact = lower.length !== text.length;
  const hay = exact ? text : lower;
  const spans = [];
  for (const cell of new Set(cells.map((c) => String(c).trim()).filter((c) => c.length > 1 && !NA.test(c)))) {
    const needle = exact ? cell : cell.toLowerCase();
    for (let at = hay.indexOf(needle); at !== -1; at = hay.indexOf(needle, at + needle.length)) spans.push([at, at + needle.length]);
  }
  spans.sort((a, b) => a[0] - b[0] || b[1] - a[1]);
  const box = h("div", { class: "text source" });
  let pos = 0;
  for (const [start, end] of spans) {
    if (start < pos) continue;
    box.append(document.createTextNode(text.slice(pos, start)), h("mark", { text: text.slice(start, end) }));
    pos = end;
  }
  box.append(document.createTextNode(text.slice(pos)));
  return box;
}

// ---- compare --------------------------------------------------------------------------------

async function loadCompare() {
  const runs = await api("/api/compare");
  const cards = [];
  const reports = runs.flatMap((r) => r.evals.map((e) => ({ label: evalLabel(r, e, runs), report: e })));
  for (const metric of ["header", "content"]) {
    if (!reports.length) break;
    const groups = [...new Set(reports.flatMap((x) => groupNames(x.report[metric])))];
    const card = h("div", { id: `compare-${metric}` });
    Charts.bars(card, metric === "header" ? "Header soft-match F1 by group" : "Content ROUGE-L by group", groups,
      reports.map((x) => ({ name: x.label, values: groups.map((g) => groupValue(x.report[metric], g)) })), { legend: true });
    cards.push(card);
  }
  const filtered = runs.flatMap((r) => Object.entries(r.filter || {}).map(([variant, f]) => ({ label: `${r.name} ${variant}`, f })));
  if (filtered.length) {
    const kept = h("div", { id: "compare-kept" });
    Charts.bars(kept, "Kept share", filtered.map((x) => x.label), [{ name: "kept", values: filtered.map((x) => x.f.yield) }], { max: 1, percent: true });
    const reasons = [...new Set(filtered.flatMap((x) => Object.keys(x.f.reasons || {})))];
    const why = h("div", { id: "compare-reasons" });
    Charts.bars(why, "Dropped by reason (share of records)", reasons,
      filtered.map((x) => ({ name: x.label, values: reasons.map((r) => x.f.records ? ((x.f.reasons || {})[r] || 0) / x.f.records : null) })),
      { percent: true, legend: true });
    cards.push(kept, why);
  }
  cards.push(...Bench.compareCards(runs));
  $("compare-charts").replaceChildren(...(cards.length ? cards : [h("p", { class: "empty", text: "no eval files, filter or bench results among these runs" })]));
}

function evalLabel(run, report, runs) {
  const stem = String(report.file || run.name).split("/").pop().replace(/\.jsonl?$/, "");
  return runs.length > 1 && run.kind !== "eval" ? `${run.name}: ${stem}` : stem;
}

function groupNames(metric) {
  const names = ["overall"];
  for (const [k, v] of Object.entries(metric || {})) {
    if (v && typeof v === "object") names.push(...Object.keys(v).map((g) => `${k}: ${g}`));
    else if (k !== "overall") names.push(k);
  }
  return names;
}

function groupValue(metric, name) {
  if (!metric) return null;
  const at = name.indexOf(": ");
  if (at === -1) return typeof metric[name] === "number" ? metric[name] : null;
  const group = metric[name.slice(0, at)];
  return group && typeof group[name.slice(at + 2)] === "number" ? group[name.slice(at + 2)] : null;
}

// ---- start ----------------------------------------------------------------------------------

async function start() {
  state.runs = await api("/api/runs");
  $("run-names").textContent = state.runs.map((r) => `${r.name} (${r.kind})`).join(" · ");
  fillRunSelect();
  $("read-run").addEventListener("change", (e) => selectRun(e.target.value));
  $("read-file").addEventListener("change", (e) => selectFile(e.target.value));
  $("read-controls").addEventListener("submit", (e) => { e.preventDefault(); state.read.offset = 0; loadRows(); });
  $("read-prev").addEventListener("click", () => { state.read.offset = Math.max(0, state.read.offset - state.read.limit); loadRows(); });
  $("read-next").addEventListener("click", () => { state.read.offset += state.read.limit; loadRows(); });
  $("bench-run").addEventListener("change", (e) => Bench.select(e.target.value));
  $("tab-bench").hidden = !Bench.runs().length;
  window.addEventListener("hashchange", show);
  const first = state.runs.some((r) => r.live) ? "#live" : Bench.runs().length ? "#bench" : state.runs.some((r) => r.files.length) ? "#read" : "#compare";
  if (!location.hash) history.replaceState(null, "", first);
  show();
  await tick();
  state.timer = setInterval(tick, 1000);
}

async function tick() {
  // One timer for everything that changes under the page: live metrics, and bench results rewritten when a bench ends.
  await pollLive();
  if (await Bench.poll() && !$("view-compare").hidden) loadCompare();
}

start().catch((err) => { document.body.append(h("p", { class: "empty", text: `odie view: ${err.message}` })); });
