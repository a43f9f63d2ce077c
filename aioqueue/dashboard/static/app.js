/* aioqueue dashboard: one page, hash routes, a JSON API under api/ and live updates from
   api/stream (Server-Sent Events). Every URL is relative, so the app works wherever it is
   mounted. Text from tasks (arguments, results, tracebacks) is only ever set as text. */
"use strict";
(function () {
  const S = {
    config: null,
    overview: null,
    page: null,
    params: {},
    detailId: null,
    lastEventId: null,
    es: null,
    charts: {},
    feed: [],
    refreshing: false,
    dirty: false,
    refreshTimer: null,
    lastRefresh: 0,
    skew: 0,
    seenRows: { tasks: null, failed: null },
  };
  const FINAL = new Set(["SUCCESS", "FAILURE", "REVOKED", "DEAD"]);
  const PAGES = ["overview", "tasks", "failed", "scheduled", "audit"];

  // -- small helpers ------------------------------------------------------------------------
  const $ = (sel, root) => (root || document).querySelector(sel);

  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") e.className = v;
        else if (k === "dataset") Object.assign(e.dataset, v);
        else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  const pad = (n) => String(n).padStart(2, "0");
  const nowS = () => Date.now() / 1000 + S.skew;

  function fmtTime(ts) {
    if (ts === null || ts === undefined) return "—";
    const d = new Date(ts * 1000);
    const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (d.toDateString() === new Date().toDateString()) return t;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${t}`;
  }
  function fmtAge(s) {
    if (s === null || s === undefined) return "—";
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${pad(s % 60)}s`;
    const hr = Math.floor(m / 60);
    if (hr < 48) return `${hr}h ${pad(m % 60)}m`;
    return `${Math.floor(hr / 24)}d ${hr % 24}h`;
  }
  function fmtDur(s) {
    if (s === null || s === undefined) return "—";
    if (s < 0.001) return `${Math.round(s * 1e6)} µs`;
    if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 0)} ms`;
    if (s < 60) return `${s.toFixed(2)} s`;
    return fmtAge(s);
  }
  const ago = (ts) => (ts === null || ts === undefined ? "—" : `${fmtAge(nowS() - ts)} ago`);
  const until = (ts) => {
    const d = ts - nowS();
    return d >= 0 ? `in ${fmtAge(d)}` : `${fmtAge(-d)} late`;
  };
  const fmtNum = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString());
  const shortId = (id) => (id && id.length > 14 ? id.slice(0, 8) + "…" + id.slice(-4) : id || "");

  function badge(state) {
    return h("span", { class: "badge " + (state || ""), dataset: { state: state || "" } }, state || "?");
  }
  function taskLink(id, text) {
    return h("a", { class: "id", href: "#/task/" + encodeURIComponent(id), title: id }, text || shortId(id));
  }
  function clip(text, max) {
    if (text === null || text === undefined) return h("span", { class: "muted" }, "—");
    return h("span", { class: "clip mono", title: text, style: max ? `max-width:${max}px` : null }, text);
  }
  function emptyRow(table, cols, text) {
    table.tBodies[0].replaceChildren(h("tr", null, h("td", { class: "empty", colspan: cols }, text)));
  }
  function cmpId(a, b) {
    const [am, as] = a.split("-").map(Number);
    const [bm, bs] = b.split("-").map(Number);
    return am - bm || as - bs;
  }

  function toast(text, error) {
    const t = h("div", { class: "toast" + (error ? " error" : "") }, text);
    $("#toasts").append(t);
    setTimeout(() => t.remove(), error ? 9000 : 4500);
  }

  // -- the API ---------------------------------------------------------------------------------
  async function api(path, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: { Accept: "application/json" } }, options || {});
    const res = await fetch(path, opts);
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (!res.ok) {
      const err = new Error((data && data.error) || `${res.status} ${res.statusText}`);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  async function act(action, body, label) {
    try {
      return await api("api/actions/" + action, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body || {}),
      });
    } catch (e) {
      toast(`${label || action} failed: ${e.message}`, true);
      throw e;
    }
  }

  function button(text, cls, onClick, attrs) {
    return h("button", Object.assign({ type: "button", class: "btn action " + (cls || ""), onclick: async (ev) => {
      ev.stopPropagation();
      const b = ev.currentTarget;
      b.disabled = true;
      try {
        await onClick(ev);
      } catch (e) {
        /* reported by act() */
      } finally {
        b.disabled = false;
      }
    } }, attrs || {}), text);
  }
  const canAct = () => S.config && !S.config.read_only;

  // -- routing ---------------------------------------------------------------------------------
  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const q = raw.indexOf("?");
    const path = q < 0 ? raw : raw.slice(0, q);
    const params = Object.fromEntries(new URLSearchParams(q < 0 ? "" : raw.slice(q + 1)));
    if (path.startsWith("task/")) return { page: "task", id: decodeURIComponent(path.slice(5)), params };
    return { page: PAGES.includes(path) ? path : "overview", params };
  }

  function route() {
    const r = parseHash();
    const changed = r.page !== S.page || r.id !== S.detailId;
    S.page = r.page;
    S.params = r.params;
    S.detailId = r.id || null;
    for (const sec of document.querySelectorAll(".page")) sec.hidden = sec.id !== "page-" + r.page;
    const navPage = r.page === "task" ? "tasks" : r.page;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === navPage);
    if (r.page === "tasks") fillForm($("#tasks-filters"), r.params);
    if (r.page === "failed") fillForm($("#failed-filters"), r.params);
    if (changed) {
      S.seenRows = { tasks: null, failed: null };
      if (r.page === "task") $("#task-detail").replaceChildren(h("p", { class: "muted" }, "Loading…"));
      window.scrollTo(0, 0);
    }
    if (r.page === "overview") {
      if (S.overview) renderOverview(S.overview);
      ensureCharts();
    }
    refresh();
  }

  function fillForm(form, params) {
    for (const el of form.elements) {
      if (!el.name) continue;
      const want = params[el.name] || (el.tagName === "SELECT" ? el.options[0].value : "");
      if (el.value !== want) el.value = want;
    }
  }

  function formParams(form) {
    const out = {};
    for (const el of form.elements) if (el.name && el.value) out[el.name] = el.value;
    return out;
  }

  function watchForm(form, page) {
    let timer = null;
    const apply = () => {
      const qs = new URLSearchParams(formParams(form)).toString();
      const target = "#/" + page + (qs ? "?" + qs : "");
      if (location.hash !== target) location.hash = target;
    };
    form.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(apply, 250);
    });
    form.addEventListener("change", apply);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      apply();
    });
  }

  function queryFor(params, extra) {
    const q = new URLSearchParams();
    for (const k of ["id", "name", "state", "queue"]) if (params[k]) q.set(k, params[k]);
    if (params.range) q.set("since", String(Math.floor(nowS() - Number(params.range))));
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q.toString();
  }

  // -- refreshing --------------------------------------------------------------------------------
  async function refresh() {
    if (S.refreshing) {
      S.dirty = true;
      return;
    }
    S.refreshing = true;
    try {
      switch (S.page) {
        case "overview":
          if (!S.overview) onOverview(await api("api/overview"));
          break;
        case "tasks":
          await loadTasks();
          break;
        case "task":
          await loadTask();
          break;
        case "failed":
          await Promise.all([loadFailed(), loadDead()]);
          break;
        case "scheduled":
          await loadScheduled();
          break;
        case "audit":
          await loadAudit();
          break;
      }
    } catch (e) {
      toast(`Could not load: ${e.message}`, true);
    } finally {
      S.refreshing = false;
      S.lastRefresh = Date.now();
      if (S.dirty) {
        S.dirty = false;
        scheduleRefresh();
      }
    }
  }

  function scheduleRefresh() {
    if (S.refreshTimer) return;
    const wait = Math.max(100, 700 - (Date.now() - S.lastRefresh));
    S.refreshTimer = setTimeout(() => {
      S.refreshTimer = null;
      refresh();
    }, wait);
  }

  // -- live updates ------------------------------------------------------------------------------
  function setLive(state, text) {
    const live = $("#live");
    live.className = "live " + state;
    $("#live-text").textContent = text || { ok: "live", down: "disconnected", connecting: "connecting" }[state];
  }

  function connect() {
    if (S.es) S.es.close();
    const url = "api/stream" + (S.lastEventId ? "?after=" + encodeURIComponent(S.lastEventId) : "");
    const es = new EventSource(url);
    S.es = es;
    es.addEventListener("hello", () => setLive("ok"));
    es.addEventListener("events", (ev) => onEvents(JSON.parse(ev.data)));
    es.addEventListener("overview", (ev) => onOverview(JSON.parse(ev.data)));
    es.addEventListener("status", (ev) => {
      const s = JSON.parse(ev.data);
      setBrokerError(s.ok ? null : `Cannot read from the broker: ${s.error}`);
    });
    es.addEventListener("resync", () => {
      loadFeed();
      refresh();
    });
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        setLive("down");
        setTimeout(connect, 3000);
      } else {
        setLive("connecting", "reconnecting");
      }
    };
  }

  function onEvents(list) {
    const fresh = S.lastEventId ? list.filter((e) => cmpId(e.id, S.lastEventId) > 0) : list;
    if (!fresh.length) return;
    S.lastEventId = fresh[fresh.length - 1].id;
    addToFeed(fresh, true);
    const taskEvents = fresh.filter((e) => e.task_id);
    if (!taskEvents.length) return;
    if (S.page === "tasks" || S.page === "failed") scheduleRefresh();
    else if (S.page === "task" && taskEvents.some((e) => e.task_id === S.detailId)) scheduleRefresh();
  }

  function onOverview(ov) {
    S.overview = ov;
    S.skew = ov.now - Date.now() / 1000;
    setBrokerError(null); // a snapshot was just read: the broker answers
    renderBanners(ov);
    if (S.page === "overview") renderOverview(ov);
    else if (S.page === "scheduled" || S.page === "audit") scheduleRefresh();
  }

  function setBrokerError(text) {
    const b = $("#broker-error");
    b.hidden = !text;
    b.textContent = text || "";
  }

  function renderBanners(ov) {
    $("#no-workers").hidden = ov.workers.length > 0;
    const quiet = ov.workers.filter((w) => !w.events).map((w) => w.name);
    const ne = $("#no-events");
    ne.hidden = quiet.length === 0;
    if (quiet.length) {
      ne.replaceChildren(
        h("strong", null, `${quiet.length === 1 ? "Worker" : "Workers"} ${quiet.join(", ")} ${quiet.length === 1 ? "does" : "do"} not record task events`),
        ": their tasks do not appear under Tasks. Start workers with ",
        h("code", null, "-E"), " or set ", h("code", null, "worker_send_task_events = True"), "."
      );
    }
    const failed = ov.throughput.totals.FAILURE + ov.throughput.totals.DEAD;
    const dead = ov.queues.reduce((n, q) => n + q.dead, 0);
    const pill = $("#nav-failed");
    const total = failed + dead;
    pill.hidden = total === 0;
    pill.textContent = String(total);
    pill.title = `${failed} failed in the last hour, ${dead} dead letters`;
  }

  // -- overview ------------------------------------------------------------------------------------
  function card(label, value, cls, title) {
    return h("div", { class: "card " + (cls || ""), title: title || null }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
  }

  function renderOverview(ov) {
    const sum = (xs, f) => xs.reduce((n, x) => n + (f(x) || 0), 0);
    const t = ov.throughput.totals;
    const running = sum(ov.workers, (w) => w.running);
    const slots = sum(ov.workers, (w) => w.concurrency);
    const dead = sum(ov.queues, (q) => q.dead);
    $("#cards").replaceChildren(
      card("Workers", fmtNum(ov.workers.length), ov.workers.length ? "ok" : "bad"),
      card("Running", `${fmtNum(running)} / ${fmtNum(slots)}`, null, "tasks running / concurrency of all workers"),
      card("Waiting", fmtNum(sum(ov.queues, (q) => q.waiting)), sum(ov.queues, (q) => q.waiting) && !ov.workers.length ? "warn" : null),
      card("Delayed", fmtNum(sum(ov.queues, (q) => q.delayed))),
      card("Succeeded · 1h", fmtNum(t.SUCCESS), "ok"),
      card("Failed · 1h", fmtNum(t.FAILURE + t.DEAD), t.FAILURE + t.DEAD ? "bad" : null),
      card("Dead letters", fmtNum(dead), dead ? "bad" : null)
    );

    $("#workers-count").textContent = ov.workers.length ? `${ov.workers.length} live` : "";
    const wt = $("#workers-table");
    if (!ov.workers.length) {
      emptyRow(wt, 8, "No workers are running.");
    } else {
      wt.tBodies[0].replaceChildren(...ov.workers.map((w) => {
        const share = w.concurrency ? w.running / w.concurrency : 0;
        return h("tr", { dataset: { worker: w.name } },
          h("td", null, h("strong", null, w.name), " ", h("span", { class: "muted small" }, `${w.hostname} · pid ${w.pid}`),
            w.events ? null : h("span", { class: "badge RETRY", title: "task events are off on this worker" }, "no events")),
          h("td", null, w.queues.join(", ")),
          h("td", { class: "num" }, fmtNum(w.concurrency)),
          h("td", null, h("span", { class: "bar" + (share >= 1 ? " full" : "") }, h("span", { style: `width:${Math.min(100, share * 100).toFixed(1)}%` })), fmtNum(w.running)),
          h("td", { class: "num" }, fmtNum(w.processed)),
          h("td", { class: "num" }, fmtAge(w.uptime_s)),
          h("td", { class: "num" }, w.load === null || w.load === undefined ? "—" : w.load.toFixed(2)),
          h("td", { class: "num muted" }, `${fmtAge(w.seen_ago_s)} ago`));
      }));
    }

    const qt = $("#queues-table");
    qt.tBodies[0].replaceChildren(...ov.queues.map((q) => h("tr", { dataset: { queue: q.name } },
      h("td", null, h("strong", null, q.name)),
      h("td", { class: "num" }, fmtNum(q.waiting)),
      h("td", { class: "num" }, fmtNum(q.running)),
      h("td", { class: "num" }, fmtNum(q.delayed)),
      h("td", { class: "num" }, q.dead ? h("a", { href: "#/failed" }, fmtNum(q.dead)) : "0"),
      h("td", { class: "num" }, q.oldest_waiting_age_s === null ? "—" : fmtAge(q.oldest_waiting_age_s)),
      h("td", { class: "action-col" }, canAct() && q.waiting + q.delayed > 0
        ? button("Purge", "danger", async () => {
          if (!confirm(`Delete the ${q.waiting + q.delayed} waiting and delayed messages of queue ${q.name}? This cannot be undone.`)) return;
          const out = await act("purge-queue", { queue: q.name }, "Purge");
          toast(`Purged ${out.purged} messages from ${q.name}`);
        })
        : null))));

    const pt = $("#per-task-table");
    const rows = ov.throughput.tasks.filter((r) => r.name !== "?" || r.SENT + r.SUCCESS + r.FAILURE);
    if (!rows.length) {
      emptyRow(pt, 7, "Nothing ran in the last hour.");
    } else {
      pt.tBodies[0].replaceChildren(...rows.map((r) => h("tr", null,
        h("td", null, h("a", { href: "#/tasks?name=" + encodeURIComponent(r.name) }, r.name)),
        h("td", { class: "num" }, fmtNum(r.SENT)),
        h("td", { class: "num" }, fmtNum(r.SUCCESS)),
        h("td", { class: "num" }, r.FAILURE ? h("a", { href: "#/failed?name=" + encodeURIComponent(r.name) }, fmtNum(r.FAILURE)) : "0"),
        h("td", { class: "num" }, fmtNum(r.RETRY)),
        h("td", { class: "num" }, fmtNum(r.DEAD)),
        h("td", { class: "num" }, r.failure_rate === null ? "—" : `${r.failure_rate.toFixed(1)} %`))));
    }
    updateCharts(ov.throughput);
  }

  // -- charts ---------------------------------------------------------------------------------------
  const SERIES = [
    { key: "SUCCESS", label: "Succeeded", color: "#16a34a" },
    { key: "FAILURE", label: "Failed", color: "#dc2626" },
    { key: "RETRY", label: "Retried", color: "#f59e0b" },
    { key: "DEAD", label: "Dead-lettered", color: "#7f1d1d" },
    { key: "SENT", label: "Sent", color: "#6366f1" },
  ];

  function chartWidth(el) {
    return Math.max(300, el.clientWidth || el.parentElement.clientWidth - 32);
  }

  function ensureCharts() {
    if (typeof uPlot === "undefined" || S.charts.throughput || $("#page-overview").hidden) return;
    const empty = [[], [], [], [], [], []];
    const te = $("#chart-throughput");
    S.charts.throughput = new uPlot({
      width: chartWidth(te), height: 230,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(5, max * 1.1)] } },
      series: [{}].concat(SERIES.map((s) => ({ label: s.label, stroke: s.color, width: 2, fill: s.color + "14", points: { show: false } }))),
      axes: [{}, { size: 48 }],
      legend: { live: true },
    }, empty, te);
    const fe = $("#chart-failures");
    S.charts.failures = new uPlot({
      width: chartWidth(fe), height: 230,
      scales: { x: { time: true }, y: { range: [0, 100] } },
      series: [{}, { label: "Failure rate %", stroke: "#dc2626", width: 2, fill: "#dc262618", spanGaps: false, points: { show: true, size: 4 },
        value: (u, v) => (v === null || v === undefined ? "—" : v.toFixed(1) + " %") }],
      axes: [{}, { size: 48, values: (u, vals) => vals.map((v) => v + "%") }],
    }, [[], []], fe);
    if (S.overview) updateCharts(S.overview.throughput);
  }

  function updateCharts(tp) {
    ensureCharts();
    if (!S.charts.throughput) return;
    S.charts.throughput.setData([tp.minutes].concat(SERIES.map((s) => tp.series[s.key])));
    S.charts.failures.setData([tp.minutes, tp.failure_rate]);
  }

  function resizeCharts() {
    if (S.charts.throughput) S.charts.throughput.setSize({ width: chartWidth($("#chart-throughput")), height: 230 });
    if (S.charts.failures) S.charts.failures.setSize({ width: chartWidth($("#chart-failures")), height: 230 });
  }

  // -- live feed -------------------------------------------------------------------------------------
  async function loadFeed() {
    const data = await api("api/events?count=40");
    S.feed = [];
    if (data.last_event_id && (!S.lastEventId || cmpId(data.last_event_id, S.lastEventId) > 0)) S.lastEventId = data.last_event_id;
    addToFeed(data.events, false);
  }

  function addToFeed(events, fresh) {
    const shown = events.filter((e) => e.type !== "worker-heartbeat");
    if (!shown.length) return;
    S.feed = shown.reverse().concat(S.feed).slice(0, 40);
    const ul = $("#feed");
    ul.replaceChildren(...S.feed.map((e, i) => h("li", { class: fresh && i < shown.length ? "new" : null },
      h("span", { class: "time" }, fmtTime(e.timestamp)),
      e.state ? badge(e.state) : h("span", { class: "badge" }, e.type.replace("worker-", "worker ")),
      e.task_id ? [h("span", null, e.name || "?"), taskLink(e.task_id)]
        : e.state ? h("span", null, `a message on ${e.queue || "?"}`) : h("strong", null, e.worker || ""),
      e.exception ? clip(e.exception, 260) : null)));
  }

  // -- tasks -------------------------------------------------------------------------------------------
  function updateChoices(data) {
    const dl = $("#task-names");
    dl.replaceChildren(...data.names.map((n) => h("option", { value: n })));
    const queues = new Set(data.queues);
    if (S.overview) for (const q of S.overview.queues) queues.add(q.name);
    for (const sel of document.querySelectorAll("select[name=queue]")) {
      const cur = sel.value;
      const want = [...queues].sort();
      const have = [...sel.options].slice(1).map((o) => o.value);
      if (want.join("\n") !== have.join("\n")) {
        sel.replaceChildren(sel.options[0], ...want.map((q) => h("option", { value: q }, q)));
        sel.value = cur;
      }
    }
  }

  function markNew(kind, ids) {
    const before = S.seenRows[kind];
    S.seenRows[kind] = new Set(ids);
    return (id) => before !== null && !before.has(id);
  }

  async function loadTasks() {
    const data = await api("api/tasks?" + queryFor(S.params, { limit: 200 }));
    if (S.page !== "tasks") return;
    updateChoices(data);
    const table = $("#tasks-table");
    const isNew = markNew("tasks", data.tasks.map((t) => t.id + t.state));
    $("#tasks-summary").textContent = data.total > data.tasks.length
      ? `newest ${data.tasks.length} of ${fmtNum(data.total)} tasks` : `${fmtNum(data.total)} tasks`;
    if (!data.tasks.length) {
      emptyRow(table, 10, data.scanned_events
        ? "No task matches." : "No task events yet. Workers record them with -E (worker_send_task_events = True).");
      return;
    }
    table.tBodies[0].replaceChildren(...data.tasks.map((t) => h("tr", {
      class: isNew(t.id + t.state) ? "flash" : null,
      dataset: { taskId: t.id, state: t.state, name: t.name || "" },
      onclick: () => { location.hash = "#/task/" + encodeURIComponent(t.id); },
    },
    h("td", null, badge(t.state)),
    h("td", null, t.name || "?"),
    h("td", null, taskLink(t.id)),
    h("td", null, t.queue || "—"),
    h("td", { class: "args" }, clip(argsText(t), 360)),
    h("td", { class: "muted" }, t.worker || "—"),
    h("td", { class: "num", title: fmtTime(t.last_seen) }, ago(t.last_seen)),
    h("td", { class: "num" }, fmtDur(t.wait)),
    h("td", { class: "num" }, fmtDur(t.runtime)),
    h("td", { class: "num" }, fmtNum(t.retries)))));
  }

  function argsText(t) {
    const parts = [];
    if (t.args && t.args !== "()") parts.push(t.args);
    if (t.kwargs && t.kwargs !== "{}") parts.push(t.kwargs);
    return parts.length ? parts.join(" ") : t.args ? "()" : null;
  }

  // -- one task ------------------------------------------------------------------------------------------
  async function loadTask() {
    const id = S.detailId;
    const data = await api("api/task?id=" + encodeURIComponent(id));
    if (S.page !== "task" || S.detailId !== id) return;
    renderTask(id, data);
  }

  function field(label, value) {
    return [h("dt", null, label), h("dd", null, value === null || value === undefined || value === "" ? h("span", { class: "muted" }, "—") : value)];
  }

  function renderTask(id, data) {
    const t = data.task;
    const stored = data.stored;
    let state = t ? t.state : stored ? stored.state : "?";
    // A revoke is stored at once; its event comes only when a worker meets the message.
    if (stored && !stored.error && FINAL.has(stored.state) && !FINAL.has(state)) state = stored.state;
    const actions = [];
    if (canAct()) {
      if (t && t.retriable) {
        actions.push(button(t.retried_as ? "Retry again" : "Retry", "primary", async () => {
          const out = await act("retry", { task_id: id }, "Retry");
          toast(`Sent again as ${out.task_id}`);
          location.hash = "#/task/" + encodeURIComponent(out.task_id);
        }, { id: "retry-btn" }));
      }
      if (!FINAL.has(state)) {
        actions.push(button("Revoke", "danger", async () => {
          if (!confirm(`Revoke task ${id}? It will not run (or run again).`)) return;
          await act("revoke", { task_id: id }, "Revoke");
          toast(`Revoked ${id}`);
          refresh();
        }, { id: "revoke-btn" }));
        if (state === "STARTED") {
          actions.push(button("Terminate", "danger", async () => {
            if (!confirm(`Revoke task ${id} and cancel it where it runs?`)) return;
            await act("revoke", { task_id: id, terminate: true }, "Terminate");
            toast(`Terminating ${id}`);
            refresh();
          }));
        }
      }
    }
    const head = h("div", { class: "detail-head" },
      h("a", { href: "#/tasks" }, "← Tasks"),
      h("h1", null, (t && t.name) || (stored && stored.task) || "Task"),
      h("span", { id: "task-state" }, badge(state)),
      h("span", { class: "id" }, id),
      h("span", { class: "spacer" }),
      actions);

    const parts = [head];
    if (data.note) parts.push(h("div", { class: "banner warn" }, "Waiting for this task's events… (" + data.note + ")"));
    const links = [];
    if (data.retry_of) links.push(h("span", null, "Retry of ", taskLink(data.retry_of)));
    if (data.retried_as) links.push(h("span", null, "Retried as ", taskLink(data.retried_as)));

    if (t) {
      parts.push(h("div", { class: "panel" }, h("dl", { class: "fields" },
        field("State", badge(t.state)),
        field("Task", t.name),
        field("Id", h("span", { class: "id" }, t.id)),
        field("Queue", t.queue),
        field("Worker", t.worker),
        field("Arguments", t.args ? h("span", { class: "mono" }, t.args) : null),
        field("Keyword arguments", t.kwargs ? h("span", { class: "mono" }, t.kwargs) : null),
        field("Retries", fmtNum(t.retries)),
        field("Sent", t.sent_at ? `${fmtTime(t.sent_at)} (${ago(t.sent_at)})` : null),
        field("Started", t.started_at ? fmtTime(t.started_at) : null),
        field("Waited", t.wait !== null ? fmtDur(t.wait) : null),
        field("Ran", t.runtime !== null ? fmtDur(t.runtime) : null),
        t.dead_reason ? field("Dead-lettered", t.dead_reason) : null,
        links.length ? field("Related", links) : null)));
      if (t.result !== null && t.result !== undefined) {
        parts.push(h("div", { class: "panel" }, h("h2", null, "Result"), h("pre", { class: "value", id: "task-result" }, t.result)));
      }
      if (t.exception || t.traceback) {
        parts.push(h("div", { class: "panel" }, h("h2", null, "Exception"),
          t.exception ? h("pre", { class: "value", id: "task-exception" }, t.exception) : null,
          t.traceback ? [h("h3", null, "Traceback"), h("pre", { class: "traceback", id: "task-traceback" }, t.traceback)] : null));
      }
    } else if (links.length) {
      parts.push(h("div", { class: "panel" }, links));
    }

    if (stored) {
      parts.push(h("div", { class: "panel" }, h("h2", null, "Stored result ", h("span", { class: "muted small" }, "what the result backend holds")),
        stored.error ? h("div", { class: "banner danger" }, stored.error) : h("dl", { class: "fields" },
          field("State", badge(stored.state)),
          field("Value", stored.result !== null ? h("span", { class: "mono" }, stored.result) : null),
          field("Done", stored.date_done ? `${fmtTime(stored.date_done)} (${ago(stored.date_done)})` : null),
          field("Worker", stored.worker),
          field("Retries", fmtNum(stored.retries))),
        !t && stored.traceback ? h("pre", { class: "traceback" }, stored.traceback) : null));
    }

    if (data.events.length) {
      parts.push(h("div", { class: "panel" }, h("h2", null, "Events"),
        h("table", { class: "table" },
          h("thead", null, h("tr", null, h("th", null, "When"), h("th", null, "Event"), h("th", null, "Worker"), h("th", { class: "num" }, "Retries"), h("th", { class: "num" }, "Ran"), h("th", null, "Detail"))),
          h("tbody", null, data.events.slice().reverse().map((e) => h("tr", null,
            h("td", { class: "num" }, fmtTime(e.timestamp)),
            h("td", null, badge(e.state), " ", h("span", { class: "muted small" }, e.type)),
            h("td", null, e.worker || "—"),
            h("td", { class: "num" }, fmtNum(e.retries || 0)),
            h("td", { class: "num" }, fmtDur(e.runtime)),
            h("td", null, clip(e.exception || e.result || (e.info && e.info.reason) || null, 520))))))));
    }
    $("#task-detail").replaceChildren(...parts);
  }

  // -- failed and dead letters -------------------------------------------------------------------------
  function failedParams() {
    const p = Object.assign({}, S.params);
    if (!p.state) p.state = "FAILURE,DEAD,RETRY";
    return p;
  }

  async function loadFailed() {
    const params = failedParams();
    const data = await api("api/tasks?" + queryFor(params, { limit: 300 }));
    if (S.page !== "failed") return;
    updateChoices(data);
    const table = $("#failed-table");
    const open = data.tasks.filter((t) => t.retriable && !t.retried_as).length;
    $("#failed-summary").textContent = `${fmtNum(data.total)} tasks` + (open ? `, ${open} not retried yet` : "");
    $("#retry-all").disabled = open === 0;
    const isNew = markNew("failed", data.tasks.map((t) => t.id + t.state));
    if (!data.tasks.length) {
      emptyRow(table, 8, "No failed task.");
      return;
    }
    table.tBodies[0].replaceChildren(...data.tasks.map((t) => {
      const acts = [];
      if (t.retried_as) acts.push(h("span", { class: "muted small" }, "retried as ", taskLink(t.retried_as), " "));
      if (canAct() && t.retriable && !t.retried_as) {
        acts.push(button("Retry", "primary", async () => {
          const out = await act("retry", { task_id: t.id }, "Retry");
          toast(`${t.name} sent again as ${out.task_id}`);
          refresh();
        }));
      }
      if (canAct() && t.state === "RETRY") {
        acts.push(button("Revoke", "danger", async () => {
          if (!confirm(`Revoke task ${t.id}? Its next attempt will not run.`)) return;
          await act("revoke", { task_id: t.id }, "Revoke");
          toast(`Revoked ${t.id}`);
          refresh();
        }));
      }
      return h("tr", {
        class: isNew(t.id + t.state) ? "flash" : null,
        dataset: { taskId: t.id, state: t.state },
        onclick: () => { location.hash = "#/task/" + encodeURIComponent(t.id); },
      },
      h("td", null, badge(t.state)),
      h("td", null, t.name || "?"),
      h("td", null, taskLink(t.id)),
      h("td", null, t.queue || "—"),
      h("td", { class: "args" }, clip(t.exception || t.dead_reason, 420)),
      h("td", { class: "num", title: fmtTime(t.last_seen) }, ago(t.last_seen)),
      h("td", { class: "num" }, fmtNum(t.retries)),
      h("td", { class: "action-col" }, acts));
    }));
  }

  async function retryAll() {
    const p = failedParams();
    const states = p.state.split(",").filter((s) => s === "FAILURE" || s === "DEAD");
    const what = [p.name && `named like “${p.name}”`, p.queue && `in queue ${p.queue}`, p.range && "in the chosen time range"].filter(Boolean).join(", ");
    if (!confirm(`Send again every failed task not retried yet${what ? " " + what : ""}?`)) return;
    const body = { state: (states.length ? states : ["FAILURE", "DEAD"]).join(",") };
    if (p.name) body.name = p.name;
    if (p.queue) body.queue = p.queue;
    if (p.range) body.since = Math.floor(nowS() - Number(p.range));
    const out = await act("retry-all", body, "Retry all");
    toast(`Sent ${out.retried.length} tasks again` + (out.skipped ? ` (${out.skipped} skipped: already retried or message not kept)` : ""));
    refresh();
  }

  async function loadDead() {
    const data = await api("api/dead?count=100");
    if (S.page !== "failed") return;
    const box = $("#dead-letters");
    const queues = data.queues.filter((q) => q.count > 0);
    if (!queues.length) {
      box.replaceChildren(h("p", { class: "muted" }, "No dead letters."));
      return;
    }
    box.replaceChildren(...queues.map((q) => h("div", { class: "dead-queue", dataset: { queue: q.queue } },
      h("header", null, h("strong", null, q.queue), h("span", { class: "pill" }, String(q.count)),
        q.count > q.letters.length ? h("span", { class: "muted small" }, `showing the oldest ${q.letters.length}`) : null,
        h("span", { class: "spacer" }),
        canAct() ? button("Requeue all", "primary", async () => {
          if (!confirm(`Send all ${q.count} dead letters of ${q.queue} back to their queue?`)) return;
          const out = await act("requeue-dead", { queue: q.queue }, "Requeue");
          toast(`Requeued ${out.requeued} messages on ${q.queue}`);
          refresh();
        }) : null,
        canAct() ? button("Purge", "danger", async () => {
          if (!confirm(`Delete all ${q.count} dead letters of ${q.queue}? This cannot be undone.`)) return;
          const out = await act("purge-dead", { queue: q.queue }, "Purge");
          toast(`Deleted ${out.purged} dead letters of ${q.queue}`);
          refresh();
        }) : null),
      h("table", { class: "table" },
        h("thead", null, h("tr", null, h("th", null, "Failed"), h("th", null, "Task"), h("th", null, "Id"), h("th", null, "Arguments"), h("th", null, "Reason"), h("th", { class: "num" }, "Retries"), h("th", { class: "action-col" }))),
        h("tbody", null, q.letters.map((d) => h("tr", { dataset: { entryId: d.entry_id } },
          h("td", { class: "num", title: d.entry_id }, d.failed_at ? fmtTime(d.failed_at) : "—"),
          h("td", null, d.task || h("span", { class: "muted" }, "undecodable")),
          h("td", null, d.task_id ? taskLink(d.task_id) : "—"),
          h("td", { class: "args" }, d.decode_error ? h("span", { class: "muted", title: d.decode_error }, "cannot be decoded") : clip(argsText(d), 320)),
          h("td", null, clip(d.reason, 320)),
          h("td", { class: "num" }, d.retries === null ? "—" : fmtNum(d.retries)),
          h("td", { class: "action-col" }, canAct() ? button("Requeue", null, async () => {
            const out = await act("requeue-dead", { queue: q.queue, entry_ids: [d.entry_id] }, "Requeue");
            toast(out.requeued ? `Requeued ${d.task || d.entry_id}` : "Already gone");
            refresh();
          }) : null))))))));
  }

  // -- scheduled -----------------------------------------------------------------------------------------
  async function loadScheduled() {
    const data = await api("api/scheduled");
    if (S.page !== "scheduled") return;
    const dt = $("#delayed-table");
    dt.tBodies[0].replaceChildren(...data.queues.map((q) => h("tr", null,
      h("td", null, q.name), h("td", { class: "num" }, fmtNum(q.delayed)))));
    $("#beat-tz").textContent = `times shown in your browser's zone; schedules run in ${data.timezone}`;
    const err = $("#beat-error");
    err.hidden = !data.error;
    err.textContent = data.error || "";
    const bt = $("#beat-table");
    if (!data.schedules.length) {
      emptyRow(bt, 6, data.error ? "—" : "No periodic tasks declared (beat_schedule or @app.periodic).");
      return;
    }
    bt.tBodies[0].replaceChildren(...data.schedules.map((s) => h("tr", null,
      h("td", { class: "nowrap" }, h("strong", null, s.name)),
      h("td", null, s.task, s.registered ? null : h("span", { class: "muted small", title: "not registered in the dashboard's app" }, " (not registered here)")),
      h("td", { class: "mono" }, s.schedule),
      h("td", { class: "num" }, s.last_run ? h("span", { title: fmtTime(s.last_run) }, ago(s.last_run)) : h("span", { class: "muted" }, "never")),
      h("td", { class: "num" }, s.next.length ? [fmtTime(s.next[0]), h("div", { class: "muted small" }, until(s.next[0]))] : "—"),
      h("td", { class: "muted small" }, s.next.slice(1).map(fmtTime).join(", ")))));
  }

  // -- audit -----------------------------------------------------------------------------------------------
  async function loadAudit() {
    const data = await api("api/audit?count=300");
    if (S.page !== "audit") return;
    const table = $("#audit-table");
    if (!data.entries.length) {
      emptyRow(table, 5, "No action taken yet.");
      return;
    }
    table.tBodies[0].replaceChildren(...data.entries.map((e) => h("tr", null,
      h("td", { class: "num", title: e.at }, fmtTime(e.timestamp)),
      h("td", null, h("strong", null, e.who)),
      h("td", null, e.action),
      h("td", null, /^[\w.:@-]{8,}$/.test(e.target) && e.action !== "purge" && !e.action.includes("dead") ? taskLink(e.target, e.target) : e.target),
      h("td", null, e.action === "retry" && e.detail.startsWith("as ") ? ["as ", taskLink(e.detail.slice(3), e.detail.slice(3))] : e.detail))));
  }

  // -- start -------------------------------------------------------------------------------------------------
  async function start() {
    try {
      S.config = await api("api/config");
    } catch (e) {
      setBrokerError(`Cannot load the dashboard: ${e.message}`);
      setLive("down");
      return;
    }
    const c = S.config;
    document.title = `${c.app} · aioqueue`;
    $("#app-name").textContent = c.app;
    $("#who").textContent = c.auth ? c.who : "";
    $("#mode").hidden = !c.read_only;
    document.body.classList.toggle("read-only", c.read_only);
    const stateSel = $("#tasks-filters select[name=state]");
    for (const s of c.states) stateSel.append(h("option", { value: s }, s));
    watchForm($("#tasks-filters"), "tasks");
    watchForm($("#failed-filters"), "failed");
    $("#retry-all").addEventListener("click", () => retryAll().catch(() => {}));
    window.addEventListener("hashchange", route);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(resizeCharts, 150);
    });
    try {
      await loadFeed();
    } catch (e) {
      setBrokerError(`Cannot read events: ${e.message}`);
    }
    connect();
    route();
    setInterval(() => {
      // ages ("3m ago") move on even when nothing happens
      if (S.page === "tasks" || S.page === "failed") scheduleRefresh();
    }, 15000);
  }

  start();
})();
