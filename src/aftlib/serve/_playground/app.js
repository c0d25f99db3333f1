// aftlib playground: runs a topology through the server's own OpenAI-compatible API and shows every
// layer's drafts as they are written. Plain ES2020, no framework, nothing fetched from elsewhere.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"),
    key: $("key"),
    status: $("status"),
    form: $("form"),
    prompt: $("prompt"),
    send: $("send"),
    stop: $("stop"),
    error: $("error"),
    answer: $("answer"),
    answerMeta: $("answer-meta"),
    usage: $("usage"),
    layers: $("layers"),
  };
  const KEY_STORE = "aftlib.playground.key";
  const MODEL_STORE = "aftlib.playground.model";
  // Relative to the page, so the playground also works behind a proxy that serves it under a prefix.
  const API = new URL("v1/", document.baseURI);

  let controller = null; // the AbortController of the run under way
  let run = null; // what the run under way has shown so far

  // ---- small utilities -----------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setState(state, text) {
    document.body.dataset.state = state;
    ui.status.textContent = text;
  }

  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.textContent = "";
    ui.error.hidden = true;
  }

  function headers(json) {
    const out = {};
    if (json) out["Content-Type"] = "application/json";
    const key = ui.key.value.trim();
    if (key) out.Authorization = `Bearer ${key}`;
    return out;
  }

  function seconds(ms) {
    return `${(ms / 1000).toFixed(1)} s`;
  }

  function count(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : "–";
  }

  // The OpenAI error message of a failed response: {"error": {"message": ...}}, or the body as text.
  async function errorOf(response) {
    const text = await response.text();
    let message = text.trim() || response.statusText;
    try {
      const body = JSON.parse(text);
      if (body && body.error) {
        message = typeof body.error === "string" ? body.error : body.error.message || JSON.stringify(body.error);
      }
    } catch (_) {
      // not JSON: keep the text
    }
    return `${response.status} ${response.statusText}: ${message}`.replace(/: $/, "");
  }

  function stick(box) {
    return box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  }

  function append(box, text) {
    const atEnd = stick(box);
    box.append(text);
    if (atEnd) box.scrollTop = box.scrollHeight;
  }

  // ---- models --------------------------------------------------------------------------------------

  let listing = 0; // only the latest listing fills the select (an older answer may come back later)

  async function loadModels() {
    const mine = ++listing;
    const wanted = ui.model.value || new URLSearchParams(location.search).get("model") ||
      sessionStorage.getItem(MODEL_STORE);
    let response;
    try {
      response = await fetch(new URL("models", API), { headers: headers(false) });
    } catch (err) {
      if (mine === listing) showError(`Cannot reach the server: ${err.message}`);
      return;
    }
    if (mine !== listing) return;
    if (!response.ok) {
      ui.model.replaceChildren(el("option", "", "(no models)"));
      showError(await errorOf(response));
      return;
    }
    clearError();
    const body = await response.json();
    if (mine !== listing) return;
    const ids = (body.data || []).map((m) => m.id);
    ui.model.replaceChildren(...ids.map((id) => {
      const option = el("option", "", id);
      option.value = id;
      return option;
    }));
    if (wanted && ids.includes(wanted)) ui.model.value = wanted;
    if (!ids.length) showError("The server lists no models.");
  }

  // ---- layout from the topology event ---------------------------------------------------------------

  function layerLabel(layer) {
    return run && layer === run.finalLayer ? `Final · layer ${layer}` : `Layer ${layer}`;
  }

  function ensureLayer(layer) {
    let row = run.layers.get(layer);
    if (row) return row;
    const section = el("section", "layer");
    section.dataset.layer = String(layer);
    const head = el("div", "layer-head");
    const title = el("h2", "", layerLabel(layer));
    const meta = el("span", "meta", "waiting");
    head.append(title, meta);
    const agents = el("div", "agents");
    section.append(head, agents);
    // keep rows in layer order even when one appears late
    const after = [...run.layers.keys()].filter((k) => k > layer).sort((a, b) => a - b)[0];
    const finalRow = ui.layers.querySelector(".final-row");
    ui.layers.insertBefore(section, after === undefined ? finalRow : run.layers.get(after).section);
    row = { section, title, meta, agents, columns: new Map(), finished: false };
    run.layers.set(layer, row);
    return row;
  }

  function ensureAgent(layer, name, samples) {
    const row = ensureLayer(layer);
    let column = row.columns.get(name);
    if (!column) {
      const node = el("div", "agent");
      node.dataset.agent = name;
      if (layer === run.finalLayer && name === run.final) node.classList.add("final");
      const head = el("div", "agent-head");
      const meta = el("span", "meta", "");
      head.append(el("span", "name", name), meta);
      node.append(head);
      row.agents.append(node);
      column = { node, meta, samples: new Map() };
      row.columns.set(name, column);
    }
    for (let i = 0; i < (samples || 0); i += 1) ensureSample(layer, name, i);
    return column;
  }

  function ensureSample(layer, name, index) {
    const column = ensureAgent(layer, name, 0);
    let sample = column.samples.get(index);
    if (sample) return sample;
    const node = el("div", "sample");
    node.dataset.index = String(index);
    const head = el("div", "sample-head");
    const state = el("span", "state", `sample ${index}`);
    const meta = el("span", "meta", "");
    head.append(state, meta);
    const text = el("pre", "text");
    node.append(head, text);
    // samples stacked in index order
    const after = [...column.samples.keys()].filter((k) => k > index).sort((a, b) => a - b)[0];
    column.node.insertBefore(node, after === undefined ? null : column.samples.get(after).node);
    sample = { node, meta, text };
    column.samples.set(index, sample);
    column.meta.textContent = column.samples.size > 1 ? `n=${column.samples.size}` : "";
    return sample;
  }

  function layout(event) {
    run.final = event.final;
    for (const layer of event.layers || []) {
      for (const agent of layer.agents || []) ensureAgent(layer.layer, agent.name, agent.samples);
    }
    run.finalLayer = (event.layers || []).length;
    ui.answerMeta.textContent = event.final ? `by ${event.final}` : "";
    // The final agent gets a slim row of its own: its text is the answer, shown in the answer panel.
    const section = el("section", "layer final-row");
    section.dataset.layer = String(run.finalLayer);
    const head = el("div", "layer-head");
    run.finalMeta = el("span", "meta", "waits for the last layer");
    head.append(el("h2", "", `Final · ${event.final}`), run.finalMeta);
    section.append(head);
    ui.layers.append(section);
    for (const [layer, row] of run.layers) row.title.textContent = layerLabel(layer);
  }

  // ---- events --------------------------------------------------------------------------------------

  function onAftlib(event) {
    switch (event.type) {
      case "topology":
        layout(event);
        break;
      case "delta": {
        // The answer's own text also comes as standard content chunks; show it once, in the answer.
        if (event.is_answer) break;
        const sample = ensureSample(event.layer, event.agent, event.index);
        sample.node.classList.add("live");
        append(sample.text, event.text);
        const row = run.layers.get(event.layer);
        if (!row.finished) row.meta.textContent = "writing…";
        if (run.phase !== event.layer) {
          run.phase = event.layer;
          // follow the run down the layers, unless the row is already in view
          run.layers.get(event.layer).section.scrollIntoView({ block: "nearest", behavior: "smooth" });
          setState("running", `layer ${event.layer}: writing · ${seconds(performance.now() - run.start)}`);
        }
        break;
      }
      case "candidate": {
        if (event.layer >= run.finalLayer) {
          run.answerTokens = event.completion_tokens; // the final agent's answer: shown in its own panel
          if (run.finalMeta) run.finalMeta.textContent = `answered · ${count(event.completion_tokens)} tokens`;
          break;
        }
        const sample = ensureSample(event.layer, event.agent, event.index);
        sample.node.classList.remove("live");
        sample.node.classList.add("done");
        const reason = event.finish_reason ? ` · ${event.finish_reason}` : "";
        sample.meta.textContent = `${count(event.completion_tokens)} tok${reason}`;
        break;
      }
      case "layer": {
        const row = ensureLayer(event.layer);
        row.finished = true;
        const u = event.usage || {};
        row.meta.textContent =
          `${event.candidates} candidates · ${count(u.prompt_tokens)} prompt` +
          (u.cached_tokens ? ` (${count(u.cached_tokens)} cached)` : "") +
          ` · ${count(u.completion_tokens)} completion tokens`;
        break;
      }
      default:
        break; // newer event types: ignore
    }
  }

  function onUsage(usage) {
    const body = ui.usage.tBodies[0];
    const rows = (usage.aftlib_layers || []).map((u) => {
      const tr = el("tr");
      const label = u.layer === run.finalLayer ? `final (${u.layer})` : `layer ${u.layer}`;
      tr.append(el("th", "", label), el("td", "", count(u.prompt_tokens)),
        el("td", "", count(u.cached_tokens)), el("td", "", count(u.completion_tokens)));
      tr.firstChild.scope = "row";
      return tr;
    });
    body.replaceChildren(...rows);
    const cached = (usage.prompt_tokens_details || {}).cached_tokens;
    const cells = ui.usage.tFoot.rows[0].cells;
    cells[1].textContent = count(usage.prompt_tokens);
    cells[2].textContent = count(cached);
    cells[3].textContent = count(usage.completion_tokens);
  }

  function onChunk(chunk) {
    if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
    if (chunk.aftlib) {
      onAftlib(chunk.aftlib);
      return;
    }
    for (const choice of chunk.choices || []) {
      const text = choice.delta && choice.delta.content;
      if (text) {
        if (run.firstToken === null) {
          run.firstToken = performance.now() - run.start;
          setState("running", `answering · first token after ${seconds(run.firstToken)}`);
          if (run.finalMeta) run.finalMeta.textContent = "writing the answer →";
        }
        append(ui.answer, text);
      }
      if (choice.finish_reason) run.finish = choice.finish_reason;
    }
    if (chunk.usage) onUsage(chunk.usage);
  }

  // Server-sent events from a fetch body: yields each event's data (comments and other fields skipped).
  async function* events(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const blank = /\r\n\r\n|\n\n|\r\r/;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let match;
        while ((match = blank.exec(buffer)) !== null) {
          const block = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          const data = block.split(/\r\n|\n|\r/)
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
            .join("\n");
          if (data) yield data;
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  // ---- a run ---------------------------------------------------------------------------------------

  function reset() {
    clearError();
    ui.answer.textContent = "";
    ui.answerMeta.textContent = "";
    ui.layers.replaceChildren();
    ui.usage.tBodies[0].replaceChildren();
    for (const cell of [...ui.usage.tFoot.rows[0].cells].slice(1)) cell.textContent = "–";
    run = {
      layers: new Map(), final: null, finalLayer: Infinity, phase: null,
      finalMeta: null, start: performance.now(), firstToken: null, finish: null, answerTokens: null, done: false,
    };
  }

  async function send() {
    const prompt = ui.prompt.value;
    const model = ui.model.value;
    if (controller) return;
    if (!model) {
      showError("Pick a model first.");
      return;
    }
    if (!prompt.trim()) {
      showError("Type a prompt first.");
      ui.prompt.focus();
      return;
    }
    reset();
    sessionStorage.setItem(MODEL_STORE, model);
    controller = new AbortController();
    ui.send.disabled = true;
    ui.stop.disabled = false;
    setState("running", "starting…");
    const request = {
      model,
      messages: [{ role: "user", content: prompt }],
      stream: true,
      stream_options: { include_usage: true, aftlib_events: true },
    };
    try {
      const response = await fetch(new URL("chat/completions", API), {
        method: "POST",
        headers: headers(true),
        body: JSON.stringify(request),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorOf(response));
      for await (const data of events(response.body)) {
        if (data === "[DONE]") {
          run.done = true;
          break;
        }
        onChunk(JSON.parse(data));
      }
      if (!run.done) throw new Error("The stream ended before the answer was complete.");
      const took = performance.now() - run.start;
      const first = run.firstToken === null ? "" : ` · first answer token ${seconds(run.firstToken)}`;
      const parts = [run.final && `by ${run.final}`, run.answerTokens === null ? null : `${count(run.answerTokens)} tok`, run.finish];
      ui.answerMeta.textContent = parts.filter((p) => p).join(" · ");
      setState("done", `done in ${seconds(took)}${first}`);
    } catch (err) {
      if (err.name === "AbortError") {
        setState("stopped", `stopped after ${seconds(performance.now() - run.start)}`);
      } else {
        showError(err.message);
        setState("error", "failed");
      }
      const ended = err.name === "AbortError" ? "stopped" : "failed";
      if (run.finalMeta && run.answerTokens === null) run.finalMeta.textContent = ended;
      for (const row of run.layers.values()) {
        if (!row.finished) row.meta.textContent = ended;
        for (const column of row.columns.values()) {
          for (const sample of column.samples.values()) sample.node.classList.remove("live");
        }
      }
    } finally {
      controller = null;
      ui.send.disabled = false;
      ui.stop.disabled = true;
    }
  }

  // ---- wiring --------------------------------------------------------------------------------------

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      send();
    }
  });
  ui.stop.addEventListener("click", () => {
    if (controller) controller.abort();
  });
  ui.key.value = sessionStorage.getItem(KEY_STORE) || "";
  let listedWith = ui.key.value.trim();
  ui.key.addEventListener("change", () => {
    const key = ui.key.value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    if (key !== listedWith) {
      listedWith = key;
      loadModels();
    }
  });
  loadModels();
})();
