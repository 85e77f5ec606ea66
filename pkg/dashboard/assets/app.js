// Atelier instructor dashboard. Hand-written, no build step: the server
// pushes a snapshot (see snapshot.go) over Server-Sent Events and this
// script redraws the page from it. User-controlled strings only ever go
// into textContent or attributes, never into HTML.
"use strict";

const prefix = document.querySelector('meta[name="atelier-prefix"]').content;
const csrf = document.querySelector('meta[name="atelier-csrf"]').content;
const $ = (sel) => document.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "style") e.style.cssText = v; // CSSOM: allowed by the CSP, unlike a style attribute
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function fmtDur(s) {
  if (s === undefined || s === null) return "";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

function fmtBytes(n) {
  if (!n) return "0";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}

function fmtTime(t) {
  if (!t) return "";
  return new Date(t).toLocaleTimeString();
}

function toast(msg, bad) {
  const t = $("#toast");
  t.textContent = msg;
  t.className = "show" + (bad ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, 4000);
}

async function act(op, body) {
  try {
    const resp = await fetch(prefix + "api/" + op, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    });
    const r = await resp.json().catch(() => ({ error: resp.statusText }));
    if (!resp.ok || !r.ok) { toast(op + ": " + (r.error || resp.statusText), true); return false; }
    toast(op + ": done" + (r.affected && r.affected.length ? " (" + r.affected.join(", ") + ")" : ""));
    return true;
  } catch (e) {
    toast(op + ": " + e, true);
    return false;
  }
}

// syncRows redraws a table body, reusing a row whose signature did not
// change (so thumbnails are not reloaded and buttons do not flicker).
function syncRows(tbody, items, key, sig, build) {
  const old = new Map();
  for (const tr of Array.from(tbody.children)) old.set(tr.dataset.key, tr);
  const rows = items.map((it) => {
    const k = key(it), s = sig(it);
    const prev = old.get(k);
    if (prev && prev.dataset.sig === s) return prev;
    const tr = build(it);
    tr.dataset.key = k;
    tr.dataset.sig = s;
    return tr;
  });
  tbody.replaceChildren(...rows);
}

function stateCell(state) {
  return el("td", { class: "state state-" + state, text: state });
}

function progressCell(p) {
  if (!p || !p.max) return el("td");
  const pct = Math.round((100 * p.value) / p.max);
  return el("td", { class: "progress-cell" },
    el("progress", { max: p.max, value: p.value, "data-value": p.value, "data-max": p.max }),
    " " + pct + "%" + (p.node ? " · node " + p.node : ""));
}

function fileURL(kind, o, user) {
  const q = new URLSearchParams({ user, type: o.type, subfolder: o.subfolder || "", filename: o.filename });
  return prefix + kind + "?" + q.toString();
}

function outputsCell(j) {
  const td = el("td", { class: "outputs" });
  for (const o of j.outputs || []) {
    if (o.type !== "output") continue; // previews in temp are not results
    const a = el("a", { href: fileURL("file", o, j.user), target: "_blank", rel: "noopener", title: o.filename });
    if (o.image) a.append(el("img", { class: "thumb", src: fileURL("thumb", o, j.user), alt: o.filename, loading: "lazy" }));
    else a.append(o.filename);
    td.append(a);
  }
  return td;
}

function renderTiles(s) {
  const t = s.totals;
  $("#t-waiting").textContent = t.queued + t.dispatched;
  $("#t-running").textContent = t.running;
  $("#t-slots").textContent = t.busy_slots + " / " + t.slots;
  $("#t-agents").textContent = t.agents;
  $("#t-done").textContent = t.done_last_hour;
  $("#t-failed").textContent = t.failed_last_hour;
  const qs = $("#queue-state");
  if (!s.api) { qs.textContent = "broker API unavailable"; qs.className = "pill warn"; }
  else if (s.paused) { qs.textContent = "queue paused"; qs.className = "pill bad"; }
  else { qs.textContent = "queue running · " + (s.policy || "?"); qs.className = "pill ok"; }
  $("#pause").disabled = !s.api || s.paused;
  $("#resume").disabled = !s.api || !s.paused;
  const pol = $("#policy");
  pol.disabled = !s.api;
  if (s.policy && document.activeElement !== pol) pol.value = s.policy;
}

function renderPools(s) {
  syncRows($("#pools tbody"), s.pools || [], (p) => p.pool, (p) => JSON.stringify(p), (p) =>
    el("tr", { "data-pool": p.pool },
      el("td", { text: p.pool }), el("td", { class: "num", text: p.queued }), el("td", { class: "num", text: p.dispatched }),
      el("td", { class: "num", text: p.running }), el("td", { class: "num", text: p.busy_slots + " / " + p.slots })));
  syncRows($("#users tbody"), s.users || [], (u) => u.user, (u) => JSON.stringify(u), (u) =>
    el("tr", { "data-user": u.user },
      el("td", { text: u.user }), el("td", { class: "num", text: u.queued + u.dispatched }), el("td", { class: "num", text: u.running }),
      el("td", { class: "num", text: u.succeeded }), el("td", { class: "num", text: u.failed })));
}

