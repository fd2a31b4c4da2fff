// baton's dashboard: a client of the admin API (/v1), polled every 1.5 s.
// Everything that comes from baton is put in the page as text, never as
// markup.
"use strict";
(() => {
  const POLL_MS = 1500;
  const TOKEN_KEY = "baton.token";
  const POOL_KEY = "baton.pool";

  const $ = (sel, root = document) => root.querySelector(sel);
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  };
  const enc = encodeURIComponent;

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let selected = sessionStorage.getItem(POOL_KEY) || "";
  let pools = [];
  let report = null; // the selected pool's canary report
  let timer = null;
  let busy = false;
  const counts = new Map(); // "pool/backend" → {t, requests, errors} at the last poll
  const rates = new Map(); // "pool/backend" → {rps, err}

  class APIError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // api sends one admin API request with the token, and returns the JSON
  // answer or throws an APIError with the API's own message.
  async function api(method, path, body) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    // Changes are taken only as JSON, body or not.
    if (method !== "GET") headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path, {
        method, headers, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new APIError(0, "baton does not answer (" + e.message + ")", "unreachable");
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
    if (!res.ok) {
      const msg = data && data.error ? data.error : res.status + " " + res.statusText;
      throw new APIError(res.status, msg, data && data.code);
    }
    return data;
  }

  // Messages and status.

  function showMessage(text, kind) {
    const m = $("#message");
    m.textContent = text;
    m.className = "message " + (kind || "info");
    m.hidden = false;
  }
  function setStatus(text) { $("#status").textContent = text; }

  // Token handling: asked for on the first 401, kept for this tab only.

  function needToken(why) {
    stopPolling();
    stopTail();
    stream.pool = "";
    tailKey = "";
    $("#app").hidden = true;
    $("#forget").hidden = true;
    $("#login").hidden = false;
    $("#login-why").textContent = why;
    $("#token").focus();
    setStatus("");
  }

  function failed(e) {
    if (e.status === 401) {
      const had = token !== "";
      token = "";
      sessionStorage.removeItem(TOKEN_KEY);
      needToken(had
        ? "baton refused that token (401: " + e.message + "). Enter a valid admin token."
        : "This baton's admin API needs a token (401: " + e.message + ").");
      return true;
    }
    return false;
  }

  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("#token").value.trim();
    $("#token").value = "";
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });
  $("#forget").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    needToken("Token forgotten. Enter a token to go on.");
  });

  async function start() {
    try {
      await refresh();
    } catch (e) {
      if (!failed(e)) {
        showMessage(e.message, "error");
        setStatus("not updating");
        setTimeout(start, 3000);
      }
      return;
    }
    $("#login").hidden = true;
    $("#app").hidden = false;
    $("#forget").hidden = token === "";
    startPolling();
  }

  function startPolling() {
    stopPolling();
    timer = setInterval(tick, POLL_MS);
  }
  function stopPolling() {
    if (timer) clearInterval(timer);
    timer = null;
  }
  async function tick() {
    if (busy) return;
    busy = true;
    try {
      await refresh();
      setStatus("live, updated " + new Date().toLocaleTimeString());
    } catch (e) {
      if (!failed(e)) setStatus("not updating: " + e.message);
    } finally {
      busy = false;
    }
  }

  async function refresh() {
    pools = await api("GET", "/v1/pools");
    const now = performance.now();
    updateRates(now);
    if (!pools.some((p) => p.name === selected)) selected = pools.length ? pools[0].name : "";
    renderPoolNav();
    renderBackends();
    if (selected) {
      const [rep, hist] = await Promise.all([
        api("GET", "/v1/pools/" + enc(selected) + "/canary"),
        api("GET", "/v1/pools/" + enc(selected) + "/history"),
      ]);
      report = rep;
      renderRelease(rep);
      renderCharts(hist, rep);
      syncTails(rep);
    }
    if (monitored) await refreshMonitor();
    renderEvents(await api("GET", "/v1/events?limit=50"));
  }

  // Formatting.

  const pct = (x, digits = 2) => (x === null || x === undefined ? "—" : (100 * x).toFixed(digits) + "%");
  const msf = (x) => (x === null || x === undefined ? "—" : x < 10 ? x.toFixed(2) + " ms" : x.toFixed(1) + " ms");
  const share = (w) => (Number.isInteger(w) ? w : w.toFixed(1)) + "%";
  const when = (s) => (s ? new Date(s).toLocaleString() : "");

  function updateRates(now) {
    for (const p of pools) {
      for (const b of p.backends) {
        const key = p.name + "/" + b.name;
        const prev = counts.get(key);
        if (prev && now > prev.t && b.requests >= prev.requests) {
          const dr = b.requests - prev.requests;
          rates.set(key, {
            rps: dr / ((now - prev.t) / 1000),
            err: dr > 0 ? (b.errors - prev.errors) / dr : null,
          });
        }
        counts.set(key, { t: now, requests: b.requests, errors: b.errors });
      }
    }
  }

  // Pools.

  function renderPoolNav() {
    const ul = $("#pools");
    const names = pools.map((p) => p.name).join("\n");
    if (ul.dataset.names !== names) {
      ul.dataset.names = names;
      ul.textContent = "";
      for (const p of pools) {
        ul.append(el("li", {}, el("button", {
          type: "button", "data-pool": p.name, text: p.name,
          onclick: () => { selected = p.name; sessionStorage.setItem(POOL_KEY, selected); tick(); },
        })));
      }
    }
    for (const b of ul.querySelectorAll("button")) {
      b.setAttribute("aria-current", b.dataset.pool === selected ? "page" : "false");
    }
  }

  // Backends: one table per pool. Rows are kept and updated in place, so a
  // focused button stays focused across updates.

  const COLUMNS = ["name", "version", "state", "health", "weight", "effective", "inflight", "rps", "errors"];
  const HEADINGS = ["Backend", "Version", "State", "Health", "Weight", "Effective", "In flight", "Req/s", "Error rate"];

  function renderBackends() {
    const box = $("#pool-tables");
    const want = new Set(pools.map((p) => p.name));
    for (const t of [...box.children]) if (!want.has(t.dataset.pool)) t.remove();
    for (const p of pools) {
      let wrap = [...box.children].find((c) => c.dataset.pool === p.name);
      if (!wrap) {
        const thead = el("thead", {}, el("tr", {}, ...HEADINGS.map((h) => el("th", { scope: "col", text: h })),
          el("th", { scope: "col", text: "Actions" })));
        wrap = el("div", { class: "pool-block", "data-pool": p.name },
          el("h3", { class: "pool-name" }),
          el("div", { class: "table-wrap" }, el("table", { class: "backends" }, thead, el("tbody"))));
        box.append(wrap);
      }
      let title = "Pool " + p.name + ": stable " + (p.stable_version || "—");
      if (p.canary) title += ", canary " + p.canary.version + " at " + share(p.canary.weight) + " — " + p.canary.verdict;
      $(".pool-name", wrap).textContent = title;
      // A release under way (baton rollout's lease) and blue/green switches.
      const notes = [];
      if (p.lease) notes.push("Release under way: " + p.lease.holder + " (lease until " + new Date(p.lease.expires).toLocaleTimeString() + ")");
      if (p.switch) notes.push("Switched from " + p.switch.from + " to " + p.switch.to + "; guards watch it until " + new Date(p.switch.until).toLocaleTimeString());
      if (!p.switch && p.last_switch) {
        notes.push("Last switch to " + p.last_switch.to + ": " + p.last_switch.outcome.replace("_", " ") +
          (p.last_switch.reason ? " — " + p.last_switch.reason : ""));
      }
      let noteEl = $(".pool-notes", wrap);
      if (!noteEl) {
        noteEl = el("p", { class: "pool-notes" });
        $(".pool-name", wrap).after(noteEl);
      }
      noteEl.textContent = notes.join(" · ");
      noteEl.hidden = notes.length === 0;
      const tbody = $("tbody", wrap);
      const names = new Set(p.backends.map((b) => b.name));
      for (const tr of [...tbody.children]) if (!names.has(tr.dataset.backend)) tr.remove();
      for (const b of p.backends) {
        let tr = [...tbody.children].find((r) => r.dataset.backend === b.name);
        if (!tr) {
          tr = backendRow(p.name, b.name);
          tbody.append(tr);
        }
        updateRow(tr, p, b);
      }
    }
  }

  function backendRow(poolName, name) {
    const tr = el("tr", { "data-backend": name, "data-pool": poolName });
    for (const c of COLUMNS) {
      tr.append(c === "name" ? el("th", { scope: "row", "data-field": c }) : el("td", { "data-field": c }));
    }
    const path = "/v1/pools/" + enc(poolName) + "/backends/" + enc(name);
    const btn = (action, label, onclick, cls) => el("button", {
      type: "button", "data-action": action, class: cls, text: label,
      "aria-label": label.replace("…", "") + " " + name, onclick,
    });
    tr.append(el("td", { class: "actions" },
      btn("drain", "Drain…", () => drainBackend(poolName, name, path)),
      btn("enable", "Enable…", () => enableBackend(poolName, name, path)),
      btn("eject", "Eject…", () => ejectBackend(poolName, name, path), "danger"),
      btn("weight", "Weight…", () => weightBackend(poolName, name, path)),
      btn("monitor", "Monitor", () => openMonitor(poolName, name)),
    ));
    return tr;
  }

  function updateRow(tr, p, b) {
    const r = rates.get(p.name + "/" + b.name);
    let state = b.state;
    if (b.state === "draining") {
      state += " · " + b.inflight + " in flight · " + b.open_connections + " connection" + (b.open_connections === 1 ? "" : "s");
    }
    const values = {
      name: b.name, version: b.version, state, health: b.health,
      weight: String(b.weight), effective: String(b.effective_weight), inflight: String(b.inflight),
      rps: r ? r.rps.toFixed(1) : "—", errors: r ? pct(r.err) : "—",
    };
    for (const c of COLUMNS) {
      const cell = $('[data-field="' + c + '"]', tr);
      if (cell.textContent !== values[c]) cell.textContent = values[c];
    }
    $('[data-field="name"]', tr).title = b.address + (b.last_error ? " — last error: " + b.last_error : "");
    tr.dataset.state = b.state;
    tr.dataset.health = b.health;
    tr.classList.toggle("canary", !!p.canary && b.version === p.canary.version);
  }

  // Actions: each asks first, then calls the API and shows its answer.

  async function act(label, method, path, body) {
    try {
      await api(method, path, body);
      showMessage(label + ": done.", "ok");
    } catch (e) {
      if (!failed(e)) showMessage(label + " refused: " + e.message, "error");
      return false;
    }
    await tick();
    return true;
  }

  async function drainBackend(poolName, name, path) {
    const ok = await confirmAction({
      title: "Drain " + name + "?",
      text: name + " in pool " + poolName + " gets no new requests; requests in flight finish. " +
        "Its state shows drained once nothing is in flight.",
      ok: "Drain",
    });
    if (ok && await act("Drain " + name, "POST", path + "/drain")) {
      showMessage("Draining " + name + ": its state turns to drained when nothing is in flight.", "ok");
    }
  }

  async function enableBackend(poolName, name, path) {
    const b = findBackend(poolName, name);
    const vals = await confirmAction({
      title: "Enable " + name + "?",
      text: "It gets traffic once a health check passes. A version other than the stable one makes it the canary.",
      fields: [{ name: "version", label: "Version", value: b ? b.version : "", required: true }],
      ok: "Enable",
    });
    if (vals) await act("Enable " + name, "POST", path + "/enable", { version: vals.version.trim() });
  }

  async function ejectBackend(poolName, name, path) {
    const ok = await confirmAction({
      title: "Eject " + name + "?",
      text: name + " leaves rotation at once, without waiting for health checks. Enable brings it back.",
      ok: "Eject", danger: true,
    });
    if (ok) await act("Eject " + name, "POST", path + "/eject");
  }

  async function weightBackend(poolName, name, path) {
    const b = findBackend(poolName, name);
    const vals = await confirmAction({
      title: "Weight of " + name,
      text: "Its share of its version's traffic, 0 to 1000.",
      fields: [{ name: "weight", label: "Weight", type: "number", min: 0, max: 1000, step: 1, value: b ? b.weight : 100, required: true }],
      ok: "Set weight",
    });
    if (vals) await act("Weight of " + name, "PATCH", path, { weight: Number(vals.weight) });
  }

  function findBackend(poolName, name) {
    const p = pools.find((x) => x.name === poolName);
    return p && p.backends.find((b) => b.name === name);
  }

  for (const b of document.querySelectorAll("#release-actions button")) {
    b.addEventListener("click", () => releaseAction(b.dataset.action));
  }

  async function releaseAction(action) {
    if (!selected) return;
    const base = "/v1/pools/" + enc(selected) + "/canary";
    const cv = report && report.canary_version;
    switch (action) {
      case "share": {
        const vals = await confirmAction({
          title: "Canary share in " + selected,
          text: "The share of new requests the canary version gets, in percent.",
          fields: [
            { name: "version", label: "Canary version", value: cv || "", required: true },
            { name: "weight", label: "Share (%)", type: "number", min: 0, max: 100, step: "any", value: report ? report.weight : 0, required: true },
          ],
          ok: "Set share",
        });
        if (vals) await act("Canary share", "PUT", base, { version: vals.version.trim(), weight: Number(vals.weight) });
        return;
      }
      case "hold":
      case "resume": {
        const hold = action === "hold";
        const ok = await confirmAction({
          title: (hold ? "Hold" : "Resume") + " the release of " + selected + "?",
          text: hold ? "The judge keeps judging but takes no automatic step, promotion or rollback."
            : "The judge's automatic steps, promotion and rollback resume.",
          ok: hold ? "Hold" : "Resume",
        });
        if (ok) await act(hold ? "Hold" : "Resume", "POST", base + "/" + action);
        return;
      }
      case "promote": {
        const ok = await confirmAction({
          title: "Promote " + (cv || "the canary") + "?",
          text: (cv || "The canary") + " becomes the stable version of " + selected +
            "; servers still on the old version keep serving until they are upgraded.",
          ok: "Promote",
        });
        if (ok) await act("Promote", "POST", base + "/promote");
        return;
      }
      case "rollback": {
        const ok = await confirmAction({
          title: "Roll back " + (cv || "the canary") + "?",
          text: "The canary gets no new requests at once and its backends are drained; its clients move to the stable version.",
          ok: "Roll back", danger: true,
        });
        if (ok) await act("Roll back", "POST", base + "/rollback");
        return;
      }
    }
  }

  // confirmAction shows the dialog; it resolves to the field values (an
  // object, empty without fields) on Confirm, or null on Cancel or Escape.
  function confirmAction({ title, text, fields = [], ok = "Confirm", danger = false }) {
    return new Promise((resolve) => {
      const d = $("#confirm");
      $("#confirm-title").textContent = title;
      $("#confirm-text").textContent = text;
      const box = $("#confirm-fields");
      box.textContent = "";
      const inputs = {};
      for (const f of fields) {
        const id = "field-" + f.name;
        const input = el("input", {
          id, name: f.name, type: f.type || "text", required: f.required,
          min: f.min, max: f.max, step: f.step, autocomplete: "off",
        });
        input.value = f.value === undefined || f.value === null ? "" : String(f.value);
        box.append(el("label", { for: id, text: f.label }), input);
        inputs[f.name] = input;
      }
      const okButton = $("#confirm-ok");
      okButton.textContent = ok;
      okButton.className = danger ? "danger" : "primary";
      d.returnValue = "";
      d.addEventListener("close", () => {
        if (d.returnValue !== "ok") return resolve(null);
        const vals = {};
        for (const [k, input] of Object.entries(inputs)) vals[k] = input.value;
        resolve(vals);
      }, { once: true });
      d.showModal();
      (fields.length ? inputs[fields[0].name] : $("#confirm-cancel")).focus();
    });
  }

  // The release view.

  function renderRelease(rep) {
    $("#release-title").textContent = "Release of " + rep.pool;
    let head = "Stable " + rep.stable_version;
    head += rep.canary_version ? ", canary " + rep.canary_version + " at " + share(rep.weight) : ", no canary";
    if (rep.held) head += " (held)";
    const auto = [];
    if (rep.auto_promote) auto.push("promotes");
    if (rep.auto_rollback) auto.push("rolls back");
    head += rep.dry_run ? ". Dry run: the judge reports and never acts."
      : auto.length ? ". The judge " + auto.join(" and ") + " on its own." : ". The judge reports; people act.";
    head += " Figures since " + when(rep.since) + ".";
    $("#release-head").textContent = head;

    const v = $("#verdict");
    const figs = $("#figures");
    figs.textContent = "";
    if (rep.canary_version) {
      v.hidden = false;
      v.className = "verdict verdict-" + rep.verdict;
      v.dataset.verdict = rep.verdict;
      v.textContent = "";
      v.append(el("strong", { text: rep.verdict }),
        document.createTextNode(" " + (rep.rule ? "(" + rep.rule + ") " : "") + "— " + rep.reason),
        el("span", { class: "muted", text: rep.verdict_at ? " · " + new Date(rep.verdict_at).toLocaleTimeString() : "" }));
      for (const f of rep.figures || []) figs.append(el("li", {}, el("code", { text: f.rule }), document.createTextNode(" " + f.detail)));
    } else {
      v.hidden = true;
      v.dataset.verdict = "";
    }
    $("#figures-box").hidden = !rep.canary_version || !(rep.figures || []).length;

    const prev = $("#previous");
    if (!rep.canary_version && rep.previous) {
      const pc = rep.previous;
      let line = "Previous canary " + pc.version + ": " + (pc.outcome ? pc.outcome.replace("_", " ") + " by " + pc.by : "ended") +
        " at " + when(pc.at);
      line += pc.verdict ? " — " + pc.verdict + ": " + pc.reason : " (the judge had reached no verdict)";
      prev.textContent = line;
      prev.hidden = false;
    } else {
      prev.hidden = true;
    }

    renderLadder(rep);
    renderCompare(rep);
    renderSignatures(rep);
    $('#release-actions [data-action="hold"]').hidden = rep.held;
    $('#release-actions [data-action="resume"]').hidden = !rep.held;
  }

  function renderLadder(rep) {
    const ol = $("#ladder");
    ol.textContent = "";
    if (!rep.canary_version) {
      ol.hidden = true;
      return;
    }
    ol.hidden = false;
    const steps = rep.steps && rep.steps.length ? rep.steps : [rep.weight];
    steps.forEach((s, i) => {
      const li = el("li", { text: share(s) });
      if (rep.step === i + 1) {
        li.className = "current";
        li.setAttribute("aria-current", "step");
      } else if (s < rep.weight) {
        li.className = "done";
      }
      ol.append(li);
    });
    ol.append(el("li", { class: "end", text: rep.auto_promote ? "promote" : "promote (by hand)" }));
  }

  function orderedVersions(rep) {
    const rank = { stable: 0, canary: 1, rolled_back: 2, previous: 3 };
    return [...(rep.versions || [])].sort((a, b) => (rank[a.role] ?? 9) - (rank[b.role] ?? 9) || a.version.localeCompare(b.version));
  }

  function renderCompare(rep) {
    const t = $("#compare");
    t.textContent = "";
    const vs = orderedVersions(rep);
    t.append(el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "" }),
      ...vs.map((x) => el("th", { scope: "col", class: "role-" + x.role, text: x.version + " (" + x.role.replace("_", " ") + ")" })))));
    const rows = [
      ["Requests", (x) => String(x.requests)],
      ["Errors", (x) => String(x.errors)],
      ["Error rate", (x) => pct(x.error_rate)],
      ["p50", (x) => msf(x.p50_ms)],
      ["p90", (x) => msf(x.p90_ms)],
      ["p99", (x) => msf(x.p99_ms)],
    ];
    const tb = el("tbody");
    for (const [label, f] of rows) tb.append(el("tr", {}, el("th", { scope: "row", text: label }), ...vs.map((x) => el("td", { text: f(x) }))));
    t.append(tb);
  }

  function renderSignatures(rep) {
    const tb = $("#signatures tbody");
    tb.textContent = "";
    const sigs = rep.signatures || [];
    if (!sigs.length) {
      tb.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No failures since the canary started." })));
      return;
    }
    for (const s of sigs) {
      // Counts of stable and canary first, zero included, then any other.
      const counts = {};
      for (const x of orderedVersions(rep)) if (x.role === "stable" || x.role === "canary") counts[x.version] = 0;
      Object.assign(counts, s.counts);
      const countText = Object.entries(counts).map(([v, n]) => v + ": " + n).join(", ");
      let ex = "";
      if (s.example) {
        ex = s.example.status + " " + s.example.path + (s.example.body ? " “" + s.example.body + "”" : "") +
          " · " + new Date(s.example.time).toLocaleTimeString();
      }
      tb.append(el("tr", { "data-class": s.class || "" },
        el("td", {}, el("span", { class: "badge badge-" + (s.class || "none"), text: s.class || "—" }),
          s.fails_release ? el("span", { class: "fails", text: " fails the release" }) : null),
        el("td", {}, el("code", { text: s.key })),
        el("td", { text: countText }),
        el("td", { class: "example", text: ex }),
        el("td", {}, el("button", {
          type: "button", class: "live", text: "Live requests", "aria-label": "Live requests of " + s.key,
          onclick: () => showSignature(s.key),
        }))));
    }
  }

  // Charts: uPlot, one per figure, a line per version over 15 minutes.

  const charts = {};
  const CHARTS = [
    { id: "chart-rps", key: "rps", scale: 1, unit: "/s" },
    { id: "chart-errors", key: "error_rate", scale: 100, unit: "%" },
    { id: "chart-p50", key: "p50_ms", scale: 1, unit: " ms" },
    { id: "chart-p99", key: "p99_ms", scale: 1, unit: " ms" },
  ];
  const ROLE_COLOURS = { stable: "#0b5cad", canary: "#c2410c", rolled_back: "#9f1239" };
  const OTHER_COLOURS = ["#4d7c0f", "#6d28d9", "#0f766e", "#a16207"];

  function renderCharts(hist, rep) {
    const roles = {};
    for (const x of rep.versions || []) roles[x.version] = x.role;
    const versions = Object.keys(hist.versions).sort((a, b) => {
      const rank = { stable: 0, canary: 1 };
      return (rank[roles[a]] ?? 5) - (rank[roles[b]] ?? 5) || a.localeCompare(b);
    });
    const colours = versions.map((v, i) => ROLE_COLOURS[roles[v]] || OTHER_COLOURS[i % OTHER_COLOURS.length]);
    const labels = versions.map((v) => v + (roles[v] ? " (" + roles[v].replace("_", " ") + ")" : ""));
    plotSeries(CHARTS, hist.t, versions.map((v) => hist.versions[v]), labels, colours, hist.pool);
    for (const c of CHARTS) document.getElementById(c.id).dataset.versions = versions.join(",");
  }

  // plotSeries draws one chart per entry of defs, a line per series (each
  // a {rps, error_rate, p50_ms, p99_ms} object aligned on t); a chart is
  // made anew only when its lines change.
  function plotSeries(defs, t, series, labels, colours, scope, dashes) {
    const shape = scope + "|" + labels.join(",") + "|" + colours.join(",");
    for (const c of defs) {
      const div = document.getElementById(c.id);
      const data = [t, ...series.map((sr) => sr[c.key].map((x) => (x === null ? null : x * c.scale)))];
      let ch = charts[c.id];
      if (!ch || ch.shape !== shape) {
        if (ch) ch.plot.destroy();
        div.textContent = "";
        const opts = {
          width: Math.max(div.clientWidth, 240), height: 170,
          series: [{}, ...labels.map((label, i) => ({
            label, stroke: colours[i], width: 2, dash: dashes && dashes[i],
            value: (u, x) => (x === null || x === undefined ? "—" : x.toFixed(2) + c.unit),
          }))],
          legend: { live: false },
          axes: [{
            space: 70,
            values: (u, splits) => {
              const withSeconds = u.scales.x.max - u.scales.x.min < 600;
              const fmt = withSeconds ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" };
              return splits.map((v) => new Date(v * 1000).toLocaleTimeString([], fmt));
            },
          }, { size: 56 }],
          scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, c.key === "error_rate" ? 1 : 0.001)] } },
        };
        ch = charts[c.id] = { plot: new uPlot(opts, data, div), shape };
      } else {
        ch.plot.setData(data);
      }
      div.dataset.points = String(t.length);
    }
  }

  new ResizeObserver(() => {
    for (const c of [...CHARTS, ...MONITOR_CHARTS]) {
      const ch = charts[c.id];
      const div = document.getElementById(c.id);
      if (ch && div.clientWidth > 0 && Math.abs(ch.plot.width - div.clientWidth) > 4) ch.plot.setSize({ width: div.clientWidth, height: 170 });
    }
  }).observe(document.body);

  // The monitor of one backend: its figures beside the average backend of
  // its version and of the stable version, refreshed with the rest.

  let monitored = null; // {pool, backend}
  const MONITOR_CHARTS = CHARTS.map((c) => ({ ...c, id: c.id.replace("chart-", "monitor-") }));

  function openMonitor(poolName, name) {
    monitored = { pool: poolName, backend: name };
    $("#monitor").hidden = false;
    $("#monitor-title").textContent = "Monitor of " + name;
    refreshMonitor().then(() => $("#monitor").scrollIntoView({ block: "start" }), (e) => { if (!failed(e)) showMessage(e.message, "error"); });
  }
  $("#monitor-close").addEventListener("click", () => {
    monitored = null;
    $("#monitor").hidden = true;
  });

  async function refreshMonitor() {
    const m = monitored;
    let h;
    try {
      h = await api("GET", "/v1/pools/" + enc(m.pool) + "/backends/" + enc(m.backend) + "/history");
    } catch (e) {
      if (e.status === 404) { // the backend left its pool
        monitored = null;
        $("#monitor").hidden = true;
        return;
      }
      throw e;
    }
    if (monitored !== m) return;
    const stableToo = h.stable_version && h.stable_version !== h.version;
    $("#monitor-title").textContent = "Monitor of " + h.backend + " (" + h.version + ") in " + h.pool;
    $("#monitor-head").textContent = h.backend + "'s own figures every " + h.interval_seconds + " s over 15 minutes, beside the average " +
      h.version + " backend" + (stableToo ? " and the average " + h.stable_version + " (stable) backend." : " (the stable version).");
    // The averages first and dashed, so that the backend's own line is
    // drawn over them.
    const series = [h.version_average];
    const labels = ["average " + h.version];
    const colours = ["#4d7c0f"];
    if (stableToo) {
      series.push(h.stable_average);
      labels.push("average " + h.stable_version + " (stable)");
      colours.push("#0b5cad");
    }
    series.push(h.series);
    labels.push(h.backend);
    colours.push("#c2410c");
    const dashes = labels.map((l, i) => (i < labels.length - 1 ? [6, 4] : undefined));
    plotSeries(MONITOR_CHARTS, h.t, series, labels, colours, h.pool + "/" + h.backend, dashes);
  }

  // Live requests: one stream per tab (a browser opens six connections to
  // a host at most, shared by every tab), shown in a panel per version
  // (stable and canary), read with fetch so the token goes in a header.
  // Paused, or in a hidden tab, it lets go of its stream and goes on
  // later from the last record shown.

  const TAIL_LINES = 100;
  const panels = new Map(); // version → {list, state}
  const stream = { ctrl: null, lastSeq: 0, pool: "", only: "", delay: 2000 };
  let tailKey = "";
  let tailPaused = false;

  function tailVersions(rep) {
    const vs = orderedVersions(rep).filter((x) => x.role === "stable" || x.role === "canary").map((x) => [x.version, x.role]);
    if (!vs.length && rep.stable_version) vs.push([rep.stable_version, "stable"]);
    return vs;
  }

  function syncTails(rep) {
    const vs = tailVersions(rep);
    const only = $("#tail-only").value;
    const key = rep.pool + "|" + only + "|" + vs.map((v) => v.join(":")).join(",");
    if (key === tailKey) return;
    const samePool = stream.pool === rep.pool && stream.only === only;
    tailKey = key;
    const box = $("#tails");
    const keep = new Map();
    for (const [version, role] of vs) {
      let p = samePool && panels.get(version);
      if (!p) {
        const list = el("ol", { class: "tail-lines", "aria-live": "off" });
        const state = el("span", { class: "tail-state" });
        p = { list, state, box: el("div", { class: "tail", "data-version": version },
          el("h4", { class: "role-" + role, text: version + " (" + role + ") " }, state), list) };
      }
      keep.set(version, p);
    }
    box.textContent = "";
    panels.clear();
    for (const [v, p] of keep) {
      panels.set(v, p);
      box.append(p.box);
    }
    if (!samePool) {
      stopTail();
      stream.pool = rep.pool;
      stream.only = only;
      stream.lastSeq = 0;
      stream.delay = 2000;
      if (!tailPaused && !document.hidden) openTail();
    }
    tailState(stream.ctrl ? "· live" : tailPaused ? "· paused" : "");
  }

  function tailState(text) {
    for (const p of panels.values()) p.state.textContent = text;
  }

  function stopTail() {
    if (stream.ctrl) stream.ctrl.abort();
    stream.ctrl = null;
  }

  async function openTail() {
    const poolName = stream.pool;
    const q = new URLSearchParams({ only: stream.only, since: stream.lastSeq ? String(stream.lastSeq) : "5m" });
    if (stream.only === "all") q.set("sample", "0.1");
    const ctrl = new AbortController();
    stream.ctrl = ctrl;
    tailState("· live");
    const headers = { Accept: "application/x-ndjson" };
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const res = await fetch("/v1/pools/" + enc(poolName) + "/tail?" + q, { headers, signal: ctrl.signal, cache: "no-store" });
      if (!res.ok) {
        let msg = res.status + " " + res.statusText;
        try { msg = (await res.json()).error || msg; } catch (_) { /* not JSON */ }
        throw new Error(msg);
      }
      stream.delay = 2000;
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line) tailLine(JSON.parse(line));
        }
      }
      tailState("· reconnecting");
    } catch (e) {
      if (ctrl.signal.aborted) return;
      tailState("· not live: " + e.message);
      stream.delay = Math.min(stream.delay * 2, 60000); // refused (too many tails) or away: back off
    }
    // The stream ended (baton dropped or closed it, or the network): go
    // on from the last record shown, unless the view moved on.
    if (stream.ctrl === ctrl && !tailPaused) {
      setTimeout(() => { if (stream.ctrl === ctrl && !tailPaused && !document.hidden) openTail(); }, stream.delay);
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      stopTail();
      tailState("· paused while the tab is hidden");
    } else if (!tailPaused && stream.pool && !stream.ctrl) {
      openTail();
    }
  });

  function tailLine(r) {
    if (r.type === "gap") {
      for (const p of panels.values()) p.list.prepend(el("li", { class: "gap", text: "— " + r.message }));
      return;
    }
    if (r.type !== "request") return; // heartbeats and the notices that end a stream
    stream.lastSeq = r.seq;
    const t = panels.get(r.version);
    if (!t) return; // a version neither stable nor canary
    const li = el("li", { "data-failed": r.failed ? "true" : "false", "data-slow": r.slow ? "true" : "false",
      "data-signature": r.signature || "", "data-seq": r.seq },
      el("span", { class: "when", text: new Date(r.time).toLocaleTimeString() }),
      document.createTextNode(r.backend + " " + r.method + " " + r.path + " → " + r.status + " " + r.outcome +
        " · " + msf(r.duration_ms) + (r.slow ? " (slow)" : "")));
    if (r.signature) {
      li.append(" ", el("span", { class: "badge badge-" + (r.signature_class || "none"), text: r.signature_class || "unjudged" }),
        " ", el("code", { text: r.signature }));
    }
    if (r.body) li.append(el("span", { class: "body", text: "“" + r.body + "”" }));
    li.hidden = !matchesFilter(li);
    t.list.prepend(li);
    while (t.list.children.length > TAIL_LINES) t.list.lastElementChild.remove();
  }

  function matchesFilter(li) {
    const f = $("#tail-signature").value.trim();
    return !f || li.dataset.signature === f || li.dataset.signature.includes(f);
  }

  function applyFilter() {
    for (const li of document.querySelectorAll("#tails li")) li.hidden = !matchesFilter(li);
  }

  function showSignature(key) {
    $("#tail-signature").value = key;
    applyFilter();
    $("#tail-title").scrollIntoView({ block: "start" });
  }

  $("#tail-signature").addEventListener("input", applyFilter);
  $("#tail-only").addEventListener("change", () => { tailKey = ""; if (report) syncTails(report); });
  $("#tail-pause").addEventListener("click", () => {
    tailPaused = !tailPaused;
    const b = $("#tail-pause");
    b.setAttribute("aria-pressed", String(tailPaused));
    b.textContent = tailPaused ? "Resume" : "Pause";
    if (tailPaused) {
      stopTail();
      tailState("· paused");
    } else if (stream.pool) {
      openTail();
    }
  });

  // Events.

  function renderEvents(events) {
    const tb = $("#events tbody");
    const sig = events.length ? events[0].time + events.length : "";
    if (tb.dataset.sig === sig) return;
    tb.dataset.sig = sig;
    tb.textContent = "";
    for (const e of events) {
      tb.append(el("tr", {},
        el("td", { text: when(e.time) }),
        el("td", { text: e.actor }),
        el("td", { text: e.action }),
        el("td", { text: [e.pool, e.backend].filter(Boolean).join("/") }),
        el("td", { text: e.detail || "" })));
    }
  }

  start();
})();
