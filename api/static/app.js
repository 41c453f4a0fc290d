// ollama-gitops dashboard. Plain JavaScript, no build step, nothing loaded from elsewhere.
// Reads the API (the same endpoints as every client), follows /api/v1/events, and falls back to
// polling while the stream is down. Data is put in the page as text only (never as HTML).
"use strict";
(() => {
  const KEY_STORAGE = "ollama-gitops.apiKey"; // sessionStorage only: never localStorage, a cookie or a URL
  const POLL_MS = 3000;
  const RETRY_MS = [1000, 2000, 5000, 10000, 30000];
  const OVERSCAN = 12; // rows rendered beyond the visible ones, each way

  const $ = (id) => document.getElementById(id);
  const state = {
    key: sessionStorage.getItem(KEY_STORAGE),
    models: new Map(), // "namespace/name" -> the API's model view
    keys: [], // every key, sorted
    filtered: [], // the keys shown, in order
    visibleKeys: new Set(), // the keys of the rows rendered now
    speeds: new Map(), // key -> {done, at, speed}
    status: null,
    servers: [], // GET /api/v1/servers' items as shown
    countsTimer: null, // a read of the servers' counts, due soon
    serverColumns: [],
    lastEventId: null,
    heartbeat: 15,
    loading: 0, // reads in flight: events wait for them
    pendingEvents: [],
    sortNeeded: false,
    filterNeeded: true,
    renderQueued: false,
    rowHeight: 33,
    polling: null,
    streamAbort: null,
    patterns: null,
    // What the page costs (benchmarks/bench_dashboard.py reads these): the time from navigation to
    // the first render of the full list, and per models event the milliseconds spent applying it
    // and rendering after it (the wait for the animation frame left out).
    timings: { firstFull: null, updates: [], pendingWork: null },
  };

  // -- the API ------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (state.key) headers["X-API-Key"] = state.key;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    if (response.status === 401) {
      askForKey(state.key ? "That key was refused." : "");
      throw new ApiError(401, "the API key is needed");
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, message);
    }
    return response;
  }
  const getJson = async (path) => (await api(path)).json();

  // -- the API key ------------------------------------------------------------------------------
  let keyWaiters = [];
  function askForKey(message) {
    const dialog = $("key-dialog");
    $("key-error").textContent = message || "";
    $("key-button").hidden = false;
    if (!dialog.open) { dialog.showModal(); $("key-input").focus(); }
    return new Promise((resolve) => keyWaiters.push(resolve));
  }
  $("key-form").addEventListener("submit", (event) => {
    const value = $("key-input").value.trim();
    if (!value) { event.preventDefault(); $("key-error").textContent = "Enter the key."; return; }
    state.key = value;
    sessionStorage.setItem(KEY_STORAGE, value);
    $("key-input").value = "";
    const waiters = keyWaiters; keyWaiters = [];
    waiters.forEach((resolve) => resolve());
    restart();
  });
  $("key-button").addEventListener("click", () => askForKey(""));

  // -- formatting -----------------------------------------------------------------------------
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "text") node.textContent = value;
      else if (name === "className") node.className = value;
      else if (name.startsWith("data-") || name.startsWith("aria-")) node.setAttribute(name, value);
      else node[name] = value;
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  function webUrl(repository) {
    if (!repository) return null;
    let match = repository.match(/^https?:\/\/(?:[^@/]*@)?([^/]+)\/(.+?)(?:\.git)?\/?$/);
    if (match) return `https://${match[1]}/${match[2]}`;
    match = repository.match(/^(?:ssh:\/\/)?[^@/]+@([^:/]+)(?::\d+)?[:/](.+?)(?:\.git)?\/?$/);
    if (match) return `https://${match[1]}/${match[2].replace(/^\//, "")}`;
    return null;
  }
  function commitNode(sha) {
    if (!sha) return document.createTextNode("–");
    const code = el("code", { text: sha.slice(0, 12), title: sha });
    const base = webUrl(state.status && state.status.repository);
    return base ? el("a", { href: `${base}/commit/${sha}`, rel: "noreferrer", className: "commit" }, code) : code;
  }
  function ago(iso) {
    if (!iso) return "–";
    const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (!Number.isFinite(seconds)) return iso;
    const text = seconds < 60 ? `${Math.max(0, seconds)} s ago` : seconds < 3600 ? `${Math.round(seconds / 60)} min ago`
      : seconds < 86400 ? `${Math.round(seconds / 3600)} h ago` : `${Math.round(seconds / 86400)} d ago`;
    return `${iso} (${text})`;
  }
  function bytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }
  function notice(...parts) {
    const box = $("notice");
    box.replaceChildren(...parts.map((p) => (typeof p === "string" ? document.createTextNode(p) : p)));
  }

  // -- sync summary, problems, servers, history ---------------------------------------------------
  function renderStatus(status) {
    const previous = state.status;
    state.status = status;
    $("sync-repository").textContent = status.repository ? `${status.repository} (branch ${status.branch || "-"})` : "–";
    $("sync-fetched").replaceChildren(commitNode(status.lastFetchedCommit));
    $("sync-applied").replaceChildren(commitNode(status.lastAppliedCommit));
    const duration = status.lastCycleDurationSeconds;
    $("sync-cycle").textContent = status.lastCycleTime
      ? `${ago(status.lastCycleTime)}${duration !== null && duration !== undefined ? `, took ${duration.toFixed(3)} s` : ""}` : "no cycle yet";
    const outcome = $("sync-outcome");
    outcome.textContent = status.lastCycleOutcome || "–";
    outcome.className = status.lastCycleOutcome === "Failed" ? "state state-Failed" : status.lastCycleOutcome ? "state state-Ready" : "";
    $("sync-message").textContent = status.lastCycleMessage || "–";
    $("sync-next").textContent = status.nextCycleTime ? status.nextCycleTime : "not known: this process runs no schedule";
    const gitError = $("git-error");
    gitError.hidden = !status.gitError;
    gitError.textContent = status.gitError ? `Fetching the repository failed: ${status.gitError}` : "";
    const problems = (status.problems || []).map((p) =>
      el("li", { className: "problem" }, el("code", { text: p.line ? `${p.path}:${p.line}` : p.path }), `: ${p.message}`));
    $("problems").replaceChildren(...(problems.length ? problems : [el("li", { className: "none", text: "none" })]));
    // A new commit brings models no event has named yet; a cycle's end, new counts per server.
    if (previous && previous.lastFetchedCommit !== status.lastFetchedCommit) guarded(loadModels).catch(() => {});
    if (previous && previous.lastCycleTime !== status.lastCycleTime) guarded(loadServers).catch(() => {});
  }
  function cycleStarted(data) { $("sync-now").textContent = `cycle running since ${data.time}`; }
  function cycleEnded(data) {
    $("sync-now").textContent = `last cycle ended ${data.time}: ${data.outcome}`;
    if (!data.noop) loadHistory();
  }

  // GET /api/v1/servers' items; a `servers` event's carry no counts (they change with the models):
  // a server's last counts are kept until the next read of the list.
  function renderServers(items) {
    const counted = new Map((state.servers || []).map((s) => [s.name, s.models]));
    state.servers = items.map((s) => (s.models ? s : Object.assign({}, s, { models: counted.get(s.name) })));
    const rows = state.servers.map((s) => el("tr", { "data-server": s.name },
      el("th", { scope: "row", text: s.name }), el("td", { text: s.url || "–" }),
      el("td", { className: `state ${s.reachable === false ? "state-Failed" : s.reachable ? "state-Ready" : "state-Pending"}`,
        text: s.reachable === null || s.reachable === undefined ? "not asked yet" : s.reachable ? "reachable" : "unreachable" }),
      el("td", { text: s.version || "–" }), el("td", { text: s.lastSeen || "–" }),
      el("td", { className: "wrap", text: countsText(s.models) }),
      el("td", { className: "wrap", text: s.error || "" })));
    $("servers").tBodies[0].replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colSpan: 7, className: "none", text: "no server reported yet" }))]));
    state.serverNames = items.map((s) => s.name);
    refreshServerFilter();
  }
  function countsText(models) {
    if (!models) return "–";
    const shown = Object.entries(models).filter(([, n]) => n).map(([name, n]) => `${n} ${name}`);
    return shown.length ? shown.join(", ") : "none";
  }
  function refreshServerFilter() {
    const select = $("filter-server");
    const current = select.value;
    const names = new Set([...(state.serverNames || []), ...state.serverColumns]);
    select.replaceChildren(el("option", { value: "", text: "any" }),
      ...[...names].sort().map((name) => el("option", { value: name, text: name })));
    select.value = names.has(current) ? current : "";
  }

  function renderHistory(items) {
    const list = (names, count) => (count > names.length ? `${names.join(", ")} and ${count - names.length} more` : names.join(", ")) || "–";
    const rows = items.map((h) => el("tr", {},
      el("td", { text: h.time }), el("td", {}, commitNode(h.commit)), el("td", { text: `${h.durationSeconds.toFixed(3)} s` }),
      el("td", { className: `state state-${h.outcome === "Failed" ? "Failed" : "Ready"}`, text: h.outcome }),
      el("td", { className: "wrap", text: list(h.pulled, h.pulledCount) }), el("td", { className: "wrap", text: list(h.deleted, h.deletedCount) }),
      el("td", { className: "wrap", text: h.message })));
    $("history").tBodies[0].replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colSpan: 7, className: "none", text: "no cycle yet" }))]));
  }

  // -- the models table ----------------------------------------------------------------------------
  const keyOf = (m) => `${m.namespace}/${m.name}`;

  function upsert(view) {
    const key = keyOf(view);
    const old = state.models.get(key);
    if (!old) { state.keys.push(key); state.sortNeeded = true; }
    if (!old || old.state !== view.state || old.error !== view.error) state.filterNeeded = true;
    if (old && serverStates(old) !== serverStates(view)) countsChanged();
    if (view.servers) { // the API lists the servers in a fleet only
      for (const s of view.servers) if (!state.serverColumns.includes(s.name)) { state.serverColumns.push(s.name); state.serverColumns.sort(); state.headNeeded = true; }
    }
    state.models.set(key, view);
    trackSpeed(key, view);
  }
  function serverStates(view) {
    return view.servers ? view.servers.map((s) => `${s.name}=${s.state}`).join(",") : "";
  }
  // A model's state changed on a server (a pull ended after the cycle did, say): the servers' counts
  // are read again, at most once a second however many models change.
  function countsChanged() {
    if (state.countsTimer) return;
    state.countsTimer = setTimeout(() => { state.countsTimer = null; loadServers().catch(() => {}); }, 1000);
  }
  function trackSpeed(key, view) {
    if (view.state !== "Pulling" || !view.progress) { state.speeds.delete(key); return; }
    const now = performance.now();
    const last = state.speeds.get(key);
    const done = view.progress.completed;
    if (last && now > last.at && done >= last.done) {
      const instant = (done - last.done) / ((now - last.at) / 1000);
      const speed = last.speed === null ? instant : 0.7 * last.speed + 0.3 * instant;
      state.speeds.set(key, { done, at: now, speed });
    } else if (!last || done < last.done) {
      state.speeds.set(key, { done, at: now, speed: null });
    }
  }
  function remove(item) {
    const key = `${item.namespace}/${item.name}`;
    if (state.models.delete(key)) { state.keys = state.keys.filter((k) => k !== key); state.filterNeeded = true; }
  }
  function replaceAll(items) {
    state.models = new Map();
    state.keys = [];
    state.serverColumns = [];
    for (const view of items) upsert(view);
    state.headNeeded = true;
    state.filterNeeded = true;
    const namespaces = [...new Set(items.map((m) => m.namespace))].sort();
    const select = $("filter-namespace");
    const current = select.value;
    select.replaceChildren(el("option", { value: "", text: "any" }), ...namespaces.map((n) => el("option", { value: n, text: n })));
    select.value = namespaces.includes(current) ? current : "";
    refreshServerFilter();
  }

  function applyFilter() {
    if (state.sortNeeded) { state.keys.sort(); state.sortNeeded = false; }
    const text = $("search").value.trim().toLowerCase();
    const wantState = $("filter-state").value;
    const wantNamespace = $("filter-namespace").value;
    const wantServer = $("filter-server").value;
    state.filtered = state.keys.filter((key) => {
      const m = state.models.get(key);
      if (wantState && m.state !== wantState) return false;
      if (wantNamespace && m.namespace !== wantNamespace) return false;
      if (wantServer && m.servers && !m.servers.some((s) => s.name === wantServer)) return false; // no list: the one server
      if (text && !`${key} ${m.modelName}:${m.tag} ${m.error || ""}`.toLowerCase().includes(text)) return false;
      return true;
    });
    state.filterNeeded = false;
    $("model-count").textContent = state.filtered.length === state.keys.length
      ? `(${state.keys.length})` : `(${state.filtered.length} of ${state.keys.length})`;
  }

  const COLUMNS = ["Namespace", "Name", "Model", "State", "Size", "Last pull", "Progress", "Error"];
  function renderHead() {
    const cells = [...COLUMNS, ...state.serverColumns.map((s) => `Server ${s}`), "Actions"]
      .map((text) => el("th", { scope: "col", text }));
    $("models-head").replaceChildren(...cells);
    state.headNeeded = false;
    refreshServerFilter();
  }

  function progressNodes(key, progress, withSpeed) {
    if (!progress || !progress.total) return [];
    const percent = Math.min(100, (100 * progress.completed) / progress.total);
    const bar = el("progress", { max: 100, value: percent, "aria-label": `${key} pulled ${percent.toFixed(0)}%` });
    const nodes = [bar, el("span", { className: "speed", text: `${percent.toFixed(0)}%` })];
    const speed = withSpeed && state.speeds.get(key);
    if (speed && speed.speed !== null) nodes.push(el("span", { className: "speed", text: `${bytes(speed.speed)}/s` }));
    return nodes;
  }

  function rowFor(key) {
    const m = state.models.get(key);
    const cells = [
      el("td", { text: m.namespace }), el("td", { text: m.name }), el("td", { text: `${m.modelName}:${m.tag}` }),
      el("td", { className: `state state-${m.state}`, text: m.suspended ? `${m.state} (suspended)` : m.state }),
      el("td", { text: m.formattedSize || "–" }), el("td", { text: m.lastPullTime || "–" }),
      el("td", { className: "progress" }, ...(m.state === "Pulling" ? progressNodes(key, m.progress, true) : [])),
      el("td", { className: "error-cell", text: m.error || "", title: m.error || "" }),
    ];
    for (const server of state.serverColumns) {
      const entry = (m.servers || []).find((s) => s.name === server);
      cells.push(entry ? el("td", { className: `state state-${entry.state}`, title: entry.error || "" }, entry.state,
        ...(entry.state === "Pulling" ? progressNodes(`${key} on ${server}`, entry.progress, false) : []))
        : el("td", { className: "none", text: "not placed" }));
    }
    cells.push(el("td", { className: "actions" },
      el("button", { type: "button", text: "Refresh", "data-action": "refresh", "data-key": key, "aria-label": `Refresh ${key}` }),
      el("button", { type: "button", text: "Delete", className: "danger", "data-action": "delete", "data-key": key, "aria-label": `Delete ${key}` })));
    return el("tr", { "data-key": key, "data-state": m.state }, ...cells);
  }

  function replaceRow(key) {
    const old = $("models-body").querySelector(`tr[data-key="${CSS.escape(key)}"]`);
    if (!old) return;
    const focused = old.contains(document.activeElement) ? document.activeElement.dataset.action : null;
    const row = rowFor(key);
    old.replaceWith(row);
    if (focused) row.querySelector(`button[data-action="${focused}"]`).focus();
  }

  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(render);
  }
  function render() {
    const started = performance.now();
    state.renderQueued = false;
    if (state.headNeeded) renderHead();
    if (state.filterNeeded) applyFilter();
    const scroller = $("models-scroll");
    const total = state.filtered.length;
    const first = Math.max(0, Math.floor(scroller.scrollTop / state.rowHeight) - OVERSCAN);
    const count = Math.ceil(scroller.clientHeight / state.rowHeight) + 2 * OVERSCAN;
    const last = Math.min(total, first + count);
    const focused = document.activeElement;
    const refocus = focused && focused.dataset && focused.dataset.action ? [focused.dataset.action, focused.dataset.key] : null;
    const columns = COLUMNS.length + state.serverColumns.length + 1;
    const rows = [];
    const top = el("tr", { className: "spacer", "aria-hidden": "true" }, el("td", { colSpan: columns }));
    top.firstChild.style.height = `${first * state.rowHeight}px`;
    rows.push(top);
    for (let i = first; i < last; i++) rows.push(rowFor(state.filtered[i]));
    if (!total) rows.push(el("tr", {}, el("td", { colSpan: columns, className: "none", text: state.keys.length ? "no model matches" : "no model" })));
    const bottom = el("tr", { className: "spacer", "aria-hidden": "true" }, el("td", { colSpan: columns }));
    bottom.firstChild.style.height = `${(total - last) * state.rowHeight}px`;
    rows.push(bottom);
    $("models-body").replaceChildren(...rows);
    if (last > first) {
      const measured = rows[1].getBoundingClientRect().height;
      if (measured > 0 && Math.abs(measured - state.rowHeight) > 0.5) { state.rowHeight = measured; scheduleRender(); }
    }
    if (refocus) {
      const again = $("models-body").querySelector(`button[data-action="${refocus[0]}"][data-key="${CSS.escape(refocus[1])}"]`);
      if (again) again.focus();
    }
    document.body.dataset.rendered = String(total);
    state.visibleKeys = new Set(state.filtered.slice(first, last));
    const timings = state.timings;
    if (timings.firstFull === null && state.listLoaded) timings.firstFull = performance.now();
    if (timings.pendingWork !== null) {
      recordUpdate(timings.pendingWork + performance.now() - started);
      timings.pendingWork = null;
    }
  }
  function recordUpdate(ms) {
    const updates = state.timings.updates;
    updates.push(ms);
    if (updates.length > 1000) updates.shift();
  }
  $("models-scroll").addEventListener("scroll", scheduleRender, { passive: true });
  for (const id of ["search", "filter-state", "filter-namespace", "filter-server"]) {
    $(id).addEventListener("input", () => { state.filterNeeded = true; scheduleRender(); });
  }

  // -- actions --------------------------------------------------------------------------------
  function pathOf(key) {
    const [namespace, name] = key.split("/");
    return [`/api/v1/models/${encodeURIComponent(name)}`, `?namespace=${encodeURIComponent(namespace)}`];
  }
  async function written(what, response) {
    const commit = response.headers.get("X-Git-Commit");
    notice(`${what} in commit `, commitNode(commit), ".");
  }
  $("models-body").addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const key = button.dataset.key;
    const model = state.models.get(key);
    const [path, query] = pathOf(key);
    try {
      if (button.dataset.action === "refresh") {
        const response = await api(`${path}/refresh${query}`, { method: "POST" });
        upsert(await response.clone().json());
        scheduleRender();
        await written(`Refresh of ${key} requested`, response);
      } else if (button.dataset.action === "delete") {
        const label = model ? `${key} (${model.modelName}:${model.tag})` : key;
        if (!window.confirm(`Delete the model ${label}? Its file is removed from the repository in a commit, and its weights are pruned from Ollama.`)) {
          notice(`Delete of ${key} cancelled.`);
          return;
        }
        const response = await api(`${path}${query}`, { method: "DELETE" });
        await written(`${key} deleted`, response);
      }
    } catch (error) {
      notice(`${button.dataset.action === "refresh" ? "Refresh" : "Delete"} of ${key} failed: ${error.message}`);
    }
  });

  function fieldProblem(input, label, rule) {
    const value = input.value;
    if (!value) return `${label} is required.`;
    if (rule) {
      if (rule.maxLength && value.length > rule.maxLength) return `${label} is longer than ${rule.maxLength} characters.`;
      if (rule.pattern && !new RegExp(rule.pattern).test(value)) return `${label} ${JSON.stringify(value)} does not match ${rule.pattern}.`;
    }
    return "";
  }
  $("add-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("add-name"), tag = $("add-tag");
    const rules = state.patterns || {};
    const problem = fieldProblem(name, "Name", rules.name) || fieldProblem(tag, "Tag", rules.tag);
    name.dataset.touched = tag.dataset.touched = "1";
    $("add-error").textContent = problem;
    if (problem) { (fieldProblem(name, "Name", rules.name) ? name : tag).focus(); return; }
    try {
      const response = await api("/api/v1/models", { method: "POST", body: JSON.stringify({ name: name.value, tag: tag.value }) });
      const view = await response.clone().json();
      upsert(view);
      scheduleRender();
      await written(`${view.namespace}/${view.name} (${view.modelName}:${view.tag}) added`, response);
      name.value = tag.value = "";
      delete name.dataset.touched; delete tag.dataset.touched;
    } catch (error) {
      $("add-error").textContent = error.message;
    }
  });
  async function loadPatterns() {
    // The model file schema the API validates with, from the document it serves: one source of truth.
    try {
      const document = await getJson("/api/v1/openapi.json");
      const properties = document.components.schemas.ModelFile.properties;
      state.patterns = { name: properties.name, tag: properties.tag };
      // Checked in fieldProblem (the pattern attribute would take the schema's regular expression
      // with the `v` flag, which reads it differently).
      for (const [id, rule] of [["add-name", properties.name], ["add-tag", properties.tag]]) {
        if (rule.maxLength) $(id).maxLength = rule.maxLength;
      }
    } catch (_) { /* the API still validates */ }
  }

  // -- reading everything -----------------------------------------------------------------------
  async function loadModels() {
    const body = await getJson("/api/v1/models?namespace=*");
    replaceAll(body.items);
    state.listLoaded = true;
    scheduleRender();
  }
  async function loadHistory() {
    try { renderHistory((await getJson("/api/v1/history")).items); } catch (_) { /* shown at the next read */ }
  }
  async function loadServers() {
    renderServers((await getJson("/api/v1/servers")).items);
  }
  // While a read is in flight, events wait: applied after it, in order, they take the page from
  // what the read saw to now (applied before it, the read's older answer would undo them).
  async function guarded(read) {
    state.loading = (state.loading || 0) + 1;
    try { await read(); } finally {
      state.loading -= 1;
      if (!state.loading) {
        const pending = state.pendingEvents; state.pendingEvents = [];
        pending.forEach(apply);
      }
    }
  }
  function reloadAll() {
    return guarded(async () => {
      const [status] = await Promise.all([getJson("/api/v1/status"), loadModels(), loadHistory(), loadServers()]);
      renderStatus(status);
    });
  }

  // -- live: the events stream, polling while it is down ---------------------------------------------
  function apply(event) {
    if (state.loading) { state.pendingEvents.push(event); return; }
    const data = event.data ? JSON.parse(event.data) : {};
    switch (event.type) {
      case "hello":
        if (data.heartbeat) state.heartbeat = data.heartbeat;
        if (event.id) reloadAll().catch(() => {});
        break;
      case "reset": reloadAll().catch(() => {}); break;
      case "models": {
        const started = performance.now();
        data.items.forEach(upsert);
        if (state.filterNeeded || state.headNeeded || state.renderQueued) {
          // The rows shown may change: render the window again (at the next frame).
          state.timings.pendingWork = (state.timings.pendingWork || 0) + performance.now() - started;
          scheduleRender();
        } else {
          // Only these models changed (a progress update, most often): replace their rows if in
          // view; a model out of view (scrolled away or filtered out) changes nothing on screen.
          for (const view of data.items) if (state.visibleKeys.has(keyOf(view))) replaceRow(keyOf(view));
          recordUpdate(performance.now() - started);
        }
        break;
      }
      case "removed": data.items.forEach(remove); scheduleRender(); break;
      case "status": renderStatus(data); break;
      case "servers": renderServers(data.items); break;
      case "cycle-started": cycleStarted(data); break;
      case "cycle-ended": cycleEnded(data); break;
      default: break;
    }
  }
  function setConnection(mode, text) {
    const node = $("connection");
    node.dataset.state = mode;
    node.textContent = text;
    document.body.dataset.connection = mode;
  }
  function startPolling() {
    if (state.polling) return;
    setConnection("polling", "live updates lost: polling");
    reloadAll().catch(() => {});
    state.polling = setInterval(() => reloadAll().catch(() => {}), POLL_MS);
  }
  function stopPolling() {
    if (state.polling) { clearInterval(state.polling); state.polling = null; }
  }

  async function follow() {
    const controller = new AbortController();
    state.streamAbort = controller;
    const headers = { Accept: "text/event-stream" };
    if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
    const response = await api("/api/v1/events", { headers, signal: controller.signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => controller.abort(), state.heartbeat * 3000);
    };
    arm();
    stopPolling();
    setConnection("live", "live");
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        arm();
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
          const event = { type: "message", data: "", id: null };
          const data = [];
          for (const line of block.split("\n")) {
            if (!line || line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") event.type = value;
            else if (field === "data") data.push(value);
            else if (field === "id") event.id = value;
          }
          if (event.id) state.lastEventId = event.id;
          if (!data.length && event.type === "message") continue;
          event.data = data.join("\n");
          apply(event);
        }
      }
    } finally {
      clearTimeout(watchdog);
    }
  }

  let generation = 0;
  async function live(myGeneration) {
    let attempt = 0;
    while (myGeneration === generation) {
      try {
        await follow();
        attempt = 0; // it ended cleanly (a server restart or a dropped reader): come back at once
      } catch (error) {
        if (error.status === 401) return; // waits for the key dialog, which restarts
        attempt++;
      }
      if (myGeneration !== generation) return;
      startPolling();
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)]));
    }
  }

  function restart() {
    generation++;
    if (state.streamAbort) state.streamAbort.abort();
    stopPolling();
    loadPatterns();
    live(generation); // its first event (hello) reads everything, after the stream is open

  }
  // A page left for another keeps its stream open while the browser holds it in its back-forward
  // cache (minutes), and the server has a bounded number of streams: let it go, and come back live
  // if the page is shown again.
  window.addEventListener("pagehide", () => {
    generation++;
    if (state.streamAbort) state.streamAbort.abort();
    stopPolling();
  });
  window.addEventListener("pageshow", (event) => { if (event.persisted) restart(); });
  // For tests and the curious: what the page holds.
  window.ollamaGitops = { state, apply, reconnect: () => state.streamAbort && state.streamAbort.abort() };
  restart();
})();