function renderQueue(s) {
  const q = s.queue || [];
  const t = s.totals;
  const total = t.queued + t.dispatched + t.running;
  $("#queue-count").textContent = total > q.length ? "(" + q.length + " of " + total + ")" : "(" + total + ")";
  syncRows($("#queue tbody"), q, (j) => j.id,
    (j) => JSON.stringify([j.state, j.position, j.bumped, j.agent, j.slot, j.progress, Math.round(j.wait_s), Math.round(j.run_s || 0)]),
    (j) => {
      const where = j.agent ? j.agent + (j.slot ? " / " + j.slot : "") : "";
      const buttons = el("td", { class: "actions" });
      if (j.state === "queued" && !j.bumped) {
        buttons.append(el("button", { "data-action": "bump", "data-job": j.id, title: "run this job next",
          onclick: () => act("bump", { user: j.user, job_id: j.id }) }, "Bump"), " ");
      }
      buttons.append(el("button", { class: "danger", "data-action": "cancel", "data-job": j.id,
        title: j.state === "running" ? "interrupt and cancel" : "remove from the queue",
        onclick: () => act("cancel", { user: j.user, job_ids: [j.id] }) }, "Cancel"));
      return el("tr", { "data-job": j.id, "data-state": j.state },
        el("td", { class: "num", text: j.position || (j.state === "queued" ? "" : "–") }),
        el("td", { text: j.user }), el("td", {}, el("code", { text: j.id.slice(0, 8) }), j.bumped ? " ⬆" : ""),
        el("td", { text: j.pool }), stateCell(j.state), el("td", { text: where }), progressCell(j.progress),
        el("td", { class: "num", text: fmtDur(j.wait_s) }), el("td", { class: "num", text: j.run_s ? fmtDur(j.run_s) : "" }),
        buttons);
    });
}

