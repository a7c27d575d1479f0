// Polls /dashboard/api/state and renders it. No libraries: the chart is SVG drawn here.
"use strict";

const REFRESH_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_W = 860;
const CHART_H = 200;
// Colours match the --s-* custom properties of dashboard.css.
const SERIES = [
  { field: "events_in", label: "Events in", color: "#58a6ff" },
  { field: "matched", label: "Matched", color: "#a371f7" },
  { field: "enqueued", label: "Enqueued", color: "#39c5cf" },
  { field: "posted", label: "Posted", color: "#3fb950" },
  { field: "failed", label: "Failed", color: "#f85149" },
  { field: "dead_lettered", label: "Dead-lettered", color: "#d29922" },
];
// The busiest collectors get a row; the page stays light with thousands of them.
const MAX_COLLECTOR_ROWS = 50;
const FUNNEL_COLUMNS = [
  "matched",
  "dropped_random_sample",
  "dropped_pre_queue",
  "enqueued",
  "dropped_post_queue",
  "posted",
  "failed",
  "dead_lettered",
];

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

let lastSuccessAt = 0;
let renders = 0;

function $(id) {
  return document.getElementById(id);
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    // Through the CSSOM, which the page's Content-Security-Policy allows (a style
    // attribute would be blocked).
    else if (name === "style") node.style.cssText = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function formatRate(value) {
  if (value >= 1000) return compact.format(value);
  if (value >= 10) return integer.format(value);
  return decimal.format(value);
}

function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${integer.format(seconds * 1000)} ms`;
  return `${decimal.format(seconds)} s`;
}

function formatCount(value) {
  return value >= 100000 ? compact.format(value) : integer.format(value);
}

// "0-3, 6" for [0, 1, 2, 3, 6].
function formatPartitions(partitions) {
  const sorted = [...partitions].sort((a, b) => a - b);
  const ranges = [];
  for (const p of sorted) {
    const last = ranges[ranges.length - 1];
    if (last && p === last[1] + 1) last[1] = p;
    else ranges.push([p, p]);
  }
  return ranges.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(", ");
}

function setPill(id, state, text) {
  const pill = $(id);
  pill.dataset.state = state;
  pill.textContent = text;
}

function setKpi(id, valueNodes, state) {
  const kpi = $(id);
  const value = kpi.querySelector(".value");
  value.replaceChildren(...valueNodes);
  if (state) kpi.dataset.state = state;
  else delete kpi.dataset.state;
}

function sum(values) {
  return values.reduce((total, value) => total + value, 0);
}

// --- header and key figures ---------------------------------------------------

function renderHeader(state) {
  $("group-name").textContent = state.group;
  const kafka = state.sources.kafka || {};
  const redis = state.sources.redis || {};
  setPill("pill-kafka", kafka.ok ? "ok" : "bad", kafka.ok ? "Kafka" : "Kafka unreachable");
  setPill("pill-redis", redis.ok ? "ok" : "bad", redis.ok ? "Redis" : "Redis unreachable");
  const workers = state.workers || [];
  const troubled = workers.filter((w) => w.stalled || w.config_stale).length;
  let workersState = "ok";
  if (workers.length === 0) workersState = "bad";
  else if (troubled) workersState = "warn";
  setPill("pill-workers", workersState, `${workers.length} worker${workers.length === 1 ? "" : "s"}`);

  const problems = [];
  if (!kafka.ok && kafka.error) problems.push(kafka.error);
  if (!redis.ok && redis.error) problems.push(`Redis: ${redis.error}`);
  const banner = $("banner");
  banner.hidden = problems.length === 0;
  banner.textContent = problems.join(" · ");
}

function renderKpis(state) {
  const throughput = state.throughput;
  const series = throughput ? throughput.series : null;
  const recentBuckets = 6;
  const perSecond = (field) => {
    if (!series) return null;
    const values = series[field].slice(-recentBuckets);
    return sum(values) / (values.length * throughput.bucket_s);
  };
  const windowTotal = (field) => (series ? sum(series[field]) : null);

  const events = perSecond("events_in");
  setKpi("kpi-events", [events === null ? "–" : formatRate(events)]);
  const posted = perSecond("posted");
  setKpi("kpi-posted", [posted === null ? "–" : formatRate(posted)]);

  const lag = state.lag;
  if (lag) {
    const stalled = (state.workers || []).some((w) => w.stalled);
    let lagState = "ok";
    if (stalled) lagState = "bad";
    else if (lag.total > 0) lagState = "warn";
    setKpi("kpi-lag", [formatCount(lag.total)], lagState);
  } else {
    setKpi("kpi-lag", ["–"], "bad");
  }

  const latency = state.latency ? state.latency.window : null;
  if (latency && latency.count) {
    setKpi("kpi-latency", [
      formatSeconds(latency.p50_s),
      el("small", { text: ` / ${formatSeconds(latency.p99_s)}` }),
    ], latency.p99_s > 5 ? "warn" : "ok");
  } else {
    setKpi("kpi-latency", ["–"]);
  }

  const failed = windowTotal("failed");
  setKpi("kpi-failed", [failed === null ? "–" : formatCount(failed)], failed ? "bad" : "ok");
  const dlq = windowTotal("dead_lettered");
  setKpi("kpi-dlq", [dlq === null ? "–" : formatCount(dlq)], dlq ? "warn" : "ok");
}

// --- throughput chart ----------------------------------------------------------

function niceMax(value) {
  if (value <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * magnitude) return step * magnitude;
  }
  return 10 * magnitude;
}

// The rates drawn last, for the hover read-out.
let chartData = null;

function renderChart(state) {
  const chart = $("throughput-chart");
  const axis = $("chart-axis");
  chart.replaceChildren();
  axis.replaceChildren();
  const legend = $("legend");
  legend.replaceChildren();
  const throughput = state.throughput;
  if (!throughput) return;

  const bucketS = throughput.bucket_s;
  const count = throughput.starts.length;
  const rates = {};
  let peak = 0;
  for (const { field } of SERIES) {
    rates[field] = throughput.series[field].map((value) => value / bucketS);
    peak = Math.max(peak, ...rates[field]);
  }
  const top = niceMax(peak);
  const x = (index) => (count <= 1 ? 0 : (index / (count - 1)) * CHART_W);
  const y = (value) => CHART_H - (value / top) * CHART_H;

  for (let i = 0; i <= 4; i += 1) {
    const value = (top * i) / 4;
    const lineY = y(value);
    chart.append(svg("line", { class: "grid", x1: 0, x2: CHART_W, y1: lineY, y2: lineY }));
    axis.append(el("span", { class: "y", style: `top:${(lineY / CHART_H) * 170}px`, text: formatRate(value) }));
  }
  for (const minutesAgo of [15, 10, 5, 0]) {
    const share = 1 - minutesAgo / 15;
    const label = minutesAgo === 0 ? "now" : `−${minutesAgo} min`;
    // The first label starts at the left edge, the last ends at the right edge.
    let shift = "-50%";
    if (minutesAgo === 15) shift = "0";
    else if (minutesAgo === 0) shift = "-100%";
    axis.append(el("span", {
      class: "x",
      style: `left:calc(44px + (100% - 44px) * ${share});transform:translateX(${shift})`,
      text: label,
    }));
  }

  chartData = { starts: throughput.starts, bucketS, rates };
  chart.append(svg("line", { class: "cursor", id: "chart-cursor", x1: 0, x2: 0, y1: 0, y2: CHART_H, visibility: "hidden" }));
  for (const { field, label, color } of SERIES) {
    const values = rates[field];
    const points = values.map((value, index) => `${x(index).toFixed(1)},${y(value).toFixed(1)}`);
    if (field === "events_in" && points.length) {
      const area = `0,${CHART_H} ${points.join(" ")} ${CHART_W},${CHART_H}`;
      chart.append(svg("polygon", { class: "area", points: area, fill: color }));
    }
    chart.append(svg("polyline", { class: "series", points: points.join(" "), stroke: color, "data-series": field }));
    const now = values.length ? values[values.length - 1] : 0;
    legend.append(
      el("li", { "data-series": field },
        el("span", { class: "swatch", style: `background:${color}` }),
        el("span", { text: label }),
        el("span", { class: "now", text: formatRate(now) })),
    );
  }
}

function showChartTip(event) {
  const tip = $("chart-tip");
  const cursor = $("chart-cursor");
  if (!chartData || !cursor) return;
  const box = $("throughput-chart").getBoundingClientRect();
  const count = chartData.starts.length;
  const share = (event.clientX - box.left) / box.width;
  if (share < 0 || share > 1 || count < 2) {
    hideChartTip();
    return;
  }
  const index = Math.round(share * (count - 1));
  const x = (index / (count - 1)) * CHART_W;
  cursor.setAttribute("x1", x);
  cursor.setAttribute("x2", x);
  cursor.setAttribute("visibility", "visible");
  const start = new Date(chartData.starts[index] * 1000).toLocaleTimeString();
  const rows = SERIES.map(({ field, label, color }) =>
    el("div", { class: "tip-row" },
      el("span", { class: "swatch", style: `background:${color}` }),
      el("span", { text: label }),
      el("span", { class: "tip-value", text: formatRate(chartData.rates[field][index]) })));
  tip.replaceChildren(el("div", { class: "tip-time", text: `${start} · per second` }), ...rows);
  tip.hidden = false;
  const left = Math.min(box.width - 170, Math.max(0, event.clientX - box.left + 12));
  tip.style.left = `${left + 44}px`;
}

function hideChartTip() {
  $("chart-tip").hidden = true;
  const cursor = $("chart-cursor");
  if (cursor) cursor.setAttribute("visibility", "hidden");
}

// --- collectors ------------------------------------------------------------------

function configSummary(config) {
  const parts = [`model ${config.model}`];
  if (config.model_version_id) parts.push(`version ${config.model_version_id}`);
  if (config.caller_user_id) parts.push(`caller ${config.caller_user_id}`);
  if (config.pre_queue_random_sample > 0) {
    parts.push(`sample ${decimal.format(config.pre_queue_random_sample * 100)}%`);
  }
  if (config.pre_queue_workflow_id) parts.push(`pre-queue ${config.pre_queue_workflow_id}`);
  if (config.post_queue_workflow_id) parts.push(`post-queue ${config.post_queue_workflow_id}`);
  if (config.sample_key) parts.push(`sample key ${config.sample_key}`);
  if (config.collect_outputs) parts.push("collects outputs");
  if (config.collect_failed_predictions) parts.push("failed predictions too");
  return parts.join(" · ");
}

function fateBar(funnel) {
  const matched = funnel.matched;
  const bar = el("div", { class: "fate", title: "What happened to the matched inputs" });
  if (!matched) return bar;
  const dropped = sum(Object.entries(funnel)
    .filter(([step]) => step.startsWith("dropped_"))
    .map(([, value]) => value));
  const delivered = funnel.posted + funnel.already_present;
  const lost = funnel.dead_lettered;
  const parts = [
    [delivered, "var(--s-posted)"],
    [dropped, "var(--s-dropped)"],
    [lost, "var(--s-failed)"],
  ];
  for (const [value, color] of parts) {
    if (value > 0) {
      const share = Math.min(100, (value / matched) * 100);
      bar.append(el("span", { style: `width:${share.toFixed(2)}%;background:${color}` }));
    }
  }
  return bar;
}

function funnelValue(funnel, column) {
  if (column === "posted") return funnel.posted + (funnel.already_present || 0);
  return funnel[column] || 0;
}

// Drops that have no column of their own, such as "12 duplicates".
function otherDrops(funnel) {
  const labels = {
    dropped_inactive: "paused or deleted",
    dropped_duplicate: "duplicates",
    dropped_quota: "over quota",
  };
  const columns = new Set(FUNNEL_COLUMNS);
  const parts = Object.entries(funnel)
    .filter(([step, value]) => step.startsWith("dropped_") && !columns.has(step) && value > 0)
    .map(([step, value]) => `${integer.format(value)} ${labels[step] || step.replace("dropped_", "")}`);
  return parts.length ? `also dropped: ${parts.join(", ")}` : null;
}

function renderCollectors(state) {
  const rows = $("funnel-rows");
  const collectors = [...(state.collectors || [])];
  collectors.sort((a, b) => b.funnel.matched - a.funnel.matched || a.key.localeCompare(b.key));
  if (!collectors.length) {
    rows.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 9, text: "No collectors yet." })));
    return;
  }
  const hidden = collectors.length - MAX_COLLECTOR_ROWS;
  const shownRows = collectors.slice(0, MAX_COLLECTOR_ROWS).map((collector) => {
    let status = "paused";
    if (!collector.configured) status = "deleted";
    else if (collector.active) status = "active";
    const rules = Object.entries(collector.rule_drops || {});
    const name = el("td", { class: "name" },
      el("div", { class: "key" }, collector.key, el("span", { class: `tag ${status}`, text: status })),
      el("div", { class: "config", text: collector.config ? configSummary(collector.config) : "no longer configured" }),
      rules.length ? el("div", { class: "rules", text: `pre-queue drops by node: ${rules.map(([node, n]) => `${node} ${integer.format(n)}`).join(", ")}` }) : null,
      otherDrops(collector.funnel) ? el("div", { class: "rules", text: otherDrops(collector.funnel) }) : null,
      fateBar(collector.funnel));
    const cells = FUNNEL_COLUMNS.map((column) => {
      const value = funnelValue(collector.funnel, column);
      let cls = "num";
      if (value === 0) cls += " zero";
      else if (column === "dead_lettered") cls += " bad";
      else if (column === "failed") cls += " warn";
      else if (column === "posted") cls += " good";
      return el("td", { class: cls, "data-step": column, text: integer.format(value) });
    });
    return el("tr", { "data-collector": collector.key }, name, ...cells);
  });
  if (hidden > 0) {
    const note = `${integer.format(hidden)} more collectors with fewer matches: see /metrics or \`collectors status\`.`;
    shownRows.push(el("tr", { class: "empty" }, el("td", { colspan: 9, text: note })));
  }
  rows.replaceChildren(...shownRows);
}

