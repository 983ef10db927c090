// gossip swarm dashboard: plain JS, SVG and canvas; no libraries, nothing loaded from elsewhere.
// Feed: /ws sends {"type":"snapshot"} on connect, then {"type":"delta"} messages (see gossip/swarmview.py).
"use strict";

(() => {
  const STATES = ["starting", "training", "syncing", "finishing", "done", "down"];
  const PEER_COLORS = ["#38bdf8", "#f472b6", "#facc15", "#4ade80", "#fb923c", "#a78bfa",
    "#2dd4bf", "#f87171", "#818cf8", "#a3e635"];
  const TRIGGER_NAMES = { sync_interval: "interval", confidence: "confidence", grad_norm: "grad-norm", final: "final" };
  const SVGNS = "http://www.w3.org/2000/svg";

  const S = { config: null, peers: {}, links: [], swarm: null, bw: [], acc: [], adapt: [], summary: null, clockOffset: 0 };
  let frameQueued = false;
  const cards = {};

  // ---------------------------------------------------------------- formatting
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const stateColor = (s) => css(`--${STATES.includes(s) ? s : "starting"}`);
  const peerColor = (id) => PEER_COLORS[id % PEER_COLORS.length];
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  function si(v, unit, digits = 3) {
    if (!isNum(v)) return "–";
    const prefixes = ["", "k", "M", "G", "T"];
    let i = 0;
    while (Math.abs(v) >= 1000 && i < prefixes.length - 1) { v /= 1000; i++; }
    return `${Number(v.toPrecision(digits))} ${prefixes[i]}${unit}`;
  }
  const fmtBps = (v) => si(v, "b/s");
  const fmtBytes = (v) => si(v, "B");
  const fmtPct = (v, scale = 1) => (isNum(v) ? `${(v * scale).toFixed(scale === 100 ? 2 : 0)} %` : "–");
  const fmtNum = (v, d = 3) => (isNum(v) ? String(Number(v.toPrecision(d))) : "–");
  function fmtDuration(s) {
    if (!isNum(s)) return "–";
    const m = Math.floor(s / 60);
    return m ? `${m} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`;
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, parent) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  // ---------------------------------------------------------------- feed
  function apply(m) {
    S.clockOffset = m.ts - Date.now() / 1000;
    if (m.type === "snapshot") {
      Object.assign(S, { config: m.config, peers: m.peers, links: m.links, swarm: m.swarm,
        bw: m.bandwidth, acc: m.accuracy, adapt: m.adapt || [], summary: m.summary });
    } else if (m.type === "delta") {
      if (m.peers) Object.assign(S.peers, m.peers);
      if (m.links) S.links = m.links;
      if (m.swarm) S.swarm = m.swarm;
      if ("summary" in m) S.summary = m.summary;
      if (m.bandwidth) S.bw = S.bw.concat(m.bandwidth).slice(-3600);
      if (m.accuracy) S.acc = S.acc.concat(m.accuracy).slice(-20000);
      if (m.adapt) S.adapt = S.adapt.concat(m.adapt).slice(-20000);
    }
    if (!frameQueued) { frameQueued = true; requestAnimationFrame(render); }
  }

  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.onopen = () => setConnected(true);
    ws.onmessage = (ev) => apply(JSON.parse(ev.data));
    ws.onclose = () => { setConnected(false); setTimeout(connect, 1000); };
  }
  function setConnected(on) {
    const pill = document.getElementById("conn");
    pill.textContent = on ? "live" : "disconnected, retrying…";
    pill.className = `pill ${on ? "pill-on" : "pill-off"}`;
    document.body.dataset.connected = String(on);
  }

  // ---------------------------------------------------------------- render
  function render() {
    frameQueued = false;
    if (!S.config) return;
    renderHeader();
    renderTopology();
    renderPeers();
    renderSummary();
    drawBandwidth();
    drawAccuracy();
    drawAdapt();
  }

  function renderHeader() {
    const c = S.config;
    const info = document.getElementById("run-info");
    info.replaceChildren();
    const parts = [["data", c.dataset], ["model", c.model], ["topology", c.topology],
      ["codec", c.codec], ["link", c.link_bandwidth], ["epochs", c.epochs]];
    parts.forEach(([k, v], i) => {
      if (i) info.append(" · ");
      info.append(`${k} `, el("b", null, String(v)));
    });
    const counts = (S.swarm && S.swarm.counts) || {};
    document.getElementById("peer-counts").textContent =
      STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(", ") || "–";
    // One source: S.swarm.bps is the sum of the edges' rates and the chart's latest point (one
    // server-side sample, at S.swarm.sample_ts); nothing here rescales or recomputes it.
    const bps = S.swarm ? S.swarm.bps : 0;
    document.getElementById("swarm-bps").textContent = fmtBps(bps);
    document.body.dataset.peersTraining = String(counts.training || 0);
    document.body.dataset.swarmBps = String(bps);
    document.body.dataset.swarmTs = String(S.swarm ? S.swarm.sample_ts : "");
    const last = S.bw.length ? S.bw[S.bw.length - 1] : null;
    document.body.dataset.chartTs = String(last ? last[0] : "");
    document.body.dataset.chartBps = String(last ? last[1] : "");
    document.body.dataset.finished = String(!!S.summary);
  }

  // Edge width: utilisation on a log scale from 1 kb/s to the cap, so both a 10 Gb/s cap and
  // a few hundred kb/s of sparse updates stay visible.
  function utilisation(bps, cap) {
    if (!(bps > 0)) return 0;
    const top = cap || Math.max(1e4, ...S.links.map((l) => l.bps_ab + l.bps_ba));
    return Math.min(1, Math.max(0.02, Math.log10(bps / 1e3) / Math.log10(top / 1e3)));
  }

  function renderTopology() {
    const root = document.getElementById("topology");
    root.replaceChildren();
    const n = S.config.peers, cx = 250, cy = 220, R = n === 1 ? 0 : n <= 8 ? 150 : 165;
    const nodeR = n <= 8 ? 24 : n <= 16 ? 16 : 10;
    const maxWidth = n <= 8 ? 9 : 3;
    const pos = (i) => [cx + R * Math.sin((2 * Math.PI * i) / n), cy - R * Math.cos((2 * Math.PI * i) / n)];
    const cap = S.swarm && S.swarm.cap_bps;
    const edges = svg("g", {}, root), labels = svg("g", {}, root), nodes = svg("g", {}, root);
    for (const l of S.links) {
      const [x1, y1] = pos(l.a), [x2, y2] = pos(l.b);
      const bps = l.bps_ab + l.bps_ba;
      const u = utilisation(Math.max(l.bps_ab, l.bps_ba), cap);
      const line = svg("line", { x1, y1, x2, y2, class: "edge", "data-a": l.a, "data-b": l.b,
        "data-bps": bps, stroke: l.down ? css("--down") : u > 0 ? css("--accent") : "#334155",
        "stroke-width": 1.5 + maxWidth * u, "stroke-opacity": l.down ? 0.8 : 0.35 + 0.6 * u }, edges);
      if (l.down) line.setAttribute("stroke-dasharray", "6 6");
      svg("title", {}, line).textContent = `peer ${l.a} → ${l.b}: ${fmtBps(l.bps_ab)}\n` +
        `peer ${l.b} → ${l.a}: ${fmtBps(l.bps_ba)}\ncap per link: ${cap ? fmtBps(cap) : "unlimited"}`;
      if (n > 8) continue;  // labels would overlap: the tooltip still has the numbers
      // Chords through the centre would stack their labels: move those towards the lower id.
      const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
      const t = Math.hypot(mx - cx, my - cy) < 0.25 * R ? 0.3 : 0.5;
      const lx = x1 + (x2 - x1) * t, ly = y1 + (y2 - y1) * t;
      const text = l.down ? "down" : fmtBps(bps);
      const w = 7 * text.length + 10;
      svg("rect", { x: lx - w / 2, y: ly - 9, width: w, height: 18, rx: 9, class: "edge-label-bg" }, labels);
      svg("text", { x: lx, y: ly, class: "edge-label" }, labels).textContent = text;
    }
    for (let i = 0; i < n; i++) {
      const p = S.peers[i] || { state: "starting" };
      const [x, y] = pos(i);
      const g = svg("g", { class: "node", "data-peer": i, "data-state": p.state, transform: `translate(${x},${y})` }, nodes);
      svg("title", {}, g).textContent = `peer ${i} (${p.host || ""}): ${p.state}`;
      svg("circle", { r: nodeR + 6, class: "ring-bg" }, g);
      const frac = progress(p);
      if (frac > 0) {
        const a = 2 * Math.PI * Math.min(frac, 0.9999), r = nodeR + 6;
        svg("path", { class: "ring", stroke: peerColor(i), d: `M 0 ${-r} A ${r} ${r} 0 ${a > Math.PI ? 1 : 0} 1 ${r * Math.sin(a)} ${-r * Math.cos(a)}` }, g);
      }
      svg("circle", { r: nodeR, class: "body", fill: stateColor(p.state) }, g);
      svg("text", { class: "id" }, g).textContent = String(i);
      // state label radially outside the circle, away from the edges
      const dx = n === 1 ? 0 : (x - cx) / R, dy = n === 1 ? 1 : (y - cy) / R, off = nodeR + 16;
      svg("text", { class: "state-label", x: dx * off + (Math.abs(dx) > 0.3 ? Math.sign(dx) * 14 : 0),
        y: dy * off + 4 + (dy > 0.3 ? 6 : 0), "text-anchor": Math.abs(dx) > 0.3 ? (dx > 0 ? "start" : "end") : "middle" },
      g).textContent = p.state;
    }
    const legend = document.getElementById("legend");
    if (!legend.childElementCount) {
      for (const s of STATES) {
        const item = el("span", null, s);
        item.style.setProperty("--c", stateColor(s));
        legend.append(item);
      }
    }
  }

  function progress(p) {
    if (p.state === "done") return 1;
    if (!isNum(p.epochs) || !p.epochs || !isNum(p.epoch)) return 0;
    const within = isNum(p.step) && p.steps_per_epoch ? p.step / p.steps_per_epoch : 0;
    return Math.min(1, (p.epoch + within) / p.epochs);
  }

  const gpu = (p) => (isNum(p.gpu_util)
    ? `${p.gpu_util.toFixed(0)} %${isNum(p.gpu_mem_mb) ? ` · ${p.gpu_mem_mb.toFixed(0)} MB` : ""}` : "none");
  const METRICS = [
    ["loss", (p) => fmtNum(p.loss)],
    ["test accuracy", (p) => fmtPct(p.test_accuracy, 100)],
    ["compression", (p) => (p.compression_ratio > 0 ? `${fmtNum(p.compression_ratio)}×` : "–")],
    ["sent", (p) => fmtBytes(p.bytes_sent)],
    ["received", (p) => fmtBytes(p.bytes_received)],
    ["MB / epoch", (p) => fmtNum(p.mb_per_epoch)],
    ["CPU", (p) => (isNum(p.cpu_percent) ? `${p.cpu_percent.toFixed(0)} %` : "–")],
    ["memory", (p) => (isNum(p.rss_mb) ? `${p.rss_mb.toFixed(0)} MB` : "–")],
    ["GPU", gpu],
    ["updates sent", (p) => fmtNum(p.updates_sent, 6)],
    ["applied", (p) => fmtNum(p.updates_applied, 6)],
    ["rejected", (p) => fmtNum(p.updates_rejected, 6)],
  ];

  function cells(parent, labels, cls) {
    const values = [];
    for (const label of labels) {
      const m = el("div", "metric");
      const v = el("div", "metric-value", "–");
      m.append(el("div", "metric-label", label), v);
      values.push(v);
      parent.append(m);
    }
    parent.className = cls;
    return values;
  }

  function makeCard(id) {
    const card = el("section", "card peer");
    card.dataset.peer = id;
    const head = el("div", "peer-head");
    const dot = el("span", "dot");
    dot.style.background = peerColor(id);
    const refs = { card, badge: el("span", "badge"), host: el("span", "host"), bar: el("div", "bar"),
      progress: el("div", "progress-label"), rejected: el("div", "footline warn") };
    head.append(dot, el("span", "name", `peer ${id}`), refs.host, refs.badge);
    const bar = el("div", "progress");
    bar.append(refs.bar);
    const grid = el("div"), trig = el("div");
    refs.values = cells(grid, METRICS.map(([label]) => label), "metrics");
    refs.triggers = cells(trig, Object.values(TRIGGER_NAMES), "metrics triggers");
    card.append(head, bar, refs.progress, grid, el("div", "subhead", "sync triggers fired"), trig, refs.rejected);
    document.getElementById("peers").append(card);
    return refs;
  }

  function renderPeers() {
    for (let i = 0; i < S.config.peers; i++) {
      const p = S.peers[i] || { state: "starting" };
      const c = cards[i] || (cards[i] = makeCard(i));
      c.card.dataset.state = p.state;
      c.card.style.setProperty("--state-color", stateColor(p.state));
      c.badge.textContent = p.state;
      c.host.textContent = p.host || "";
      c.bar.style.width = `${(100 * progress(p)).toFixed(1)}%`;
      let line = isNum(p.epoch) ? `epoch ${Math.min(p.epoch + 1, p.epochs || Infinity)}/${p.epochs ?? "?"}` : "waiting for telemetry";
      if (isNum(p.step) && p.state !== "done") line += ` · step ${p.step}/${p.steps_per_epoch ?? "?"}`;
      if (p.state === "down" && isNum(p.last_seen)) {
        line += ` · silent for ${(Date.now() / 1000 + S.clockOffset - p.last_seen).toFixed(0)} s`;
      }
      c.progress.textContent = line;
      METRICS.forEach(([, f], k) => { c.values[k].textContent = f(p); });
      const trig = p.triggers || {};
      Object.keys(TRIGGER_NAMES).forEach((k, j) => { c.triggers[j].textContent = p.triggers ? String(trig[k] || 0) : "–"; });
      const reasons = Object.entries(p.rejected_by_reason || {}).map(([r, k]) => `${r} ${k}`).join(", ");
      c.rejected.textContent = reasons ? `rejected: ${reasons}` : "";
      c.rejected.hidden = !reasons;
      c.values[METRICS.length - 1].classList.toggle("warn", (p.updates_rejected || 0) > 0);
    }
  }

  function renderSummary() {
    const box = document.getElementById("summary");
    box.hidden = !S.summary;
    if (!S.summary) return;
    const s = S.summary;
    const trig = Object.entries(s.triggers || {}).map(([k, v]) => `${TRIGGER_NAMES[k] || k} ${v}`).join(" · ");
    const items = [
      ["duration", fmtDuration(s.duration_s)],
      ["peers done", `${s.peers_done} / ${S.config.peers}`],
      ["peers down", s.peers_down.length ? s.peers_down.join(", ") : "none"],
      ["accuracy mean", fmtPct(s.accuracy_mean, 100)],
      ["min / max", `${fmtPct(s.accuracy_min, 100)} / ${fmtPct(s.accuracy_max, 100)}`],
      ["bytes sent", fmtBytes(s.bytes_sent_total)],
      ["MB / epoch / peer", fmtNum(s.mb_per_epoch_mean)],
      ["compression", isNum(s.compression_ratio_mean) ? `${fmtNum(s.compression_ratio_mean)}×` : "–"],
      ["triggers", trig || "–"],
      ["updates rejected", String(s.updates_rejected)],
    ];
    const body = document.getElementById("summary-body");
    body.replaceChildren();
    for (const [label, value] of items) {
      const m = el("div", "metric");
      m.append(el("div", "metric-label", label), el("div", "metric-value", value));
      body.append(m);
    }
  }

  // ---------------------------------------------------------------- charts
  function timeOrigin() {
    const ts = [];
    if (S.bw.length) ts.push(S.bw[0][0]);
    if (S.acc.length) ts.push(S.acc[0][1]);
    return ts.length ? Math.min(...ts) : 0;
  }

  // A small line chart: series [{name, color, points: [[x, y]], dots}], optional log y axis and hlines.
  function drawChart(canvas, o) {
    const dpr = window.devicePixelRatio || 1;
    const W = canvas.clientWidth, H = canvas.clientHeight;
    if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
      canvas.width = Math.round(W * dpr);
      canvas.height = Math.round(H * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const pad = { l: 62, r: 14, t: 22, b: 24 };
    const pw = W - pad.l - pad.r, ph = H - pad.t - pad.b;
    const ty = o.log ? (v) => Math.log10(Math.max(v, o.yMin)) : (v) => v;
    const y0 = ty(o.yMin), y1 = ty(o.yMax);
    const X = (x) => pad.l + (pw * (x - o.xMin)) / Math.max(1e-9, o.xMax - o.xMin);
    const Y = (y) => pad.t + ph - (ph * (ty(y) - y0)) / Math.max(1e-9, y1 - y0);
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    for (const v of o.yTicks) {
      ctx.strokeStyle = "#1e293b";
      ctx.beginPath(); ctx.moveTo(pad.l, Y(v)); ctx.lineTo(W - pad.r, Y(v)); ctx.stroke();
      ctx.fillStyle = css("--muted"); ctx.textAlign = "right";
      ctx.fillText(o.yFmt(v), pad.l - 6, Y(v));
    }
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    const step = niceStep((o.xMax - o.xMin) / 6);
    for (let x = Math.ceil(o.xMin / step) * step; x <= o.xMax; x += step) {
      ctx.fillText(fmtTick(x), X(x), H - pad.b + 6);
    }
    for (const h of o.hlines || []) {
      ctx.strokeStyle = h.color; ctx.setLineDash([5, 4]);
      ctx.beginPath(); ctx.moveTo(pad.l, Y(h.y)); ctx.lineTo(W - pad.r, Y(h.y)); ctx.stroke();
      ctx.setLineDash([]); ctx.fillStyle = h.color; ctx.textAlign = "right"; ctx.textBaseline = "bottom";
      ctx.fillText(h.label, W - pad.r, Y(h.y) - 3);
    }
    let lx = pad.l, legendFull = false;
    for (const s of o.series) {
      ctx.strokeStyle = ctx.fillStyle = s.color; ctx.lineWidth = 2;
      ctx.beginPath();
      s.points.forEach(([x, y], k) => (k ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
      ctx.stroke();
      if (s.dots) for (const [x, y] of s.points) { ctx.beginPath(); ctx.arc(X(x), Y(y), 3, 0, 7); ctx.fill(); }
      if (legendFull) continue;
      ctx.textAlign = "left"; ctx.textBaseline = "middle";
      const more = s !== o.series[o.series.length - 1];
      if (lx + ctx.measureText(s.name).width + 32 + (more ? 190 : 0) > W - pad.r) {
        ctx.fillStyle = css("--muted"); ctx.fillText("… colours as on the peer cards", lx, 8);
        legendFull = true;
        continue;
      }
      ctx.fillRect(lx, 6, 10, 3);
      ctx.fillStyle = css("--text"); ctx.fillText(s.name, lx + 14, 8);
      lx += ctx.measureText(s.name).width + 32;
    }
    if (!o.series.some((s) => s.points.length)) {
      ctx.fillStyle = css("--muted"); ctx.textAlign = "center"; ctx.textBaseline = "middle";
      ctx.fillText(o.empty, pad.l + pw / 2, pad.t + ph / 2);
    }
  }
  function fmtTick(x) {
    const m = Math.floor(x / 60), sec = Math.round(x % 60);
    return m ? (sec ? `${m} min ${sec} s` : `${m} min`) : `${sec} s`;
  }
  function niceStep(raw) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
    return steps.find((s) => s >= raw) || 3600;
  }

  function drawBandwidth() {
    const t0 = timeOrigin();
    const pts = S.bw.map(([t, total, max]) => [t - t0, total, max]);
    const cap = S.swarm && S.swarm.cap_bps;
    const peak = Math.max(1e4, ...pts.map((p) => p[1]));
    const yMax = 10 ** Math.ceil(Math.log10(Math.max(peak, cap || 0) * 1.5));
    // The floor is 100 b/s, not 1 kb/s: between bursts only heartbeats flow (hundreds of b/s), and
    // the chart must show that figure as the header does rather than sit on its bottom line.
    const ticks = [];
    for (let v = 1e2; v <= yMax; v *= 10) ticks.push(v);
    const xMax = Math.max(10, pts.length ? pts[pts.length - 1][0] : 0);
    drawChart(document.getElementById("bw-chart"), {
      log: true, yMin: 1e2, yMax, yTicks: ticks, yFmt: fmtBps, xMin: 0, xMax,
      series: [
        { name: "swarm total", color: css("--accent"), points: pts.map((p) => [p[0], p[1]]) },
        { name: "busiest link", color: "#f472b6", points: pts.map((p) => [p[0], p[2]]) },
      ],
      hlines: cap ? [{ y: cap, label: `cap per link ${fmtBps(cap)}`, color: css("--finishing") }] : [],
      empty: "waiting for traffic…",
    });
  }

  function drawAccuracy() {
    const t0 = timeOrigin();
    const series = [];
    let lo = 1, xMax = 10;
    for (let i = 0; i < S.config.peers; i++) {
      const pts = S.acc.filter((a) => a[0] === i).map((a) => [a[1] - t0, a[2]]);
      for (const [x, y] of pts) { lo = Math.min(lo, y); xMax = Math.max(xMax, x); }
      series.push({ name: `peer ${i}`, color: peerColor(i), points: pts, dots: true });
    }
    if (S.bw.length) xMax = Math.max(xMax, S.bw[S.bw.length - 1][0] - t0);
    const yMin = Math.max(0, Math.floor(lo * 10 - 0.5) / 10);
    const ticks = [];
    for (let v = yMin; v <= 1.0001; v += yMin >= 0.5 ? 0.1 : 0.2) ticks.push(v);
    drawChart(document.getElementById("acc-chart"), {
      log: false, yMin, yMax: 1, yTicks: ticks, yFmt: (v) => `${Math.round(v * 100)} %`, xMin: 0, xMax,
      series, empty: "no evaluation yet (one per epoch)",
    });
  }

  // Adapted density per peer over time (gossip/runtime/adapt.py): a step line, since a point is a
  // change; log scale, because the controller moves it by factors. The line runs on to "now".
  function drawAdapt() {
    const t0 = timeOrigin();
    const now = Date.now() / 1000 + S.clockOffset - t0;
    const series = [];
    let lo = 1, hi = 1e-4;
    for (let i = 0; i < S.config.peers; i++) {
      const pts = [];
      for (const a of S.adapt.filter((p) => p[0] === i)) {
        if (pts.length) pts.push([a[1] - t0, pts[pts.length - 1][1]]);
        pts.push([a[1] - t0, a[2]]);
        lo = Math.min(lo, a[2]); hi = Math.max(hi, a[2]);
      }
      if (pts.length) pts.push([Math.max(now, pts[pts.length - 1][0]), pts[pts.length - 1][1]]);
      series.push({ name: `peer ${i}`, color: peerColor(i), points: pts });
    }
    const yMin = 10 ** Math.floor(Math.log10(Math.max(1e-6, lo)));
    const yMax = 10 ** Math.ceil(Math.log10(Math.max(hi * 1.01, yMin * 10)));
    const ticks = [];
    for (let v = yMin; v <= yMax * 1.0001; v *= 10) ticks.push(v);
    const xMax = Math.max(10, now, S.bw.length ? S.bw[S.bw.length - 1][0] - t0 : 0);
    drawChart(document.getElementById("adapt-chart"), {
      log: true, yMin, yMax, yTicks: ticks, yFmt: (v) => fmtPct(v, 100), xMin: 0, xMax,
      series, empty: "no density reported yet",
    });
  }

  window.addEventListener("resize", () => { if (!frameQueued) { frameQueued = true; requestAnimationFrame(render); } });
  connect();
})();
