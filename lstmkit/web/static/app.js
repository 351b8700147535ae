// The page of `lstmkit serve`: pick a run, send it text, and look at every gate and memory cell it computed.
// Plain JavaScript, no build step: one trace is fetched per text and every view is drawn from it locally.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const TASK_NAMES = {
    sentiment: "sentiment", lm: "language model", speech: "speech", sequences: "sequences", adding: "adding",
  };
  const GATE_LABELS = {
    input: "input gate", forget: "forget gate", output: "output gate",
    candidate: "candidate", cell: "memory cell", hidden: "hidden state",
  };
  const SEQUENTIAL = new Set(["input", "forget", "output"]); // in (0, 1)
  const DEFAULT_THRESHOLD = { input: 0.5, forget: 0.5, output: 0.5, candidate: 0.3, hidden: 0.3, cell: 0.3 };
  const DEFAULT_UNITS = 128; // more units than this are offered, not drawn at once
  const MAX_CHIPS = 60;

  const state = {
    runs: [],
    limits: null,
    run: null,
    trace: null,
    layer: 0,
    direction: "forward",
    gate: "hidden",
    unitsCount: null,
    unitsOrder: "index",
    thresholds: { ...DEFAULT_THRESHOLD },
    span: null,
    anchor: null,
    dragging: false,
    focusUnit: null,
    selected: [],
    tokenLabels: [],
    stripTokens: [],
  };

  // --- colours: a sequential ramp for gates in (0, 1), a diverging one around 0 for the rest -------------

  const SEQ_STOPS = [[0, [247, 249, 252]], [0.3, [186, 214, 234]], [0.65, [66, 133, 192]], [1, [12, 44, 97]]];
  const DIV_STOPS = [[0, [33, 86, 160]], [0.25, [130, 173, 214]], [0.5, [246, 246, 246]],
    [0.75, [233, 146, 118]], [1, [168, 30, 36]]];

  function ramp(stops, steps) {
    const colours = [];
    for (let k = 0; k <= steps; k += 1) {
      const x = k / steps;
      let i = 1;
      while (i < stops.length - 1 && stops[i][0] < x) i += 1;
      const [x0, c0] = stops[i - 1];
      const [x1, c1] = stops[i];
      const w = (x - x0) / (x1 - x0);
      const c = c0.map((v, j) => Math.round(v + w * (c1[j] - v)));
      colours.push(`rgb(${c[0]},${c[1]},${c[2]})`);
    }
    return colours;
  }
  const SEQ_RAMP = ramp(SEQ_STOPS, 200);
  const DIV_RAMP = ramp(DIV_STOPS, 200);

  function makeScale(gate, matrix) {
    if (SEQUENTIAL.has(gate)) {
      return { lo: 0, hi: 1, ramp: SEQ_RAMP, colour: (v) => SEQ_RAMP[Math.round(clamp(v, 0, 1) * 200)] };
    }
    // The cell is unbounded: symmetric around 0 by its largest |value| on this layer, so 0 stays white.
    const hi = gate === "cell" ? Math.max(maxAbs(matrix), 1e-6) : 1;
    return {
      lo: -hi, hi, ramp: DIV_RAMP,
      colour: (v) => DIV_RAMP[Math.round((clamp(v / hi, -1, 1) + 1) * 100)],
    };
  }

  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

  function maxAbs(matrix) {
    let m = 0;
    for (const row of matrix) for (const v of row) m = Math.max(m, Math.abs(v));
    return m;
  }

  // --- talking to the API ----------------------------------------------------------------------------------

  async function errorLine(response) {
    let detail = response.statusText || "request failed";
    try {
      const body = await response.json();
      if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON: keep the status text */ }
    return `${detail} (HTTP ${response.status})`;
  }

  // The response to a GET (no body) or a JSON POST, or an Error with the server's one-line reason.
  async function request(path, body) {
    const options = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    };
    let response;
    try {
      response = await fetch(path, options);
    } catch (_) {
      throw new Error("cannot reach the server; is `lstmkit serve` still running?");
    }
    if (!response.ok) throw new Error(await errorLine(response));
    return response;
  }

  async function api(path, body) {
    return (await request(path, body)).json();
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message || "";
    el.title = message || "";
    el.hidden = !message;
  }

  async function busy(buttons, label, work) {
    const saved = buttons.map((b) => b.textContent);
    buttons.forEach((b) => { b.disabled = true; });
    buttons[0].textContent = label;
    showError("");
    try {
      await work();
    } catch (error) {
      showError(error.message || String(error));
    } finally {
      buttons.forEach((b, i) => { b.disabled = false; b.textContent = saved[i]; });
    }
  }

  // --- runs ------------------------------------------------------------------------------------------------

  async function init() {
    wire();
    try {
      const [runs, health] = await Promise.all([api("/api/runs"), api("/api/health")]);
      state.runs = runs;
      state.limits = health.limits;
      const select = $("run-select");
      for (const run of runs) {
        const option = document.createElement("option");
        option.value = run.name;
        option.textContent = `${run.name} — ${TASK_NAMES[run.task] || run.task}`;
        select.append(option);
      }
      $("length-input").max = String(state.limits.max_generate);
      if (runs.length) chooseRun(runs[0].name);
    } catch (error) {
      showError(error.message);
    }
  }

  function describeRun(run) {
    const parts = [];
    if (run.level) parts.push(`${run.level} level`);
    if (run.num_layers) parts.push(`${run.num_layers} layer${run.num_layers > 1 ? "s" : ""} × ${run.hidden_size} units`);
    if (run.directions.length > 1) parts.push("bidirectional");
    if (run.labels) parts.push(`labels: ${run.labels.join(", ")}`);
    if (run.members) parts.push(`ensemble of ${run.members}: gates of the first, prediction of all`);
    return parts.join(" · ");
  }

  function chooseRun(name) {
    const run = state.runs.find((r) => r.name === name);
    state.run = run;
    $("run-select").value = name;
    $("run-info").textContent = describeRun(run);
    $("sentiment-panel").hidden = run.task !== "sentiment";
    $("lm-panel").hidden = run.task !== "lm";
    $("speech-panel").hidden = run.task !== "speech"; // its view: speech.js
    $("unsupported-panel").hidden = ["sentiment", "lm", "speech"].includes(run.task);
    $("prediction").hidden = true;
    $("view").hidden = true;
    $("generated-text").replaceChildren();
    state.trace = null;
    showError("");
  }

  // --- reading a text: sentiment reviews, language-model prompts and generations ------------------------

  async function readReview() {
    const text = $("text-input").value;
    await busy([$("submit")], "Reading…", async () => {
      await traceText(text);
    });
  }

  async function traceText(text) {
    const run = state.run;
    const trace = await api("/api/trace", { run: run.name, text, decimals: 3 });
    if (state.run !== run) return; // the user moved on to another run meanwhile
    showTrace(trace);
  }

  // The trace of a long generation keeps its end: the tokens the server allows, counted as it counts them.
  function lastTokens(text, level, maxTokens) {
    if (level === "char") {
      const chars = Array.from(text);
      return chars.length > maxTokens ? { text: chars.slice(-maxTokens).join(""), cut: true } : { text, cut: false };
    }
    const lines = text.split("\n");
    let count = 0;
    let first = lines.length;
    while (first > 0) {
      const words = lines[first - 1].split(/\s+/).filter(Boolean).length + 1; // the line's words and its <eos>
      if (count + words > maxTokens) break;
      count += words;
      first -= 1;
    }
    if (first === 0) return { text, cut: false };
    if (first === lines.length) { // one line longer than the limit: its last words
      const words = lines[lines.length - 1].split(/\s+/).filter(Boolean);
      return { text: words.slice(-(maxTokens - 1)).join(" "), cut: true };
    }
    return { text: lines.slice(first).join("\n"), cut: true };
  }

  async function generateText() {
    const run = state.run;
    const prompt = $("prompt-input").value;
    const out = $("generated-text");
    const promptSpan = document.createElement("span");
    promptSpan.className = "prompt";
    promptSpan.textContent = prompt;
    const generated = document.createElement("span");
    generated.className = "generated";
    out.replaceChildren(promptSpan, generated);
    const button = $("generate-button");
    await busy([button, $("trace-button")], "Generating…", async () => {
      const body = {
        run: run.name, prompt,
        length: Number($("length-input").value),
        temperature: Number($("temperature-input").value),
        seed: Number($("seed-input").value),
      };
      const response = await request("/api/generate", body);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let finished = null;
      let count = 0;
      const handle = (line) => {
        if (!line.trim()) return;
        const item = JSON.parse(line);
        if (item.token !== undefined) {
          generated.append(item.token);
          count += 1;
          button.textContent = `Generating… ${count}`;
        } else if (item.done) {
          finished = item.text;
        } else if (item.error) {
          throw new Error(item.error);
        }
      };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline = buffer.indexOf("\n");
        while (newline >= 0) {
          handle(buffer.slice(0, newline));
          buffer = buffer.slice(newline + 1);
          newline = buffer.indexOf("\n");
        }
        out.scrollTop = out.scrollHeight;
      }
      handle(buffer + decoder.decode());
      if (finished === null) throw new Error("the generation stream ended early");
      if (state.run !== run) return;
      button.textContent = "Reading…";
      const part = lastTokens(finished, run.level, state.limits.max_tokens);
      state.cutNote = part.cut ? `Showing the last ${state.limits.max_tokens} tokens of the text (the server's limit).` : "";
      await traceText(part.text);
    });
  }

  async function readPrompt() {
    await busy([$("trace-button"), $("generate-button")], "Reading…", async () => {
      state.cutNote = "";
      await traceText($("prompt-input").value);
    });
  }

  // --- the prediction ----------------------------------------------------------------------------------

  function showToken(token, level) {
    if (level !== "char") return token;
    return token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
  }

  function bars(rows) {
    const grid = document.createElement("div");
    grid.className = "bars";
    for (const [name, p] of rows) {
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = name;
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      bar.append(fill);
      const value = document.createElement("span");
      value.textContent = `${(100 * p).toFixed(1)}%`;
      grid.append(label, bar, value);
    }
    return grid;
  }

  function renderPrediction(trace) {
    const box = $("prediction");
    const p = trace.prediction;
    box.replaceChildren();
    if (!p) { box.hidden = true; return; }
    const headline = document.createElement("div");
    headline.className = "headline";
    if (trace.task === "sentiment") {
      const label = document.createElement("strong");
      label.textContent = p.label;
      headline.append("Prediction: ", label, ` with probability ${(100 * p.probability).toFixed(1)}%`);
      const rows = Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]);
      box.append(headline, bars(rows));
    } else {
      headline.textContent = "Most likely next tokens";
      box.append(headline, bars(p.next.map((n) => [`“${showToken(n.token, trace.level)}”`, n.probability])));
    }
    box.hidden = false;
  }

  // --- the gate view -----------------------------------------------------------------------------------

  function showTrace(trace) {
    state.trace = trace;
    state.span = null;
    state.anchor = null;
    state.focusUnit = null;
    renderPrediction(trace);

    const layers = $("layer-select");
    const keepLayer = layers.options.length === trace.num_layers ? Number(layers.value) : trace.num_layers - 1;
    layers.replaceChildren(...Array.from({ length: trace.num_layers }, (_, k) => {
      const option = document.createElement("option");
      option.value = String(k);
      option.textContent = k === trace.num_layers - 1 && k > 0 ? `${k} (top)` : String(k);
      return option;
    }));
    layers.value = String(keepLayer);
    state.layer = keepLayer;

    const directions = $("direction-select");
    directions.replaceChildren(...trace.directions.map((d) => {
      const option = document.createElement("option");
      option.value = d;
      option.textContent = d;
      return option;
    }));
    if (!trace.directions.includes(state.direction)) state.direction = trace.directions[0];
    directions.value = state.direction;
    $("direction-label").hidden = trace.directions.length < 2;

    const units = $("units-count");
    units.max = String(trace.hidden_size);
    if (state.unitsCount === null || state.unitsCount > trace.hidden_size) {
      state.unitsCount = Math.min(trace.hidden_size, DEFAULT_UNITS);
    }
    units.value = String(state.unitsCount);
    state.thresholds.cell = DEFAULT_THRESHOLD.cell;

    $("view").hidden = false;
    render();
  }

  function currentMatrix() {
    const trace = state.trace;
    const entry = trace.layers.find((e) => e.layer === state.layer && e.direction === state.direction);
    return entry[state.gate];
  }

  // Units of the matrix drawn: hidden_size, but proj_size for h when the LSTM projects it (LSTMP).
  function unitCount(matrix) {
    return matrix.length ? matrix[0].length : state.trace.hidden_size;
  }

  function shownUnits(matrix) {
    const H = unitCount(matrix);
    let order = Array.from({ length: H }, (_, u) => u);
    if (state.unitsOrder === "variance") {
      const T = matrix.length;
      const spread = order.map((u) => {
        let sum = 0;
        let squares = 0;
        for (let t = 0; t < T; t += 1) { sum += matrix[t][u]; squares += matrix[t][u] ** 2; }
        return squares / T - (sum / T) ** 2;
      });
      order.sort((a, b) => spread[b] - spread[a] || a - b);
    }
    order = order.slice(0, state.unitsCount);
    return order;
  }

  function render() {
    if (!state.trace) return;
    const matrix = currentMatrix();
    const scale = makeScale(state.gate, matrix);
    state.scale = scale;
    syncThreshold(matrix);
    renderLegend(scale);
    const units = shownUnits(matrix);
    renderHeatmap(matrix, units, scale);
    const T = state.trace.tokens.length;
    const H = unitCount(matrix);
    $("heatmap-info").textContent = `${T} tokens × ${units.length} units`;
    const notes = [];
    if (units.length < H) {
      const which = state.unitsOrder === "variance" ? "the most variable" : "the first";
      notes.push(`Showing ${which} ${units.length} of ${H} units; change “Units shown” or “Order” to see others.`);
    }
    if (state.cutNote && state.run.task === "lm") notes.push(state.cutNote);
    $("units-note").textContent = notes.join(" ");
    $("units-note").hidden = notes.length === 0;
    renderStrip();
    updateSelection();
  }

  function renderLegend(scale) {
    const legend = $("legend");
    const stops = [];
    for (let k = 0; k <= 10; k += 1) stops.push(scale.ramp[k * 20]);
    const bar = document.createElement("div");
    bar.className = "ramp";
    bar.style.background = `linear-gradient(to right, ${stops.join(", ")})`;
    const lo = document.createElement("span");
    lo.textContent = formatValue(scale.lo);
    const hi = document.createElement("span");
    hi.textContent = formatValue(scale.hi);
    const name = document.createElement("span");
    name.textContent = `${GATE_LABELS[state.gate]}:`;
    legend.replaceChildren(name, lo, bar, hi);
  }

  const formatValue = (v) => (Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));

  function renderHeatmap(matrix, units, scale) {
    const heatmap = $("heatmap");
    const trace = state.trace;
    const level = trace.level;
    const labelWidth = level === "char" ? 44 : 118;
    const room = heatmap.parentElement.clientWidth - 2 * 18 - labelWidth - 18; // the view's width, less padding
    const cw = clamp(Math.floor(room / Math.max(units.length, 1)), 4, 22);
    heatmap.style.setProperty("--cw", `${cw}px`);
    heatmap.style.setProperty("--label", `${labelWidth}px`);
    heatmap.dataset.layer = String(state.layer);
    heatmap.dataset.direction = state.direction;
    heatmap.dataset.gate = state.gate;
    heatmap.dataset.cells = String(trace.tokens.length * units.length);

    // The same tokens and columns as drawn: recolour the cells in place (a large heatmap redraws much faster).
    const layout = `${units.join(",")}|${cw}`;
    if (state.drawn && state.drawn.trace === trace && state.drawn.layout === layout) {
      const cells = state.drawn.cells;
      const N = units.length;
      for (let t = 0; t < trace.tokens.length; t += 1) {
        const values = matrix[t];
        for (let i = 0; i < N; i += 1) cells[t * N + i].style.background = scale.colour(values[units[i]]);
      }
      return;
    }

    const fragment = document.createDocumentFragment();
    const head = document.createElement("div");
    head.className = "hm-row hm-head";
    const corner = document.createElement("div");
    corner.className = "hm-corner";
    corner.textContent = "unit →";
    head.append(corner);
    const every = Math.max(1, Math.ceil(22 / cw));
    for (let i = 0; i < units.length; i += 1) {
      const label = document.createElement("div");
      label.className = "hm-unit";
      label.dataset.unit = String(units[i]);
      if (i % every === 0 && (units.length - i) * cw >= 16) { // a label that would spill past the end is left out
        const text = document.createElement("span");
        text.textContent = String(units[i]);
        label.append(text);
      }
      head.append(label);
    }
    fragment.append(head);

    state.tokenLabels = [];
    const cells = [];
    trace.tokens.forEach((token, t) => {
      const row = document.createElement("div");
      row.className = "hm-row";
      const label = document.createElement("div");
      label.className = trace.unknown[t] ? "hm-token unknown" : "hm-token";
      label.dataset.token = String(t);
      label.textContent = showToken(token, level);
      row.append(label);
      state.tokenLabels.push(label);
      const values = matrix[t];
      for (const u of units) {
        const cell = document.createElement("div");
        cell.className = "hm-cell";
        cell.dataset.token = String(t);
        cell.dataset.unit = String(u);
        cell.style.background = scale.colour(values[u]);
        row.append(cell);
        cells.push(cell);
      }
      fragment.append(row);
    });
    heatmap.replaceChildren(fragment);
    state.drawn = { trace, layout, cells };
  }

  function renderStrip() {
    const strip = $("token-strip");
    const trace = state.trace;
    if (state.stripTrace === trace) return;
    state.stripTrace = trace;
    strip.className = trace.level === "char" ? "char" : "word";
    const fragment = document.createDocumentFragment();
    state.stripTokens = [];
    const endOfLine = trace.level === "char" ? "\n" : "<eos>";  // shown as ↵, then a line break
    trace.tokens.forEach((token, t) => {
      const span = document.createElement("span");
      span.className = trace.unknown[t] ? "tok unknown" : "tok";
      span.dataset.token = String(t);
      span.textContent = token === endOfLine ? "↵" : token;
      fragment.append(span);
      state.stripTokens.push(span);
      if (token === endOfLine) fragment.append("\n");
      else if (trace.level !== "char") fragment.append(" ");
    });
    strip.replaceChildren(fragment);
  }

  // --- the select view (after LSTMVis): units on over a span, and where they are on together elsewhere ---

  function syncThreshold(matrix) {
    const slider = $("threshold");
    const gate = state.gate;
    let hi = 1;
    if (gate === "cell") hi = Math.max(0.1, Math.ceil(maxAbs(matrix) * 10) / 10);
    slider.min = "0";
    slider.max = String(hi);
    slider.step = gate === "cell" && hi > 5 ? "0.05" : "0.01";
    state.thresholds[gate] = clamp(state.thresholds[gate], 0, hi);
    slider.value = String(state.thresholds[gate]);
    $("threshold-value").textContent = state.thresholds[gate].toFixed(2);
  }

  function setSpan(a, b) {
    state.span = [Math.min(a, b), Math.max(a, b)];
    updateSelection();
  }

  function updateSelection() {
    const trace = state.trace;
    const matrix = currentMatrix();
    const threshold = state.thresholds[state.gate];
    const T = trace.tokens.length;
    const H = unitCount(matrix);
    const info = $("selection-info");
    const chips = $("selected-units");
    let units = [];
    let matches = [];
    if (state.span) {
      const [a, b] = state.span;
      const mean = new Map();
      for (let u = 0; u < H; u += 1) {
        let on = true;
        let sum = 0;
        for (let t = a; t <= b && on; t += 1) {
          on = matrix[t][u] >= threshold;
          sum += matrix[t][u];
        }
        if (on) { units.push(u); mean.set(u, sum / (b - a + 1)); }
      }
      units.sort((x, y) => mean.get(y) - mean.get(x) || x - y);
      if (units.length) {
        for (let t = 0; t < T; t += 1) {
          if (t >= a && t <= b) continue;
          if (units.every((u) => matrix[t][u] >= threshold)) matches.push(t);
        }
      }
    }
    state.selected = units;
    const matched = new Set(matches);
    const marks = (el, t) => {
      const inSpan = state.span !== null && t >= state.span[0] && t <= state.span[1];
      el.classList.toggle("in-span", inSpan);
      el.classList.toggle("match", matched.has(t));
    };
    state.tokenLabels.forEach((el, t) => marks(el, t));
    state.stripTokens.forEach((el, t) => marks(el, t));
    const chosen = new Set(units);
    for (const el of $("heatmap").querySelectorAll(".hm-unit")) {
      const u = Number(el.dataset.unit);
      el.classList.toggle("sel", chosen.has(u));
      el.classList.toggle("focus", u === state.focusUnit);
    }
    colourStrip(matrix);

    info.dataset.units = String(units.length);
    info.dataset.matches = String(matches.length);
    chips.replaceChildren();
    if (!state.span) {
      info.textContent = "No span selected.";
      return;
    }
    const [a, b] = state.span;
    const words = trace.tokens.slice(a, b + 1).map((tok) => showToken(tok, trace.level));
    const quoted = trace.level === "char" ? words.join("") : words.join(" ");
    const where = a === b ? `token ${a}` : `tokens ${a}–${b}`;
    const what = `${GATE_LABELS[state.gate]}, layer ${state.layer}${trace.directions.length > 1 ? ` ${state.direction}` : ""}`;
    if (!units.length) {
      info.textContent = `${where} (“${quoted}”): no unit's ${what} stays at or above ${threshold.toFixed(2)} over `
        + "the whole span; lower the threshold or select a shorter span.";
      return;
    }
    const keep = units.length === 1 ? "1 unit keeps its" : `${units.length} units keep their`;
    info.textContent = `${where} (“${quoted}”): ${keep} ${what} at or above `
      + `${threshold.toFixed(2)} over the span; ${units.length === 1 ? "it fires" : "together they fire"} at `
      + `${matches.length} other token${matches.length === 1 ? "" : "s"} (highlighted green). Click a unit to colour `
      + "the text by it.";
    for (const u of units.slice(0, MAX_CHIPS)) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = u === state.focusUnit ? "chip focus" : "chip";
      chip.dataset.unit = String(u);
      chip.textContent = `unit ${u}`;
      chips.append(chip);
    }
    if (units.length > MAX_CHIPS) {
      const more = document.createElement("span");
      more.className = "muted";
      more.textContent = `and ${units.length - MAX_CHIPS} more`;
      chips.append(more);
    }
  }

  function colourStrip(matrix) {
    const u = state.focusUnit;
    state.stripTokens.forEach((el, t) => {
      el.style.background = u === null ? "" : state.scale.colour(matrix[t][u]);
      el.title = u === null ? "" : `unit ${u}: ${matrix[t][u]}`;
    });
  }

  function focusUnit(u) {
    state.focusUnit = state.focusUnit === u ? null : u;
    updateSelection();
  }

  // --- events ------------------------------------------------------------------------------------------

  function tooltipFor(target) {
    const trace = state.trace;
    if (!trace) return null;
    const cell = target.closest(".hm-cell");
    if (cell) {
      const t = Number(cell.dataset.token);
      const u = Number(cell.dataset.unit);
      const value = currentMatrix()[t][u];
      return `“${showToken(trace.tokens[t], trace.level)}” (token ${t}) · unit ${u} · ${GATE_LABELS[state.gate]} ${value}`;
    }
    const label = target.closest(".hm-token");
    if (label) {
      const t = Number(label.dataset.token);
      const unknown = trace.unknown[t] ? " — not in the vocabulary (read as <unk>)" : "";
      return `“${showToken(trace.tokens[t], trace.level)}” (token ${t})${unknown}: click, shift-click or drag to select`;
    }
    const unit = target.closest(".hm-unit");
    if (unit) return `unit ${unit.dataset.unit}: click to colour the text by it`;
    return null;
  }

  function wire() {
    $("run-select").addEventListener("change", (e) => chooseRun(e.target.value));
    $("submit").addEventListener("click", readReview);
    $("generate-button").addEventListener("click", generateText);
    $("trace-button").addEventListener("click", readPrompt);
    $("text-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); readReview(); }
    });
    $("prompt-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generateText(); }
    });
    $("layer-select").addEventListener("change", (e) => { state.layer = Number(e.target.value); render(); });
    $("direction-select").addEventListener("change", (e) => { state.direction = e.target.value; render(); });
    $("gate-select").addEventListener("change", (e) => { state.gate = e.target.value; render(); });
    $("units-order").addEventListener("change", (e) => { state.unitsOrder = e.target.value; render(); });
    $("units-count").addEventListener("change", (e) => {
      if (!state.trace) return;
      const n = Math.round(Number(e.target.value));
      state.unitsCount = clamp(Number.isFinite(n) ? n : DEFAULT_UNITS, 1, state.trace.hidden_size);
      e.target.value = String(state.unitsCount);
      render();
    });
    $("threshold").addEventListener("input", (e) => {
      state.thresholds[state.gate] = Number(e.target.value);
      $("threshold-value").textContent = Number(e.target.value).toFixed(2);
      if (state.trace) updateSelection();
    });
    $("clear-selection").addEventListener("click", () => {
      state.span = null;
      state.anchor = null;
      state.focusUnit = null;
      if (state.trace) updateSelection();
    });

    // Span selection: press on a token (shift extends from the last one), drag to extend, release anywhere.
    const press = (e) => {
      const el = e.target.closest(".hm-token, .tok");
      if (!el || e.button !== 0) return;
      e.preventDefault();
      const t = Number(el.dataset.token);
      if (!(e.shiftKey && state.anchor !== null)) state.anchor = t;
      state.dragging = true;
      setSpan(state.anchor, t);
    };
    const drag = (e) => {
      if (!state.dragging) return;
      const el = e.target.closest(".hm-token, .tok, .hm-cell"); // a drag may wander over the cells of a row
      if (el) setSpan(state.anchor, Number(el.dataset.token));
    };
    for (const id of ["heatmap", "token-strip"]) {
      $(id).addEventListener("mousedown", press);
      $(id).addEventListener("mouseover", drag);
    }
    document.addEventListener("mouseup", () => { state.dragging = false; });

    $("heatmap").addEventListener("click", (e) => {
      const unit = e.target.closest(".hm-unit");
      if (unit) focusUnit(Number(unit.dataset.unit));
    });
    $("selected-units").addEventListener("click", (e) => {
      const chip = e.target.closest(".chip");
      if (chip) focusUnit(Number(chip.dataset.unit));
    });

    const tooltip = $("tooltip");
    $("heatmap").addEventListener("mousemove", (e) => {
      const text = tooltipFor(e.target);
      if (!text) { tooltip.hidden = true; return; }
      tooltip.textContent = text;
      tooltip.hidden = false;
      const x = Math.min(e.clientX + 14, window.innerWidth - tooltip.offsetWidth - 8);
      tooltip.style.left = `${Math.max(4, x)}px`;
      tooltip.style.top = `${e.clientY + 16}px`;
    });
    $("heatmap").addEventListener("mouseleave", () => { tooltip.hidden = true; });

    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(render, 150);
    });
  }

  init();
})();