function renderAgents(s) {
  const box = $("#agents");
  const agents = s.agents || [];
  if (!agents.length) { box.replaceChildren(el("p", { class: "muted", text: "No agent has joined yet." })); return; }
  box.replaceChildren(...agents.map((a) => {
    const pills = [];
    if (a.lost) pills.push(el("span", { class: "pill bad", text: "lost" }));
    if (a.draining) pills.push(el("span", { class: "pill warn", text: "draining" }));
    const btn = a.draining
      ? el("button", { "data-action": "undrain", "data-agent": a.agent, onclick: () => act("undrain", { agent: a.agent }) }, "Undrain")
      : el("button", { "data-action": "drain", "data-agent": a.agent, onclick: () => act("drain", { agent: a.agent }) }, "Drain");
    const hbClass = a.heartbeat_age_s > 10 ? "pill bad" : "pill";
    const rows = (a.slots || []).map((sl) => {
      const used = sl.vram_total ? sl.vram_total - sl.vram_free : 0;
      const vram = sl.vram_total
        ? el("td", {}, el("span", { class: "bar" }, el("i", { style: "width:" + Math.round((100 * used) / sl.vram_total) + "%" })),
          " " + fmtBytes(used) + " / " + fmtBytes(sl.vram_total))
        : el("td", { class: "muted", text: "–" });
      const util = sl.utilization > 1 ? sl.utilization : sl.utilization * 100;
      return el("tr", { "data-slot": sl.id, "data-state": sl.state },
        el("td", { text: sl.id }), el("td", { text: sl.gpu || "" }), el("td", { class: "state state-" + (sl.state === "busy" ? "running" : sl.state), text: sl.state }),
        el("td", {}, sl.job_id ? el("code", { text: sl.job_id.slice(0, 8) }) : "", sl.user ? " " + sl.user : ""),
        progressCell(sl.progress), vram, el("td", { class: "num", text: Math.round(util) + "%" }));
    });
    return el("div", { class: "agent" + (a.lost ? " lost" : ""), "data-agent": a.agent },
      el("h3", {}, a.agent, el("span", { class: "muted", text: "pool " + a.pool + (a.version ? " · " + a.version : "") }),
        el("span", { class: hbClass, title: "last heartbeat", text: "♥ " + fmtDur(a.heartbeat_age_s) + " ago" }),
        a.scratch_bytes ? el("span", { class: "muted", text: "scratch " + fmtBytes(a.scratch_bytes) }) : null, ...pills, btn),
      el("table", {}, el("thead", {}, el("tr", {}, ...["slot", "GPU", "state", "job", "progress", "VRAM", "util"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...rows)));
  }));
}

function renderRecent(s) {
  syncRows($("#recent tbody"), s.recent || [], (j) => j.id, (j) => JSON.stringify([j.state, j.outputs, j.error]), (j) =>
    el("tr", { "data-job": j.id, "data-state": j.state, title: j.error || "" },
      el("td", { text: j.user }), el("td", {}, el("code", { text: j.id.slice(0, 8) })), stateCell(j.state),
      el("td", { class: "num", text: fmtDur(j.wait_s) }), el("td", { class: "num", text: j.run_s ? fmtDur(j.run_s) : "" }),
      el("td", { text: fmtTime(j.finished_at) }), outputsCell(j)));
  syncRows($("#failed tbody"), s.failed || [], (j) => j.id, (j) => JSON.stringify([j.error]), (j) =>
    el("tr", { "data-job": j.id },
      el("td", { text: j.user }), el("td", {}, el("code", { text: j.id.slice(0, 8) })), el("td", { text: fmtTime(j.finished_at) }),
      el("td", { text: j.agent ? j.agent + " / " + (j.slot || "") : "" }), el("td", { class: "error", text: j.error || "" })));
}

// drawDepth draws waiting (on top) and running (below) as stacked step
// areas over the session.
function drawDepth(s) {
  const chart = $("#depth-chart");
  const W = 800, H = 160, L = 28, B = 16;
  const pts = s.depth || [];
  const kids = [];
  if (pts.length) {
    const t0 = pts[0].t, t1 = Math.max(pts[pts.length - 1].t, t0 + 1000);
    const top = Math.max(1, ...pts.map((p) => p.waiting + p.running));
    const tick = Math.max(1, Math.ceil(top / 4)); // whole jobs only
    const ymax = tick * Math.ceil(top / tick);
    const x = (t) => L + ((W - L - 4) * (t - t0)) / (t1 - t0);
    const y = (v) => H - B - ((H - B - 8) * v) / ymax;
    for (let v = 0; v <= ymax; v += tick) {
      kids.push(svg("line", { class: "grid", x1: L, x2: W, y1: y(v), y2: y(v) }));
      const label = svg("text", { x: 2, y: y(v) + 3 }); label.textContent = Math.round(v); kids.push(label);
    }
    const area = (f, cls, color) => {
      let d = "M" + x(pts[0].t) + "," + y(0);
      let prev = null;
      for (const p of pts) {
        if (prev !== null) d += " L" + x(p.t) + "," + y(prev);
        d += " L" + x(p.t) + "," + y(f(p));
        prev = f(p);
      }
      d += " L" + x(t1) + "," + y(prev) + " L" + x(t1) + "," + y(0) + " Z";
      return svg("path", { d, class: cls, fill: color, "fill-opacity": 0.85 });
    };
    kids.push(area((p) => p.waiting + p.running, "waiting", "#f59f00"));
    kids.push(area((p) => p.running, "running", "#3b5bdb"));
    const l0 = svg("text", { x: L, y: H - 2 }); l0.textContent = fmtTime(t0); kids.push(l0);
    const l1 = svg("text", { x: W - 60, y: H - 2 }); l1.textContent = fmtTime(t1); kids.push(l1);
  }
  chart.replaceChildren(...kids);
}

function drawHourly(s) {
  const chart = $("#hourly-chart");
  const W = 480, H = 120, B = 14;
  const hs = s.hourly || [];
  const kids = [];
  const ymax = Math.max(1, ...hs.map((h) => h.succeeded + h.failed));
  const bw = W / Math.max(1, hs.length);
  hs.forEach((h, i) => {
    const hs_ = ((H - B - 10) * h.succeeded) / ymax, hf = ((H - B - 10) * h.failed) / ymax;
    const x = i * bw + 1;
    const ok = svg("rect", { x, y: H - B - hs_, width: bw - 2, height: hs_, fill: "#2b8a3e" });
    const title = svg("title"); title.textContent = new Date(h.hour).toLocaleString() + ": " + h.succeeded + " done, " + h.failed + " failed";
    ok.append(title);
    kids.push(ok, svg("rect", { x, y: H - B - hs_ - hf, width: bw - 2, height: hf, fill: "#c92a2a" }));
    if (i % 4 === 0) { const l = svg("text", { x, y: H - 2 }); l.textContent = new Date(h.hour).getHours() + "h"; kids.push(l); }
  });
  const top = svg("text", { x: 2, y: 10 }); top.textContent = "max " + ymax + "/h"; kids.push(top);
  chart.replaceChildren(...kids);
}

function render(s) {
  renderTiles(s);
  renderPools(s);
  renderQueue(s);
  renderAgents(s);
  renderRecent(s);
  drawDepth(s);
  drawHourly(s);
}

function connect() {
  const conn = $("#conn");
  const es = new EventSource(prefix + "api/events");
  es.onopen = () => { conn.textContent = "live"; conn.className = "pill ok"; };
  es.onmessage = (ev) => {
    try { render(JSON.parse(ev.data)); } catch (e) { console.error(e); }
    conn.textContent = "live"; conn.className = "pill ok";
  };
  es.addEventListener("logout", () => { es.close(); location.href = prefix + "login"; });
  es.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "pill warn"; };
}

$("#pause").addEventListener("click", () => act("pause"));
$("#resume").addEventListener("click", () => act("resume"));
$("#policy").addEventListener("change", (e) => act("policy", { policy: e.target.value }));
connect();
