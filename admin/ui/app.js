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
    }
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
      tb.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No failures since the canary started." })));
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
        el("td", { class: "example", text: ex })));
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
    const shape = hist.pool + "|" + versions.join(",") + "|" + colours.join(",");
    for (const c of CHARTS) {
      const div = document.getElementById(c.id);
      const data = [hist.t, ...versions.map((v) => hist.versions[v][c.key].map((x) => (x === null ? null : x * c.scale)))];
      let ch = charts[c.id];
      if (!ch || ch.shape !== shape) {
        if (ch) ch.plot.destroy();
        div.textContent = "";
        const opts = {
          width: Math.max(div.clientWidth, 240), height: 170,
          series: [{}, ...versions.map((v, i) => ({
            label: v + (roles[v] ? " (" + roles[v].replace("_", " ") + ")" : ""),
            stroke: colours[i], width: 2,
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
      div.dataset.points = String(hist.t.length);
      div.dataset.versions = versions.join(",");
    }
  }

  new ResizeObserver(() => {
    for (const c of CHARTS) {
      const ch = charts[c.id];
      const div = document.getElementById(c.id);
      if (ch && div.clientWidth > 0 && Math.abs(ch.plot.width - div.clientWidth) > 4) ch.plot.setSize({ width: div.clientWidth, height: 170 });
    }
  }).observe($("#charts"));

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
