// The speech part of the page: upload a recording to a speech run, see its prediction, its mel spectrogram and the
// gates of the LSTM reading it, drawn on two canvases with one time axis (frame k at the same x in both).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const GATES = ["input", "forget", "output", "candidate", "cell", "hidden"];
  const BOUNDED = new Set(["input", "forget", "output"]); // sigmoids: 0..1
  const state = { trace: null, frameWidth: 4 };

  // magma-like ramp for the spectrogram, blue-white-red for signed values, white-blue for gates in (0, 1)
  const lerp = (stops, x) => {
    let i = 1;
    while (i < stops.length - 1 && stops[i][0] < x) i += 1;
    const [x0, c0] = stops[i - 1];
    const [x1, c1] = stops[i];
    const w = Math.min(1, Math.max(0, (x - x0) / (x1 - x0)));
    return c0.map((v, j) => Math.round(v + w * (c1[j] - v)));
  };
  const HEAT = [[0, [0, 0, 4]], [0.3, [81, 18, 124]], [0.6, [183, 55, 121]], [0.85, [252, 137, 97]], [1, [252, 253, 191]]];
  const SEQ = [[0, [247, 249, 252]], [0.3, [186, 214, 234]], [0.65, [66, 133, 192]], [1, [12, 44, 97]]];
  const DIV = [[0, [33, 86, 160]], [0.5, [246, 246, 246]], [1, [168, 30, 36]]];

  function draw(canvas, matrix, rows, colour) {
    // matrix: [frames][rows]; row 0 drawn at the bottom (low bands, unit 0)
    const T = matrix.length;
    const w = state.frameWidth;
    const h = Math.max(2, Math.min(6, Math.floor(240 / rows)));
    canvas.width = T * w;
    canvas.height = rows * h;
    canvas.dataset.frames = String(T);
    canvas.dataset.frameWidth = String(w);
    const ctx = canvas.getContext("2d");
    for (let t = 0; t < T; t += 1) {
      for (let r = 0; r < rows; r += 1) {
        const c = colour(matrix[t][r]);
        ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
        ctx.fillRect(t * w, (rows - 1 - r) * h, w, h);
      }
    }
  }

  function range(matrix) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const row of matrix) for (const v of row) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    return [lo, hi];
  }

  function render() {
    const trace = state.trace;
    if (!trace) return;
    const T = trace.spectrogram.length;
    const room = $("speech-view").clientWidth - 40;
    state.frameWidth = Math.max(1, Math.min(12, Math.floor(room / Math.max(T, 1))));
    const [lo, hi] = range(trace.spectrogram);
    const floor = Math.max(lo, hi - 80); // 80 dB of range, as a spectrogram display usually shows
    draw($("spectrogram"), trace.spectrogram, trace.spectrogram[0].length,
      (v) => lerp(HEAT, (v - floor) / Math.max(hi - floor, 1e-9)));
    const layer = Number($("speech-layer").value);
    const direction = $("speech-direction").value;
    const gate = $("speech-gate").value;
    const entry = trace.layers.find((e) => e.layer === layer && e.direction === direction);
    const matrix = entry[gate];
    const units = matrix[0].length;
    let colour;
    if (BOUNDED.has(gate)) {
      colour = (v) => lerp(SEQ, v);
    } else {
      const [a, b] = range(matrix);
      const bound = Math.max(Math.abs(a), Math.abs(b), 1e-9);
      colour = (v) => lerp(DIV, 0.5 + v / (2 * bound));
    }
    const canvas = $("speech-gates");
    draw(canvas, matrix, units, colour);
    canvas.dataset.layer = String(layer);
    canvas.dataset.direction = direction;
    canvas.dataset.gate = gate;
    $("speech-gates-title").textContent = `layer ${layer}${direction === "forward" ? "" : " (reverse)"}: ${gate}` +
      `${gate === "cell" || gate === "hidden" || gate === "candidate" ? "" : " gate"} · ${units} units × ${T} frames`;
    renderAxis(T, trace.hop_seconds);
  }

  function renderAxis(T, hop) {
    const axis = $("speech-axis");
    axis.replaceChildren();
    axis.style.width = `${T * state.frameWidth}px`;
    const seconds = T * hop;
    const step = seconds > 4 ? 1 : seconds > 1.5 ? 0.25 : 0.1;
    for (let s = 0; s <= seconds + 1e-9; s += step) {
      const tick = document.createElement("span");
      tick.className = "tick";
      tick.style.left = `${(s / hop) * state.frameWidth}px`;
      tick.textContent = `${s.toFixed(step < 1 ? 2 : 0)} s`;
      axis.append(tick);
    }
  }

  function showPrediction(trace) {
    const box = $("speech-prediction");
    const p = trace.prediction;
    const label = document.createElement("strong");
    label.textContent = p.label;
    const headline = document.createElement("div");
    headline.className = "headline";
    headline.append(`${trace.file}: `, label, ` with probability ${(100 * p.probability).toFixed(1)}%`);
    const grid = document.createElement("div");
    grid.className = "bars";
    for (const [name, value] of Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]).slice(0, 10)) {
      const key = document.createElement("span");
      key.textContent = name;
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${(100 * value).toFixed(1)}%`;
      bar.append(fill);
      const text = document.createElement("span");
      text.textContent = `${(100 * value).toFixed(1)}%`;
      grid.append(key, bar, text);
    }
    box.replaceChildren(headline, grid);
  }

  function showTrace(trace) {
    state.trace = trace;
    const layers = [...new Set(trace.layers.map((e) => e.layer))];
    $("speech-layer").replaceChildren(...layers.map((k) => new Option(String(k), String(k))));
    $("speech-layer").value = String(layers[layers.length - 1]);
    const directions = [...new Set(trace.layers.map((e) => e.direction))];
    $("speech-direction").replaceChildren(...directions.map((d) => new Option(d, d)));
    $("speech-direction-label").hidden = directions.length < 2;
    showPrediction(trace);
    $("speech-view").hidden = false;
    render();
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  async function classify() {
    const file = $("speech-file").files[0];
    const button = $("speech-submit");
    if (!file) { showError("choose a recording first (WAV, FLAC or OGG)"); return; }
    const run = $("run-select").value;
    button.disabled = true;
    showError("");
    try {
      const query = new URLSearchParams({ run, filename: file.name });
      const response = await fetch(`/api/speech?${query}`, { method: "POST", body: file });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(`${body.detail || response.statusText} (HTTP ${response.status})`);
      if ($("run-select").value === run) showTrace(body);
    } catch (error) {
      showError(error.message || String(error));
    } finally {
      button.disabled = false;
    }
  }

  function hover(event) {
    const trace = state.trace;
    if (!trace) return;
    const rect = event.target.getBoundingClientRect();
    const scale = event.target.width / rect.width;
    const frame = Math.floor(((event.clientX - rect.left) * scale) / state.frameWidth);
    if (frame < 0 || frame >= trace.spectrogram.length) return;
    const cursor = $("speech-cursor");
    cursor.hidden = false;
    cursor.style.left = `${(frame + 0.5) * state.frameWidth / scale}px`;
    $("speech-cursor-info").textContent = `frame ${frame}, t = ${(frame * trace.hop_seconds).toFixed(3)} s`;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("speech-gate").replaceChildren(...GATES.map((g) => new Option(g, g)));
    $("speech-gate").value = "forget";
    $("speech-submit").addEventListener("click", classify);
    for (const id of ["speech-layer", "speech-direction", "speech-gate"]) $(id).addEventListener("change", render);
    for (const id of ["spectrogram", "speech-gates"]) $(id).addEventListener("mousemove", hover);
    $("run-select").addEventListener("change", () => { $("speech-view").hidden = true; state.trace = null; });
  });
})();