// --- lag and members ----------------------------------------------------------------

// A topic's partitions are shown by default from this lag on: a running group
// always has a few records between fetch and commit.
const EXPAND_LAG_MIN = 100;
// Topics whose partitions the operator expanded or collapsed by a click.
const topicToggles = new Map();

function topicExpanded(topic, total) {
  return topicToggles.has(topic) ? topicToggles.get(topic) : total >= EXPAND_LAG_MIN;
}

// One small bar per partition, scaled to the topic's largest partition lag.
function lagBars(partitions) {
  const peak = Math.max(...partitions.map((p) => p.lag));
  const bars = el("span", { class: "spark", "aria-hidden": "true" });
  for (const p of partitions) {
    const share = peak > 0 ? Math.max(0.12, p.lag / peak) : 0.12;
    bars.append(el("i", { class: p.lag ? "on" : "", style: `height:${(share * 100).toFixed(0)}%` }));
  }
  return bars;
}

function renderLag(state) {
  const rows = $("lag-rows");
  const foot = $("lag-total");
  const lag = state.lag;
  if (!lag) {
    rows.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 4, text: "Kafka is unreachable." })));
    foot.replaceChildren();
    $("group-state").textContent = "";
    return;
  }
  $("group-state").textContent = `${lag.state}, ${lag.members.length} member${lag.members.length === 1 ? "" : "s"}`;
  const out = [];
  const order = [state.topics.input, state.topics.queue, state.topics.retry];
  for (const topic of order) {
    const partitions = lag.partitions.filter((p) => p.topic === topic);
    if (!partitions.length) {
      out.push(el("tr", { class: "topic" }, el("td", { class: "left", colspan: 4, text: `${topic} (missing)` })));
      continue;
    }
    const total = lag.topic_totals[topic] || 0;
    const expanded = topicExpanded(topic, total);
    const lagging = partitions.filter((p) => p.lag > 0).length;
    const note = lagging ? `${lagging} of ${partitions.length} partitions lag` : `${partitions.length} partitions caught up`;
    const header = el("tr", { class: `topic ${expanded ? "open" : "closed"}`, "data-topic": topic, title: `${note}; click to show or hide the partitions` },
      el("td", { class: "left", colspan: 3 },
        el("span", { class: "caret", text: expanded ? "▾" : "▸" }), topic,
        lagBars(partitions)),
      el("td", { class: total ? "has-lag" : "", text: integer.format(total) }));
    header.addEventListener("click", () => {
      topicToggles.set(topic, !expanded);
      renderLag(state);
    });
    out.push(header);
    for (const p of partitions) {
      out.push(el("tr", { class: "part", hidden: !expanded, "data-topic": topic, "data-partition": p.partition },
        el("td", { class: "left", text: `${p.partition}` }),
        el("td", { text: integer.format(p.end_offset) }),
        el("td", { class: p.committed === null ? "zero" : "", text: p.committed === null ? "–" : integer.format(p.committed) }),
        el("td", { class: p.lag ? "has-lag" : "zero", text: integer.format(p.lag) })));
    }
  }
  rows.replaceChildren(...out);
  foot.replaceChildren(el("tr", {},
    el("td", { class: "left", colspan: 3, text: "Total" }),
    el("td", { id: "lag-total-value", class: lag.total ? "has-lag" : "", text: integer.format(lag.total) })));
}

