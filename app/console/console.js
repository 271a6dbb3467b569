// modellane console: every served model, live, from the gateway's admin API.
// Plain JavaScript, no build step, no hosted assets. The operator's admin key stays in
// sessionStorage (this tab only) and goes out as "Authorization: Bearer <key>".
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const KEY_STORE = "modellane.adminKey";
  // The gateway may sit under a route prefix: the API lives beside /console.
  const BASE = location.pathname.replace(/\/console(\/.*)?$/, "");

  const $ = (id) => document.getElementById(id);
  const state = { timer: null, cards: new Map(), eventsSig: "", promoteApi: false, busy: false };

  class AuthError extends Error {}

  // -- DOM helpers: text only, never HTML from the server ----------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "testid") el.dataset.testid = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "style") el.setAttribute("style", value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const fmt = (value, digits = 3) =>
    value === null || value === undefined ? "-" : typeof value === "number" ? value.toFixed(digits) : String(value);
  const pct = (value) => `${Math.round(Number(value || 0) * 10) / 10}%`;
  const clock = (unix) => (unix ? new Date(unix * 1000).toLocaleTimeString() : "-");

  function show(id, text, isError) {
    const el = $(id);
    el.textContent = text || "";
    el.hidden = !text;
    if (id === "notice") el.className = isError ? "banner error" : "banner";
  }

  // -- the admin API -----------------------------------------------------------------------

  async function api(method, path, body) {
    const key = sessionStorage.getItem(KEY_STORE);
    if (!key) throw new AuthError("enter an admin key");
    const init = { method, headers: { Authorization: `Bearer ${key}` } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(BASE + path, init);
    } catch (err) {
      throw new Error(`cannot reach the gateway (${err.message})`);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = data && data.error;
      const message = typeof error === "string" ? error : (error && error.message) || response.statusText;
      const text = `${response.status} ${message}`;
      if (response.status === 401 || response.status === 403) throw new AuthError(text);
      const err = new Error(text);
      err.status = response.status;
      throw err;
    }
    return data;
  }

  const enc = encodeURIComponent;

  // -- rendering ---------------------------------------------------------------------------

  function versionRows(status) {
    const challenger = status.challenger || {};
    const shadow = status.shadow || {};
    const weight = Number(challenger.weight || 0);
    const failures = Object.fromEntries((status.failures || []).map((f) => [f.version, f]));
    const versions = new Map((status.versions || []).map((v) => [v.version, v]));
    for (const extra of [status.deploying, status.previous_version, ...Object.keys(failures)]) {
      if (extra && !versions.has(extra)) versions.set(extra, { version: extra, aliases: [], stage: null });
    }
    const ordered = [...versions.values()].sort((a, b) => Number(b.version) - Number(a.version));
    return ordered.map((v) => {
      let role = "", traffic = "", note = "";
      if (v.version === status.serving_version) {
        role = "champion"; traffic = pct(100 - weight); note = "serving";
      } else if (v.version === challenger.version) {
        role = "challenger"; traffic = pct(weight); note = "routable";
      } else if (v.version === shadow.version) {
        role = "shadow"; traffic = `mirror ${pct((shadow.fraction ?? 0) * 100)}`; note = "routable";
      }
      if (v.version === status.deploying) note = "deploying";
      else if (failures[v.version]) {
        const f = failures[v.version];
        note = `failed ×${f.attempts}: ${f.reason} (retry in ${Math.round(f.next_try_in_s)}s)`;
      } else if (v.version === status.previous_version) {
        note = `previous champion (${status.previous_warm ? "warm" : "not deployed"})`;
      }
      const marks = [...(v.aliases || [])];
      if (v.stage) marks.push(`stage ${v.stage}`);
      return h("tr", { testid: `version-${status.name}-${v.version}` },
        h("td", {}, `v${v.version}`),
        h("td", {}, marks.join(", ")),
        h("td", {}, role ? h("span", { class: `badge ${role}` }, role) : ""),
        h("td", { class: "num" }, traffic),
        h("td", { class: failures[v.version] ? "error" : "" }, note));
    });
  }

  function trafficSplit(status) {
    const challenger = status.challenger;
    const weight = challenger ? Number(challenger.weight || 0) : 0;
    const shadow = status.shadow;
    return h("div", { testid: `traffic-${status.name}` },
      h("div", { class: "split", role: "img",
                 "aria-label": `champion ${pct(100 - weight)}, challenger ${pct(weight)}` },
        h("div", { class: "champion", style: `width:${100 - weight}%` },
          status.serving_version ? `v${status.serving_version} ${pct(100 - weight)}` : ""),
        challenger && weight > 0
          ? h("div", { class: "challenger", style: `width:${weight}%` }, `v${challenger.version} ${pct(weight)}`)
          : null),
      h("div", { class: "hint" },
        challenger ? `challenger v${challenger.version} at ${pct(weight)}` : "no challenger",
        " · ",
        shadow ? `shadow v${shadow.version} mirrors ${pct((shadow.fraction ?? 0) * 100)} of requests` : "no shadow"));
  }

  function rolloutPart(status) {
    const rollout = status.rollout;
    if (!rollout) return h("p", { class: "muted", testid: `rollout-${status.name}` }, "no rollout");
    const steps = rollout.steps || [];
    const live = rollout.status === "running" || rollout.status === "paused";
    return h("div", { testid: `rollout-${status.name}` },
      h("p", {}, `v${rollout.version} `,
        h("strong", { testid: `rollout-status-${status.name}` }, rollout.status.replace("_", " ")),
        live ? ` · step ${rollout.step + 1} of ${steps.length} · weight ${pct(rollout.weight)}` : "",
        rollout.reason ? ` · ${rollout.reason}` : ""),
      h("div", { class: "steps" }, steps.map((s, i) =>
        h("span", { class: i < rollout.step || rollout.status === "promoted" ? "done" : i === rollout.step && live ? "current" : "" }, pct(s)))),
      (rollout.gates || []).length
        ? h("table", {},
          h("thead", {}, h("tr", {}, ["gate", "value", "limit", "passed", "detail"].map((c) => h("th", {}, c)))),
          h("tbody", {}, rollout.gates.map((g) => h("tr", {},
            h("td", {}, g.name), h("td", { class: "num" }, fmt(g.value)), h("td", { class: "num" }, fmt(g.limit)),
            h("td", { class: g.passed ? "pass" : "fail" }, g.passed ? "yes" : "NO"), h("td", {}, g.detail || "")))))
        : h("p", { class: "hint" }, "no gate figures yet"));
  }

  function comparisonPart(status) {
    const rows = [];
    for (const role of ["challenger", "shadow"]) {
      const info = status[role];
      const c = info && info.comparison;
      if (!c) continue;
      const figure = c.kind === "embedding" ? `cosine ${fmt(c.agreement)}`
        : c.kind === "numeric" ? `agreement ${fmt(c.agreement)}, mean diff ${fmt(c.mean)}`
        : `agreement ${fmt(c.agreement)}`;
      rows.push(h("tr", {}, h("td", {}, role), h("td", {}, `v${info.version}`), h("td", { class: "num" }, c.compared),
        h("td", { class: "num", testid: `agreement-${status.name}-${role}` }, figure),
        h("td", { class: "num" }, fmt(c.latency_ratio, 2)),
        h("td", { class: "num" }, `${c.errors} / ${c.timeouts} / ${c.dropped}`)));
    }
    if (!rows.length) return h("p", { class: "muted", testid: `comparison-${status.name}` }, "no answers compared yet");
    return h("table", { testid: `comparison-${status.name}` },
      h("thead", {}, h("tr", {}, ["role", "version", "compared", "figure", "latency ratio", "errors / timeouts / dropped"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows));
  }

  function driftPart(name, drift) {
    const testid = `drift-${name}`;
    if (!drift) return h("p", { class: "muted", testid }, "drift not available");
    const features = drift.features || [];
    if (!features.length) {
      return h("p", { class: "muted", testid }, drift.baseline ? "no live figures yet" : "no baseline for this version");
    }
    return h("table", { testid },
      h("thead", {}, h("tr", {}, ["feature", "PSI", "KL", "window", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, features.map((f) => h("tr", {},
        h("td", {}, f.feature), h("td", { class: "num" }, fmt(f.psi)), h("td", { class: "num" }, fmt(f.kl)),
        h("td", { class: "num" }, f.window),
        f.psi === null || f.psi === undefined
          ? h("td", { class: "muted" }, "too few values")
          : h("td", { class: f.drifted ? "fail" : "pass" }, f.drifted ? "DRIFTED" : "ok")))));
  }

  // -- live quality: plain SVG charts, text through text nodes only -------------------------

  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f7d4f", "#c27b12", "#6b5bb8", "#1f6feb", "#b42318", "#0e7c86", "#667085"];
  const CHART = { width: 480, height: 160, left: 46, right: 10, top: 8, bottom: 20 };
  const ROLES = ["champion", "challenger", "shadow"];

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) el.setAttribute(name === "testid" ? "data-testid" : name, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const num = (value) => (value === null || value === undefined || !Number.isFinite(Number(value)) ? null : Number(value));
  const qfmt = (metric, value) =>
    num(value) === null ? "-" : metric === "accuracy" ? `${(num(value) * 100).toFixed(1)}%` : fmt(num(value));

  function valueRange(metric, values) {
    if (!values.length) return [0, 1];
    let lo = values.reduce((a, b) => Math.min(a, b)), hi = values.reduce((a, b) => Math.max(a, b));
    if (metric === "accuracy") return [Math.max(0, lo - 0.05), Math.min(1, hi + 0.05)];
    const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 1;
    lo = lo >= 0 ? Math.max(0, lo - pad) : lo - pad;
    hi += pad;
    return [lo, hi];
  }

  // One SVG line chart. lines: [{ version, color, points: [[t, value or null], ...] }]; a null
  // value breaks the line, and a point with no neighbour is drawn as a dot.
  function lineChart(testid, label, lines, [t0, t1], [y0, y1], yFormat) {
    const { width, height, left, right, top, bottom } = CHART;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
    const y = (v) => top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom);
    const ticks = [y0, (y0 + y1) / 2, y1].map((v) => svg("g", { class: "tick" },
      svg("line", { x1: left, x2: width - right, y1: y(v).toFixed(1), y2: y(v).toFixed(1) }),
      svg("text", { x: left - 4, y: (y(v) + 3).toFixed(1), "text-anchor": "end" }, yFormat(v))));
    const times = [[t0, "start"], [t1, "end"]].map(([t, anchor]) =>
      svg("text", { class: "time", x: x(t).toFixed(1), y: height - 5, "text-anchor": anchor }, clock(t)));
    const drawn = lines.map((line) => {
      let d = "";
      const dots = [];
      line.points.forEach(([t, v], i) => {
        if (v === null) return;
        const start = i === 0 || line.points[i - 1][1] === null;
        d += `${start ? "M" : "L"}${x(t).toFixed(1)} ${y(v).toFixed(1)} `;
        const next = line.points[i + 1];
        if (start && (!next || next[1] === null)) dots.push([t, v]);
      });
      return svg("g", { class: "series", "data-version": line.version, stroke: line.color, fill: line.color },
        d ? svg("path", { class: "line", testid: `${testid}-v${line.version}`, d: d.trim() }) : null,
        dots.map(([t, v]) => svg("circle", { class: "dot", cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 2.5 },
          svg("title", {}, `v${line.version} ${yFormat(v)} at ${clock(t)}`))));
    });
    return svg("svg", { class: "chart", testid, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label },
      svg("title", {}, label), ticks, times, drawn);
  }

  function qualityPart(status, quality) {
    const name = status.name;
    const testid = `quality-${name}`;
    if (quality && quality.error) return h("p", { class: "muted", testid }, `quality not available: ${quality.error}`);
    // Without the quality endpoint, the status may still carry each role's current figures.
    const current = quality ? quality.current || [] : Object.values(status.quality || {});
    const history = (quality && quality.history) || [];
    if (!current.length && !history.length) {
      return h("div", { class: "quality", testid },
        h("p", { class: "muted", testid: `quality-empty-${name}` }, "no quality figures yet"));
    }
    const metric = (quality && quality.metric) || (current[0] && current[0].metric) || "";

    // One series per version, in version order; a version's role is its latest one.
    const byVersion = new Map();
    for (const row of history) {
      const t = num(row.t);
      if (t === null) continue;
      const version = String(row.version);
      if (!byVersion.has(version)) byVersion.set(version, { version, role: row.role, quality: [], share: [] });
      const entry = byVersion.get(version);
      entry.role = row.role;
      entry.quality.push([t, num(row.value)]);
      entry.share.push([t, num(row.share)]);
    }
    for (const row of current) {
      const entry = byVersion.get(String(row.version));
      if (entry) entry.role = row.role;
    }
    const series = [...byVersion.values()]
      .sort((a, b) => Number(a.version) - Number(b.version) || a.version.localeCompare(b.version))
      .map((entry, i) => ({ ...entry, color: PALETTE[i % PALETTE.length] }));

    let charts = h("p", { class: "hint", testid: `quality-history-empty-${name}` }, "no history yet");
    if (series.length) {
      const times = history.map((row) => num(row.t)).filter((t) => t !== null);
      let [t0, t1] = [times.reduce((a, b) => Math.min(a, b)), times.reduce((a, b) => Math.max(a, b))];
      if (t1 - t0 < 1) [t0, t1] = [t0 - 30, t1 + 30];
      const values = series.flatMap((s) => s.quality.map(([, v]) => v)).filter((v) => v !== null);
      const lines = (key) => series.map((s) => ({ version: s.version, color: s.color, points: s[key] }));
      charts = h("div", { class: "charts" },
        h("figure", {},
          lineChart(`quality-chart-${name}`, `${name}: live ${metric} per version`, lines("quality"),
            [t0, t1], valueRange(metric, values), (v) => qfmt(metric, v)),
          h("figcaption", { class: "hint" }, `live ${metric || "quality"} per version`)),
        h("figure", {},
          lineChart(`share-chart-${name}`, `${name}: traffic share per version`, lines("share"),
            [t0, t1], [0, 100], (v) => `${Math.round(v)}%`),
          h("figcaption", { class: "hint" }, "traffic share per version (percent)")),
        h("ul", { class: "legend", testid: `quality-legend-${name}` }, series.map((s) =>
          h("li", { "data-version": s.version },
            h("span", { class: "swatch", style: `background:${s.color}` }),
            `v${s.version}${s.role ? ` (${s.role})` : ""}`))));
    }

    const table = current.length
      ? h("table", { testid: `quality-table-${name}` },
        h("thead", {}, h("tr", {}, ["version", "role", metric || "value", "interval", "labels / total", "updated"].map((c) => h("th", {}, c)))),
        h("tbody", {}, current.map((r) => h("tr", { testid: `quality-row-${name}-${r.version}` },
          h("td", {}, `v${r.version}`),
          h("td", {}, ROLES.includes(r.role) ? h("span", { class: `badge ${r.role}` }, r.role) : r.role || ""),
          h("td", { class: "num", testid: `quality-value-${name}-${r.version}` },
            num(r.value) === null ? "no labels yet" : qfmt(r.metric || metric, r.value)),
          h("td", { class: "num" }, num(r.low) === null ? "-" : `${qfmt(r.metric || metric, r.low)} – ${qfmt(r.metric || metric, r.high)}`),
          h("td", { class: "num" }, `${r.labels ?? 0} / ${r.labels_total ?? "-"}`),
          h("td", {}, clock(r.updated_at))))))
      : h("p", { class: "hint" }, "no current figures");
    return h("div", { class: "quality", testid }, charts, table);
  }

  function actions(status) {
    const name = status.name;
    const rollout = status.rollout || {};
    const running = rollout.status === "running";
    const paused = rollout.status === "paused";
    const previous = status.previous_version;
    const buttons = [
      h("button", { type: "button", class: "danger", testid: `rollback-${name}`, disabled: !previous,
                    title: previous ? `move alias champion back to v${previous}` : "no previous champion",
                    onclick: () => act(name, "rollback", `Roll back ${name} from v${status.serving_version} to v${previous}?`) },
        previous ? `Roll back to v${previous}` : "Roll back"),
      h("button", { type: "button", testid: `pause-${name}`, disabled: !running,
                    onclick: () => act(name, "pause") }, "Pause rollout"),
      h("button", { type: "button", testid: `resume-${name}`, disabled: !paused,
                    onclick: () => act(name, "resume") }, "Resume rollout"),
      h("button", { type: "button", class: "danger", testid: `abort-${name}`, disabled: !(running || paused),
                    onclick: () => act(name, "abort", `Abort the rollout of ${name} v${rollout.version}? Its weight drops to 0.`) },
        "Abort rollout"),
    ];
    // A version the registry names champion that does not serve (require_approval, not yet
    // approved), or a rollout waiting at its last step for an approval.
    const held = (status.versions || []).find((v) => (v.aliases || []).includes("champion") &&
                                                      v.version !== status.serving_version);
    const awaiting = held ? held.version
      : (rollout.reason || "").includes("waiting for an approval") ? rollout.version : null;
    if (awaiting) {
      buttons.push(h("button", { type: "button", testid: `approve-${name}`,
        onclick: () => approve(name, awaiting) }, `Approve v${awaiting}`));
    }
    const challenger = status.challenger;
    if (challenger && state.promoteApi) {
      buttons.push(h("button", { type: "button", testid: `promote-${name}`,
        onclick: () => act(name, "promote", `Promote ${name} v${challenger.version} to champion?`, { version: challenger.version }) },
      `Promote v${challenger.version}`));
    } else if (challenger) {
      buttons.push(h("span", { class: "hint", testid: `promote-hint-${name}` },
        "promote: ", h("code", {}, `modellane promote ${name} ${challenger.version}`)));
    }
    return h("div", { class: "actions" }, buttons);
  }

  function card(status, drift) {
    const name = status.name;
    const health = status.health;
    return h("article", { class: "card", testid: `model-${name}` },
      h("div", { class: "model-head" },
        h("h2", {}, name),
        status.serving_version
          ? h("span", { class: "serving", testid: `serving-${name}` }, `v${status.serving_version}`)
          : h("span", { class: "badge bad", testid: `serving-${name}` }, "no champion"),
        h("span", { class: "muted" }, status.source || ""),
        h("span", { class: "muted" }, `since ${clock(status.loaded_at)}`),
        h("span", { class: health && health.status === "RUNNING" ? "pass" : "fail", testid: `health-${name}` },
          health ? `${health.status} · replicas: ${Object.entries(health.replicas || {}).map(([s, n]) => `${n} ${s.toLowerCase()}`).join(", ") || "none"}` : "no healthy champion")),
      status.problem ? h("p", { class: "error" }, status.problem) : null,
      trafficSplit(status),
      h("div", { class: "grid" },
        h("div", {}, h("h3", {}, "Versions"),
          h("table", { testid: `versions-${name}` },
            h("thead", {}, h("tr", {}, ["version", "aliases / stage", "role", "traffic", "state"].map((c) => h("th", {}, c)))),
            h("tbody", {}, versionRows(status)))),
        h("div", {}, h("h3", {}, "Rollout"), rolloutPart(status))),
      h("div", { class: "grid" },
        h("div", {}, h("h3", {}, "Shadow and challenger answers vs champion"), comparisonPart(status)),
        h("div", {}, h("h3", {}, `Drift${drift && drift.version ? ` of v${drift.version}` : ""}`), driftPart(name, drift))),
      h("section", { class: "quality-panel", "aria-label": `${name} live quality` },
        h("h3", {}, "Live quality"), h("div", { class: "quality-slot" })),
      actions(status));
  }

  function renderModels(views) {
    const container = $("models");
    const seen = new Set();
    views.forEach(({ status, drift, quality }, index) => {
      seen.add(status.name);
      // Re-render a card only when its data changed: a click never lands on a stale node.
      // Live quality moves with every label: its panel is redrawn on its own, inside the card.
      const sig = JSON.stringify([{ ...status, quality: undefined }, drift, state.promoteApi]);
      let entry = state.cards.get(status.name);
      if (!entry || entry.sig !== sig) {
        const el = card(status, drift);
        if (entry) entry.el.replaceWith(el);
        entry = { sig, el, qualitySig: null };
        state.cards.set(status.name, entry);
      }
      const qualitySig = JSON.stringify([status.quality, quality]);
      if (entry.qualitySig !== qualitySig) {
        entry.el.querySelector(".quality-slot").replaceChildren(qualityPart(status, quality));
        entry.qualitySig = qualitySig;
      }
      if (container.children[index] !== entry.el) container.insertBefore(entry.el, container.children[index] || null);
    });
    for (const [name, entry] of state.cards) {
      if (!seen.has(name)) { entry.el.remove(); state.cards.delete(name); }
    }
    applyFilter();
  }

  function applyFilter() {
    const wanted = $("filter").value.trim().toLowerCase();
    let shown = 0;
    for (const [name, entry] of state.cards) {
      entry.el.hidden = wanted !== "" && !name.toLowerCase().includes(wanted);
      if (!entry.el.hidden) shown += 1;
    }
    $("count").textContent = wanted ? `${shown} of ${state.cards.size} models` : `${state.cards.size} models`;
  }

  function renderEvents(events) {
    const sig = events.length ? `${events[events.length - 1].seq}/${events.length}` : "none";
    if (sig === state.eventsSig) return;
    state.eventsSig = sig;
    const rows = [...events].reverse().map((e) => h("tr", { testid: "event" },
      h("td", { class: "num" }, e.seq), h("td", {}, clock(e.time)), h("td", {}, e.model || "-"),
      h("td", {}, e.version ? `v${e.version}` : "-"), h("td", {}, e.kind), h("td", {}, e.actor || "-"),
      h("td", {}, e.message)));
    $("events-body").replaceChildren(...rows);
    $("events-card").hidden = false;
  }

  // The latest batch jobs (modellane batch list); hidden until there is one.
  function renderJobs(jobs) {
    if (!jobs || !jobs.length) return;
    const rows = jobs.map((j) => h("tr", { testid: "job" },
      h("td", {}, j.job_id), h("td", {}, j.state), h("td", {}, `${j.model} v${j.version}`),
      h("td", { class: "num" }, j.rows_total == null ? `${j.rows_done}` : `${j.rows_done} / ${j.rows_total}`),
      h("td", { class: "num" }, j.rows_failed), h("td", { class: "num" }, j.rows_per_s ? Math.round(j.rows_per_s) : ""),
      h("td", {}, j.message || "")));
    $("jobs-body").replaceChildren(...rows);
    $("jobs-card").hidden = false;
  }

  // -- the loop ----------------------------------------------------------------------------

  // 404 (no figures for this model) and 503 (no quality store yet) mean "nothing yet".
  const qualityMissing = (err) =>
    err.status === 404 || err.status === 503 || err instanceof AuthError ? null : { error: err.message };

  async function refresh() {
    const list = await api("GET", "/v1/models");
    const names = list.models.map((m) => m.name);
    const [statuses, drifts, qualities, events, jobs] = await Promise.all([
      Promise.all(names.map((n) => api("GET", `/admin/models/${enc(n)}`))),
      Promise.all(names.map((n) => api("GET", `/admin/models/${enc(n)}/drift`).catch(() => null))),
      Promise.all(names.map((n) => api("GET", `/admin/models/${enc(n)}/quality`).catch(qualityMissing))),
      api("GET", "/admin/events?limit=30"),
      api("GET", "/admin/jobs?limit=10").catch(() => null), // no Jobs API: no card
    ]);
    renderModels(statuses.map((status, i) => ({ status, drift: drifts[i], quality: qualities[i] })));
    renderEvents(events);
    renderJobs(jobs);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  async function tick() {
    clearTimeout(state.timer);
    try {
      await refresh();
      show("error", "");
    } catch (err) {
      if (err instanceof AuthError) return askForKey(`The gateway refused the key: ${err.message}. Enter an admin key.`);
      show("error", `${err.message}; retrying every ${REFRESH_MS / 1000}s`);
    }
    state.timer = setTimeout(tick, REFRESH_MS);
  }

  async function approve(name, version) {
    const note = window.prompt(`Approve ${name} v${version} to serve as champion. Note (kept with the approval):`, "");
    if (note === null || state.busy) return;
    state.busy = true;
    try {
      const answer = await api("POST", `/admin/models/${enc(name)}/versions/${enc(version)}/approve`, { note });
      show("notice", `${name}: v${version} approved by ${answer.approved_by}`);
    } catch (err) {
      if (err instanceof AuthError) { state.busy = false; return askForKey(`The gateway refused the key: ${err.message}.`); }
      show("notice", `${name}: approval failed: ${err.message}`, true);
    } finally {
      state.busy = false;
    }
    tick();
  }

  async function act(name, action, question, body) {
    if (state.busy) return;
    if (question && !window.confirm(question)) return;
    state.busy = true;
    const paths = {
      rollback: `/admin/models/${enc(name)}/rollback`,
      promote: `/admin/models/${enc(name)}/promote`,
      pause: `/admin/models/${enc(name)}/rollout/pause`,
      resume: `/admin/models/${enc(name)}/rollout/resume`,
      abort: `/admin/models/${enc(name)}/rollout/abort`,
    };
    show("notice", `${name}: ${action}…`);
    try {
      const answer = await api("POST", paths[action], body);
      if (action === "rollback" || action === "promote") {
        const when = answer.switched ? `switched in ${Number(answer.switch_s).toFixed(2)}s` : "switch under way";
        show("notice", `${name}: v${answer.from_version} → v${answer.to_version}, ${when}`);
      } else {
        show("notice", `${name}: rollout ${action}d`);
      }
    } catch (err) {
      if (err instanceof AuthError) { state.busy = false; return askForKey(`The gateway refused the key: ${err.message}.`); }
      show("notice", `${name}: ${action} failed: ${err.message}`, true);
    } finally {
      state.busy = false;
    }
    tick();
  }

  function askForKey(message) {
    clearTimeout(state.timer);
    sessionStorage.removeItem(KEY_STORE);
    $("key-form").hidden = false;
    $("forget").hidden = true;
    $("toolbar").hidden = true;
    $("key-message").textContent = message || "";
    $("updated").textContent = "not connected";
    $("key-input").focus();
  }

  async function connect(event) {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $("key-input").value = "";
    $("key-form").hidden = true;
    $("forget").hidden = false;
    $("toolbar").hidden = false;
    $("key-message").textContent = "";
    tick();
  }

  async function detectPromote() {
    // A promote endpoint is not part of the admin API yet; offer the button once it is.
    try {
      const spec = await (await fetch(`${BASE}/openapi.json`)).json();
      state.promoteApi = Boolean(spec.paths && spec.paths["/admin/models/{name}/promote"]);
    } catch (_) {
      state.promoteApi = false;
    }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("key-form").addEventListener("submit", connect);
    // ?model=NAME opens the console filtered to that model.
    $("filter").value = new URLSearchParams(location.search).get("model") || "";
    $("filter").addEventListener("input", applyFilter);
    $("forget").addEventListener("click", () => {
      $("models").replaceChildren();
      state.cards.clear();
      $("events-card").hidden = true;
      state.eventsSig = "";
      askForKey("");
    });
    await detectPromote();
    if (sessionStorage.getItem(KEY_STORE)) {
      $("forget").hidden = false;
      $("toolbar").hidden = false;
      tick();
    } else {
      askForKey("");
    }
  });
})();