function workerState(worker) {
  if (!worker) return ["ok", "member"];
  if (worker.stalled) return ["bad", "stalled"];
  if (worker.config_stale) return ["warn", "config stale"];
  return ["ok", "healthy"];
}

function assignmentText(assignment, topics) {
  const parts = [];
  for (const topic of topics) {
    const partitions = assignment[topic] || [];
    if (partitions.length) parts.push(`${topic} ${formatPartitions(partitions)}`);
  }
  return parts.length ? parts.join(" · ") : "no partitions";
}

function renderMembers(state) {
  const list = $("members");
  const topics = [state.topics.input, state.topics.queue, state.topics.retry];
  const workers = new Map((state.workers || []).map((w) => [w.id, w]));
  const items = [];
  const listed = new Set();
  for (const member of (state.lag ? state.lag.members : [])) {
    const worker = member.worker ? workers.get(member.worker) : null;
    if (worker) listed.add(worker.id);
    const [cls, label] = workerState(worker);
    const title = worker ? `${worker.host}:${worker.web_port} · pid ${worker.pid}` : `${member.client_host} · ${member.client_id}`;
    const lagText = worker ? ` · lag ${integer.format(worker.lag)}` : "";
    items.push(el("li", { "data-member": member.member_id },
      el("div", { class: "who" }, el("span", { class: "id", title: member.member_id, text: title }), el("span", { class: `state ${cls}`, text: label })),
      el("div", { class: "detail", text: assignmentText(member.assignment, topics) + lagText })));
  }
  for (const worker of workers.values()) {
    if (listed.has(worker.id)) continue;
    const [cls, label] = workerState(worker);
    items.push(el("li", { "data-worker": worker.id },
      el("div", { class: "who" }, el("span", { class: "id", text: `${worker.host}:${worker.web_port} · pid ${worker.pid}` }), el("span", { class: `state ${cls}`, text: label })),
      el("div", { class: "detail", text: `${assignmentText(worker.partitions || {}, topics)} · lag ${integer.format(worker.lag)}` })));
  }
  if (!items.length) items.push(el("li", { class: "empty", text: "No members and no live workers." }));
  list.replaceChildren(...items);
}

// --- refresh loop ------------------------------------------------------------------

function render(state) {
  renderHeader(state);
  renderKpis(state);
  renderChart(state);
  renderCollectors(state);
  renderLag(state);
  renderMembers(state);
  renders += 1;
  const root = document.documentElement;
  document.body.dataset.renders = String(renders);
  document.body.dataset.scrollWidth = String(root.scrollWidth);
  document.body.dataset.viewportWidth = String(window.innerWidth);
}

function showAge() {
  const updated = $("updated");
  if (!lastSuccessAt) return;
  const ageS = Math.round((Date.now() - lastSuccessAt) / 1000);
  const time = new Date(lastSuccessAt).toLocaleTimeString();
  updated.textContent = ageS < 2 ? `updated ${time}` : `updated ${time} (${ageS} s ago)`;
  updated.classList.toggle("late", ageS > (3 * REFRESH_MS) / 1000);
}

async function refresh() {
  try {
    const response = await fetch("/dashboard/api/state", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    lastSuccessAt = Date.now();
  } catch (error) {
    const banner = $("banner");
    banner.hidden = false;
    banner.textContent = `Cannot load the dashboard state: ${error.message}. Retrying.`;
  } finally {
    showAge();
    setTimeout(refresh, REFRESH_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const wrap = document.querySelector(".chart-wrap");
  wrap.addEventListener("mousemove", showChartTip);
  wrap.addEventListener("mouseleave", hideChartTip);
  refresh();
  setInterval(showAge, 1000);
});
