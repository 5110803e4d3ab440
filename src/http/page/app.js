// samserve's interactive page. Plain JS, no dependencies: it talks to the public REST API
// like any other client. State is exposed on `window.samserve` for the browser tests.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const HOVER_DEBOUNCE_MS = 25;
  const DEMOS = ["scene1.jpg", "scene2.jpg"];

  const state = {
    models: [],
    model: null,
    imageId: null,
    width: 0,
    height: 0,
    fileName: null,
    bytes: null, // the uploaded file, re-sent when the model changes
    contentType: null,
    points: [], // {x, y, label}
    box: null, // [x0, y0, x1, y1]
    current: null, // {masks, index, prompt}
    history: [], // earlier {points, box, current} for undo
    kept: [],
    everything: { masks: [], progress: 0, done: false, running: false, summary: null },
    nextObjectId: 1,
  };
  const counters = { uploads: 0, segment: 0, text: 0, hoverDrawn: 0, hoverDropped: 0, everything: 0, errors: 0 };
  const stats = { hover: [], hoverRequest: [], calls: [] };
  let segmentSeq = 0;

  // ---------- API ----------
  function authHeaders() {
    const key = $("api-key").value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function modelQuery(prefix = "?") {
    return state.model ? `${prefix}model=${encodeURIComponent(state.model)}` : "";
  }

  function logCall(method, path, status, ms, tag) {
    stats.calls.push({ method, path, status, ms, tag });
    if (stats.calls.length > 500) stats.calls.shift();
    const li = document.createElement("li");
    const ok = status >= 200 && status < 300;
    const short = path.replace(/[0-9a-f]{64}/, (m) => m.slice(0, 8) + "…").replace(/\?.*$/, "");
    li.innerHTML = `<span>${method}</span><span class="${ok ? "" : "err"}">${status || "ERR"}</span>` +
      `<span>${tag ? tag + " " : ""}${short}</span><span class="ms">${ms.toFixed(1)} ms</span>`;
    const list = $("calls");
    list.prepend(li);
    while (list.children.length > 40) list.lastChild.remove();
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, { json, body, contentType, accept, tag, raw } = {}) {
    const headers = { ...authHeaders() };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (contentType) {
      headers["Content-Type"] = contentType;
    }
    if (accept) headers.Accept = accept;
    const t0 = performance.now();
    let resp;
    try {
      resp = await fetch(path, { method, headers, body });
    } catch (e) {
      logCall(method, path, 0, performance.now() - t0, tag);
      throw new ApiError(0, "network", `network error: ${e.message}`);
    }
    if (raw && resp.ok) {
      // A streamed answer: the caller logs the call when its last byte has arrived.
      resp.logEnd = () => logCall(method, path, resp.status, performance.now() - t0, tag);
      return resp;
    }
    const text = await resp.text();
    const ms = performance.now() - t0;
    logCall(method, path, resp.status, ms, tag);
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!resp.ok) {
      const err = data && data.error ? data.error : { code: "http_" + resp.status, message: text.slice(0, 200) };
      throw new ApiError(resp.status, err.code, err.message);
    }
    return { data, ms };
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.style.color = isError ? "var(--bad)" : "";
    if (isError) counters.errors++;
  }

  // ---------- masks ----------
  // COCO compressed RLE string -> run lengths (pycocotools' rleFrString).
  function rleCounts(s) {
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0, k = 0, more = 1, c = 0;
      while (more) {
        c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p++;
        k++;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // RLE (column-major runs) -> row-major Uint8Array of 0/1.
  function decodeRle(rle) {
    const [h, w] = rle.size;
    const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
    const m = new Uint8Array(h * w);
    let idx = 0, v = 0;
    for (const c of counts) {
      if (v) {
        for (let k = idx; k < idx + c; k++) {
          const x = (k / h) | 0;
          m[(k - x * h) * w + x] = 1;
        }
      }
      idx += c;
      v ^= 1;
    }
    return m;
  }

  function colourOf(i) {
    // Golden-angle hues: neighbours in the list get far-apart colours.
    const hue = (i * 137.508 + 200) % 360;
    return hslToRgb(hue / 360, 0.75, 0.58);
  }

  function hslToRgb(h, s, l) {
    const f = (n) => {
      const k = (n + h * 12) % 12;
      const a = s * Math.min(l, 1 - l);
      return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
    };
    return [f(0), f(8), f(4)];
  }

  // Paints a mask into RGBA data: translucent fill, opaque inner outline. Edge styles:
  // "white" (segment everything), "dashes" (the current mask: black and white, so it never
  // looks like a kept object), "own" (kept objects: their own colour, darker).
  function paintMask(data, mask, w, h, rgb, fillAlpha, edgeStyle) {
    const dark = rgb.map((v) => Math.round(v * 0.55));
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!mask[i]) continue;
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
          !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
        const o = i * 4;
        if (edge) {
          let c = [255, 255, 255];
          if (edgeStyle === "dashes") c = ((x + y) >> 2) & 1 ? [0, 0, 0] : [255, 255, 255];
          else if (edgeStyle === "own") c = dark;
          data[o] = c[0]; data[o + 1] = c[1]; data[o + 2] = c[2]; data[o + 3] = 240;
        } else {
          data[o] = rgb[0]; data[o + 1] = rgb[1]; data[o + 2] = rgb[2]; data[o + 3] = fillAlpha;
        }
      }
    }
  }

  function drawLayer(id, items) {
    const c = $(id);
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    if (!items.length) return;
    const img = ctx.createImageData(c.width, c.height);
    for (const it of items) paintMask(img.data, it.mask, c.width, c.height, it.rgb, it.alpha || 120, it.edge || "white");
    ctx.putImageData(img, 0, 0);
    // Numbered labels (kept objects) at the centre of each mask's box.
    const size = Math.max(11, Math.round(Math.max(c.width, c.height) / 45));
    ctx.font = `bold ${size}px system-ui, sans-serif`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.lineWidth = Math.max(2, size / 5);
    for (const it of items) {
      if (!it.label || !it.bbox) continue;
      const [bx, by, bw, bh] = it.bbox;
      ctx.strokeStyle = "rgba(0,0,0,.85)";
      ctx.strokeText(it.label, bx + bw / 2, by + bh / 2);
      ctx.fillStyle = "#fff";
      ctx.fillText(it.label, bx + bw / 2, by + bh / 2);
    }
  }

  function maskOf(m) {
    if (!m._decoded) m._decoded = decodeRle(m.rle || m.segmentation);
    return m._decoded;
  }

  // ---------- drawing ----------
  function layout() {
    if (!state.imageId) return;
    const stage = $("stage");
    const availW = stage.clientWidth;
    const maxH = Math.max(360, window.innerHeight - 140);
    const scale = Math.min(availW / state.width, maxH / state.height, 3);
    const dw = Math.round(state.width * scale), dh = Math.round(state.height * scale);
    stage.style.height = dh + "px";
    for (const c of stage.querySelectorAll("canvas")) {
      c.style.width = dw + "px";
      c.style.height = dh + "px";
      c.style.left = Math.round((availW - dw) / 2) + "px";
    }
  }

  function drawCurrent() {
    const cur = state.current;
    if (!cur || !cur.masks.length) {
      drawLayer("mask-layer", []);
    } else {
      drawLayer("mask-layer", [{ mask: maskOf(cur.masks[cur.index]), rgb: [79, 140, 255], alpha: 120, edge: "dashes" }]);
    }
    drawUi();
    renderCandidates();
  }

  function drawUi(dragBox) {
    const c = $("ui-layer");
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    const r = Math.max(4, Math.round(Math.max(c.width, c.height) / 120));
    const box = dragBox || state.box;
    if (box) {
      ctx.lineWidth = Math.max(2, r / 2);
      ctx.strokeStyle = "#ffd23f";
      ctx.setLineDash([r * 1.5, r]);
      ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
      ctx.setLineDash([]);
    }
    for (const p of state.points) {
      ctx.beginPath();
      ctx.arc(p.x, p.y, r, 0, Math.PI * 2);
      ctx.fillStyle = p.label ? "#39c27f" : "#ff5d5d";
      ctx.fill();
      ctx.lineWidth = Math.max(1.5, r / 3);
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }

  function drawKept() {
    drawLayer("kept-layer", state.kept.map((o) => ({
      mask: maskOf(o), rgb: o.rgb, alpha: 150, edge: "own", label: String(o.id), bbox: o.bbox,
    })));
    const list = $("kept-list");
    list.innerHTML = "";
    for (const o of state.kept) {
      const li = document.createElement("li");
      li.dataset.id = o.id;
      li.innerHTML = `<span class="swatch" style="background: rgb(${o.rgb.join(",")})"></span>` +
        `<span class="name">object ${o.id}</span><span class="muted small">${o.area} px · score ${o.score.toFixed(2)}</span>` +
        `<button title="delete" aria-label="delete object ${o.id}">×</button>`;
      li.querySelector("button").onclick = () => deleteObject(o.id);
      list.append(li);
    }
    $("kept-count").textContent = `(${state.kept.length})`;
    for (const id of ["export-coco", "export-png", "export-labels"]) $(id).disabled = !state.kept.length;
  }

  function drawEverything() {
    const ms = state.everything.masks;
    drawLayer("everything-layer", ms.map((m, i) => ({ mask: maskOf(m), rgb: colourOf(i), alpha: 140 })));
    $("everything-keep").disabled = !ms.length;
    $("everything-clear").disabled = !ms.length;
  }

  function renderCandidates() {
    const box = $("candidates");
    box.innerHTML = "";
    const cur = state.current;
    $("keep-btn").disabled = !cur || !cur.masks.length;
    if (!cur) {
      box.innerHTML = `<span class="muted small placeholder">${state.imageId ? "no mask yet" : "open an image first"}</span>`;
      $("prompt-info").textContent = state.imageId
        ? "Hover to preview; click to add a point, shift-click or right-click to exclude, drag for a box."
        : "";
      return;
    }
    cur.masks.forEach((m, i) => {
      const b = document.createElement("button");
      b.className = i === cur.index ? "active" : "";
      // `score` is the model's own quality estimate of the mask (its IoU head), not a
      // measured IoU; a text result also carries how well it matches the phrase.
      const text = typeof m.text_score === "number" ? `text ${m.text_score.toFixed(3)} · ` : "";
      b.innerHTML = `<span>mask ${i + 1}</span>` +
        `<span class="score">${text}score ${m.score.toFixed(3)} · ${m.area} px</span>`;
      b.title = (text ? "text: cosine of the phrase to the mask; " : "") +
        "score: the model's predicted quality of the mask (not a measured IoU)";
      b.onclick = () => { cur.index = i; drawCurrent(); };
      box.append(b);
    });
    const np = state.points.length;
    $("prompt-info").textContent = cur.prompt.text !== undefined
      ? `text "${cur.prompt.text}" · ${cur.masks.length} mask${cur.masks.length === 1 ? "" : "s"} · ${cur.ms.toFixed(1)} ms`
      : `${np} point${np === 1 ? "" : "s"}${state.box ? " + box" : ""}` +
        (cur.prompt.mask_input ? " + previous mask" : "") + ` · ${cur.ms.toFixed(1)} ms`;
  }

  // ---------- image ----------
  function resetImageState() {
    state.points = [];
    state.box = null;
    state.current = null;
    state.history = [];
    state.kept = [];
    state.everything = { masks: [], progress: 0, done: false, running: false, summary: null };
    $("everything-progress").value = 0;
    $("everything-info").textContent = "";
  }

  async function openBytes(bytes, contentType, fileName) {
    if (!state.model) throw new Error("no model loaded");
    $("busy").hidden = false;
    setStatus(`Encoding ${fileName}…`);
    try {
      const { data, ms } = await api("POST", `/v1/images${modelQuery()}`, {
        body: bytes, contentType: contentType || "application/octet-stream", tag: "upload",
      });
      const url = URL.createObjectURL(new Blob([bytes], { type: contentType || "" }));
      const img = new Image();
      await new Promise((ok, fail) => { img.onload = ok; img.onerror = () => fail(new Error("the browser cannot display this image")); img.src = url; });
      Object.assign(state, { imageId: data.image_id, width: data.width, height: data.height, fileName, bytes, contentType });
      resetImageState();
      const stage = $("stage");
      for (const c of stage.querySelectorAll("canvas")) { c.width = data.width; c.height = data.height; }
      $("image-layer").getContext("2d").drawImage(img, 0, 0, data.width, data.height);
      URL.revokeObjectURL(url);
      stage.classList.remove("empty");
      layout();
      drawCurrent();
      drawKept();
      drawEverything();
      $("everything-btn").disabled = false;
      $("image-info").textContent = `${fileName} · ${data.width}×${data.height} · ${data.image_id.slice(0, 12)}… · ` +
        `${data.cached ? "cached" : "encoded"} in ${ms.toFixed(0)} ms`;
      setStatus(`Ready: hover over the image, click to segment.`);
      counters.uploads++;
      stage.focus({ preventScroll: true });
    } finally {
      $("busy").hidden = true;
    }
  }

  const IMAGE_NAME = /\.(jpe?g|png|webp|bmp|tiff?|gif)$/i;

  async function openFile(file) {
    if (!file) return;
    if (!(file.type || "").startsWith("image/") && !IMAGE_NAME.test(file.name)) {
      setStatus(`${file.name} is not an image (${file.type || "unknown type"}): open a JPEG, PNG, ` +
        "WebP, BMP, TIFF or GIF file.", true);
      return;
    }
    try {
      await openBytes(await file.arrayBuffer(), file.type, file.name);
    } catch (e) {
      setStatus(`Could not open ${file.name}: ${e.message}`, true);
    }
  }

  async function openDemo(name) {
    try {
      const resp = await fetch(`/page/demo/${name}`);
      if (!resp.ok) throw new Error(`demo ${name}: ${resp.status}`);
      await openBytes(await resp.arrayBuffer(), "image/jpeg", name);
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  // ---------- prompts ----------
  function hasPrompt() {
    return state.points.length > 0 || state.box !== null;
  }

  function snapshot() {
    state.history.push({ points: state.points.slice(), box: state.box, current: state.current });
    if (state.history.length > 50) state.history.shift();
  }

  function buildPrompt() {
    const prompt = {};
    if (state.points.length) prompt.points = state.points.map((p) => ({ x: p.x, y: p.y, label: p.label }));
    if (state.box) prompt.box = state.box.slice();
    const prev = state.current;
    if ($("refine-toggle").checked && prev && prev.masks.length && prev.masks[prev.index].logits_handle) {
      prompt.mask_input = prev.masks[prev.index].logits_handle;
    }
    return prompt;
  }

  async function runPrompt() {
    if (!state.imageId) return;
    if (!hasPrompt()) { state.current = null; drawCurrent(); return; }
    const prompt = buildPrompt();
    const seq = ++segmentSeq;
    const imageId = state.imageId;
    drawUi();
    try {
      const { data, ms } = await api("POST", `/v1/images/${imageId}/segment${modelQuery()}`, {
        json: { prompts: [prompt], return_logits: true }, tag: "prompt",
      });
      if (seq !== segmentSeq || imageId !== state.imageId) return; // a newer prompt won
      state.current = { masks: data.results[0].masks, index: 0, prompt, ms };
      counters.segment++;
      drawCurrent();
      setStatus(`Segmented in ${ms.toFixed(1)} ms. Enter keeps it; Tab cycles the candidates.`);
    } catch (e) {
      if (seq === segmentSeq) setStatus(`Segment failed: ${e.message}`, true);
    }
  }

  function addPoint(x, y, label) {
    snapshot();
    state.points.push({ x, y, label });
    cancelHover();
    runPrompt();
  }

  function setBox(box) {
    snapshot();
    state.box = box;
    cancelHover();
    runPrompt();
  }

  function clearPrompt() {
    state.points = [];
    state.box = null;
    state.current = null;
    state.history = [];
    segmentSeq++;
    drawCurrent();
  }

  function undo() {
    const prev = state.history.pop();
    if (!prev) return;
    segmentSeq++;
    state.points = prev.points;
    state.box = prev.box;
    state.current = prev.current;
    drawCurrent();
  }

  function cycle(step) {
    const cur = state.current;
    if (!cur || cur.masks.length < 2) return;
    cur.index = (cur.index + step + cur.masks.length) % cur.masks.length;
    drawCurrent();
  }

  function keepCurrent() {
    const cur = state.current;
    if (!cur || !cur.masks.length) return;
    const m = cur.masks[cur.index];
    const id = state.nextObjectId++;
    state.kept.push({
      id, rle: m.rle, area: m.area, bbox: m.bbox, score: m.score, token: m.token,
      prompt: cur.prompt, source: "prompt", rgb: colourOf(id),
    });
    clearPrompt();
    drawKept();
    setStatus(`Kept object ${id}.`);
  }

  function deleteObject(id) {
    state.kept = state.kept.filter((o) => o.id !== id);
    drawKept();
  }

  // ---------- hover preview ----------
  // Debounced; at most one request in flight; an answer that arrives after the pointer
  // moved on is dropped (and the newest position is sent instead).
  const hover = { pending: null, timer: null, inflight: false, gen: 0 };

  function hoverEnabled() {
    return state.imageId && $("hover-toggle").checked && !hasPrompt() && !pointer.down;
  }

  function onHover(x, y, t) {
    if (!hoverEnabled()) return;
    hover.pending = { x, y, t };
    clearTimeout(hover.timer);
    hover.timer = setTimeout(fireHover, HOVER_DEBOUNCE_MS);
  }

  function cancelHover() {
    clearTimeout(hover.timer);
    hover.pending = null;
    hover.gen++;
    if (!hasPrompt() && !state.current) drawLayer("mask-layer", []);
  }

  async function fireHover() {
    if (hover.inflight || !hover.pending) return;
    const p = hover.pending;
    hover.pending = null;
    hover.inflight = true;
    const gen = hover.gen;
    const imageId = state.imageId;
    let answer = null;
    const t0 = performance.now();
    try {
      answer = await api("POST", `/v1/images/${imageId}/segment${modelQuery()}`, {
        json: { prompts: [{ points: [{ x: p.x, y: p.y, label: 1 }] }] }, tag: "hover",
      });
    } catch (e) {
      setStatus(`Preview failed: ${e.message}`, true);
    }
    hover.inflight = false;
    const stale = hover.pending || gen !== hover.gen || imageId !== state.imageId || !hoverEnabled();
    if (stale) {
      counters.hoverDropped++;
      if (hover.pending) fireHover();
      return;
    }
    if (!answer) return;
    const masks = answer.data.results[0].masks;
    drawLayer("mask-layer", masks.length ? [{ mask: maskOf(masks[0]), rgb: [79, 140, 255], alpha: 110, edge: "dashes" }] : []);
    const total = performance.now() - p.t;
    stats.hover.push(total);
    stats.hoverRequest.push(performance.now() - t0);
    counters.hoverDrawn++;
    $("hover-latency").textContent = `hover preview ${total.toFixed(1)} ms (request ${answer.ms.toFixed(1)} ms)`;
  }

  // ---------- pointer ----------
  const pointer = { down: false, start: null, startClient: null, dragging: false, button: 0, shift: false, inside: false };

  function toImage(ev) {
    const r = $("ui-layer").getBoundingClientRect();
    const x = ((ev.clientX - r.left) * state.width) / r.width;
    const y = ((ev.clientY - r.top) * state.height) / r.height;
    return [Math.min(Math.max(x, 0), state.width), Math.min(Math.max(y, 0), state.height)];
  }

  function boxOf(a, b) {
    return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  }

  function insideImage(ev) {
    const r = $("ui-layer").getBoundingClientRect();
    return ev.clientX >= r.left && ev.clientX < r.right && ev.clientY >= r.top && ev.clientY < r.bottom;
  }

  // Listeners sit on the whole stage, so a box can start just outside the image (its
  // corners are clamped to the image).
  function setUpPointer() {
    const stage = $("stage");
    stage.addEventListener("contextmenu", (e) => { if (state.imageId) e.preventDefault(); });
    stage.addEventListener("pointerdown", (e) => {
      if (!state.imageId || (e.button !== 0 && e.button !== 2)) return;
      if (e.target.closest && e.target.closest("button, input, label")) return;
      stage.setPointerCapture(e.pointerId);
      Object.assign(pointer, {
        down: true, start: toImage(e), startClient: [e.clientX, e.clientY],
        dragging: false, button: e.button, shift: e.shiftKey, inside: insideImage(e),
      });
      cancelHover();
    });
    stage.addEventListener("pointermove", (e) => {
      if (!state.imageId) return;
      if (pointer.down) {
        const d = Math.hypot(e.clientX - pointer.startClient[0], e.clientY - pointer.startClient[1]);
        if (d > 5 && pointer.button === 0) pointer.dragging = true;
        if (pointer.dragging) drawUi(boxOf(pointer.start, toImage(e)));
        return;
      }
      if (!insideImage(e)) { cancelHover(); return; }
      const [x, y] = toImage(e);
      onHover(x, y, e.timeStamp || performance.now());
    });
    stage.addEventListener("pointerup", (e) => {
      if (!pointer.down) return;
      pointer.down = false;
      const end = toImage(e);
      if (pointer.dragging) {
        const b = boxOf(pointer.start, end);
        if (b[2] - b[0] >= 2 && b[3] - b[1] >= 2) setBox(b);
        else drawUi();
      } else if (pointer.inside) {
        const bg = pointer.button === 2 || pointer.shift || e.shiftKey;
        addPoint(pointer.start[0], pointer.start[1], bg ? 0 : 1);
      }
      pointer.dragging = false;
    });
    stage.addEventListener("pointerleave", () => {
      if (!pointer.down) cancelHover();
    });
  }

  // ---------- segment everything ----------
  function amgParams() {
    const num = (id) => Number($(id).value);
    return {
      points_per_side: num("amg-pps"),
      pred_iou_thresh: num("amg-iou"),
      stability_score_thresh: num("amg-stab"),
    };
  }

  async function segmentEverything() {
    if (!state.imageId || state.everything.running) return;
    const imageId = state.imageId;
    const ev = { masks: [], progress: 0, done: false, running: true, summary: null };
    state.everything = ev;
    drawEverything();
    const bar = $("everything-progress");
    bar.value = 0;
    $("everything-btn").disabled = true;
    $("everything-info").textContent = "running…";
    const t0 = performance.now();
    let resp = null;
    try {
      resp = await api("POST", `/v1/images/${imageId}/everything${modelQuery()}`, {
        json: amgParams(), accept: "application/x-ndjson", tag: "everything", raw: true,
      });
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      const handle = (line) => {
        if (!line.trim()) return;
        const msg = JSON.parse(line);
        if (msg.type === "progress") {
          ev.progress = msg.points_total ? msg.points_done / msg.points_total : 0;
          bar.value = ev.progress;
          $("everything-info").textContent = `decoded ${msg.points_done} / ${msg.points_total} points`;
        } else if (msg.type === "mask") {
          ev.masks.push(msg);
        } else if (msg.type === "summary") {
          ev.summary = msg;
        } else if (msg.type === "error") {
          throw new Error(msg.error.message);
        }
      };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          handle(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      }
      handle(buf);
      resp.logEnd();
      resp = null;
      if (!ev.summary) throw new Error("the stream ended without a summary");
      if (imageId !== state.imageId) return;
      ev.progress = 1;
      bar.value = 1;
      ev.done = true;
      drawEverything();
      const ms = performance.now() - t0;
      $("everything-info").textContent = `${ev.masks.length} masks in ${(ms / 1000).toFixed(2)} s` +
        (ev.masks.length ? "" : " (none passed the thresholds: try lower ones)");
      counters.everything++;
    } catch (e) {
      setStatus(`Segment everything failed: ${e.message}`, true);
      $("everything-info").textContent = "failed";
    } finally {
      if (resp) resp.logEnd(); // a stream that failed half way is logged too
      ev.running = false;
      $("everything-btn").disabled = !state.imageId;
    }
  }

  function keepEverything() {
    for (const m of state.everything.masks) {
      const id = state.nextObjectId++;
      state.kept.push({
        id, rle: m.segmentation, area: m.area, bbox: m.bbox, score: m.predicted_iou,
        token: null, prompt: { points: m.point_coords.map(([x, y]) => ({ x, y, label: 1 })) },
        source: "everything", rgb: colourOf(id),
      });
    }
    hideEverything();
    drawKept();
  }

  function hideEverything() {
    state.everything = { masks: [], progress: 0, done: false, running: false, summary: null };
    $("everything-progress").value = 0;
    $("everything-info").textContent = "";
    drawEverything();
  }

  // ---------- text prompts (only when a model says it supports them) ----------
  // /v1/models describes a model's text model as an object (null when it has none).
  function supportsText(m) {
    return !!m && !!m.text && typeof m.text === "object";
  }

  async function runText() {
    const text = $("text-prompt").value.trim();
    if (!text || !state.imageId) return;
    try {
      const { data, ms } = await api("POST", `/v1/images/${state.imageId}/segment${modelQuery()}`, {
        // No logits: text masks come from the candidate search, not from a decoder call
        // the page could refine (the server answers 422 to return_logits with text).
        json: { prompts: [{ text, max_masks: 3 }] }, tag: "text",
      });
      state.points = [];
      state.box = null;
      const masks = data.results[0].masks;
      state.current = { masks, index: 0, prompt: { text }, ms };
      drawCurrent();
      counters.text++;
      setStatus(masks.length
        ? `Found ${masks.length} mask${masks.length === 1 ? "" : "s"} for "${text}" in ${ms.toFixed(0)} ms ` +
          `(best text score ${masks[0].text_score.toFixed(2)}). Enter keeps it; Tab cycles.`
        : `No mask matches "${text}".`);
    } catch (e) {
      setStatus(`Text prompt failed: ${e.message}`, true);
    }
  }

  // ---------- export ----------
  function cocoExport() {
    return {
      info: { description: "samserve export", date_created: new Date().toISOString() },
      images: [{ id: 1, width: state.width, height: state.height, file_name: state.fileName, samserve_image_id: state.imageId }],
      categories: [{ id: 1, name: "object" }],
      annotations: state.kept.map((o, i) => ({
        id: i + 1, image_id: 1, category_id: 1, iscrowd: 0,
        segmentation: o.rle, area: o.area, bbox: o.bbox, score: o.score,
        samserve: { model: state.model, source: o.source, token: o.token, prompt: o.prompt },
      })),
    };
  }

  function download(blob, name) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  function baseName() {
    return (state.fileName || "image").replace(/\.[^.]*$/, "");
  }

  function maskPng(fill) {
    const c = document.createElement("canvas");
    c.width = state.width;
    c.height = state.height;
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(c.width, c.height);
    fill(img.data);
    ctx.putImageData(img, 0, 0);
    return new Promise((ok) => c.toBlob(ok, "image/png"));
  }

  // CRC-32 (the zip and PNG polynomial), for the zip writer.
  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  // A zip archive of stored (uncompressed: PNGs are compressed already) files.
  function zipStored(files) {
    const enc = new TextEncoder();
    const parts = [], central = [];
    let offset = 0;
    const now = new Date();
    const time = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
    const date = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
    for (const f of files) {
      const name = enc.encode(f.name);
      const crc = crc32(f.bytes);
      const local = new DataView(new ArrayBuffer(30));
      local.setUint32(0, 0x04034b50, true);
      local.setUint16(4, 20, true);
      local.setUint16(10, time, true);
      local.setUint16(12, date, true);
      local.setUint32(14, crc, true);
      local.setUint32(18, f.bytes.length, true);
      local.setUint32(22, f.bytes.length, true);
      local.setUint16(26, name.length, true);
      parts.push(local.buffer, name, f.bytes);
      const cd = new DataView(new ArrayBuffer(46));
      cd.setUint32(0, 0x02014b50, true);
      cd.setUint16(4, 20, true);
      cd.setUint16(6, 20, true);
      cd.setUint16(12, time, true);
      cd.setUint16(14, date, true);
      cd.setUint32(16, crc, true);
      cd.setUint32(20, f.bytes.length, true);
      cd.setUint32(24, f.bytes.length, true);
      cd.setUint16(28, name.length, true);
      cd.setUint32(42, offset, true);
      central.push(cd.buffer, name);
      offset += 30 + name.length + f.bytes.length;
    }
    const cdSize = central.reduce((n, p) => n + p.byteLength, 0);
    const end = new DataView(new ArrayBuffer(22));
    end.setUint32(0, 0x06054b50, true);
    end.setUint16(8, files.length, true);
    end.setUint16(10, files.length, true);
    end.setUint32(12, cdSize, true);
    end.setUint32(16, offset, true);
    return new Blob([...parts, ...central, end.buffer], { type: "application/zip" });
  }

  // Every kept object as a black-and-white PNG, in one zip file.
  async function exportPngs() {
    const files = [];
    for (const o of state.kept) {
      const m = maskOf(o);
      const blob = await maskPng((d) => {
        for (let i = 0; i < m.length; i++) {
          const v = m[i] ? 255 : 0;
          d[i * 4] = v; d[i * 4 + 1] = v; d[i * 4 + 2] = v; d[i * 4 + 3] = 255;
        }
      });
      files.push({ name: `${baseName()}-object-${o.id}.png`, bytes: new Uint8Array(await blob.arrayBuffer()) });
    }
    download(zipStored(files), `${baseName()}-masks.zip`);
  }

  // One PNG: gray level = 1-based position in the object list (later objects on top).
  async function exportLabels() {
    const blob = await maskPng((d) => {
      for (let i = 3; i < d.length; i += 4) d[i] = 255;
      state.kept.slice(0, 255).forEach((o, k) => {
        const m = maskOf(o);
        for (let i = 0; i < m.length; i++) {
          if (m[i]) { d[i * 4] = k + 1; d[i * 4 + 1] = k + 1; d[i * 4 + 2] = k + 1; }
        }
      });
    });
    download(blob, `${baseName()}-labels.png`);
  }

  // ---------- set-up ----------
  async function loadModels() {
    try {
      const { data } = await api("GET", "/v1/models", { tag: "models" });
      state.models = data.models;
      const sel = $("model-select");
      sel.innerHTML = "";
      for (const m of data.models) {
        const o = document.createElement("option");
        o.value = m.name;
        o.textContent = m.name;
        if (m.default) o.selected = true;
        sel.append(o);
      }
      state.model = sel.value;
      onModelChanged(false);
      setStatus("Drop an image, choose a file or a demo scene.");
      window.samserve.ready = true;
    } catch (e) {
      setStatus(`Could not list models: ${e.message}` + (e.status === 503 ? " (still loading, retrying…)" : ""), true);
      setTimeout(loadModels, 1000);
    }
  }

  function onModelChanged(reupload) {
    state.model = $("model-select").value;
    const m = state.models.find((x) => x.name === state.model);
    $("text-prompt-row").hidden = !supportsText(m);
    const note = $("model-note");
    note.textContent = m && m.description ? `${m.name}: ${m.description}` : "";
    note.classList.toggle("warn", !!m && /demo model/i.test(m.description || ""));
    note.hidden = !note.textContent;
    if (reupload && state.bytes) openBytes(state.bytes, state.contentType, state.fileName).catch((e) => setStatus(e.message, true));
  }

  function setUpKeys() {
    document.addEventListener("keydown", (e) => {
      const t = e.target;
      if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
      if (t && t.tagName === "BUTTON" && (e.key === "Enter" || e.key === " ")) return; // the button's own action
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const k = e.key;
      if (k === "Tab" || k === "m" || k === "M") {
        if (state.current && state.current.masks.length > 1) {
          e.preventDefault();
          cycle(e.shiftKey ? -1 : 1);
        }
      } else if (k === "Enter" || k === "k" || k === "K") {
        e.preventDefault();
        keepCurrent();
      } else if (k === "Escape") {
        clearPrompt();
      } else if (k === "z" || k === "Z") {
        undo();
      } else if (k === "e" || k === "E") {
        segmentEverything();
      } else if (k === "h" || k === "H") {
        $("hover-toggle").checked = !$("hover-toggle").checked;
        if (!$("hover-toggle").checked) cancelHover();
      } else if (k === "Delete" || k === "Backspace") {
        const last = state.kept[state.kept.length - 1];
        if (last) deleteObject(last.id);
      }
    });
  }

  function setUpDrop() {
    const stage = $("stage");
    stage.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("dragover"); });
    stage.addEventListener("dragleave", () => stage.classList.remove("dragover"));
    stage.addEventListener("drop", (e) => {
      e.preventDefault();
      stage.classList.remove("dragover");
      openFile(e.dataTransfer.files[0]);
    });
    for (const id of ["file-input", "file-input-2"]) {
      $(id).addEventListener("change", (e) => { openFile(e.target.files[0]); e.target.value = ""; });
    }
    for (const listId of ["demo-list", "demo-list-2"]) {
      DEMOS.forEach((name, i) => {
        const b = document.createElement("button");
        b.textContent = `demo ${i + 1}`;
        b.onclick = () => openDemo(name);
        $(listId).append(b);
      });
    }
  }

  function init() {
    const key = $("api-key");
    try { key.value = localStorage.getItem("samserve.apiKey") || ""; } catch (_) { /* storage off */ }
    key.addEventListener("change", () => {
      try { localStorage.setItem("samserve.apiKey", key.value.trim()); } catch (_) { /* storage off */ }
    });
    $("model-select").addEventListener("change", () => onModelChanged(true));
    $("keep-btn").onclick = keepCurrent;
    $("clear-btn").onclick = clearPrompt;
    $("undo-btn").onclick = undo;
    $("everything-btn").onclick = segmentEverything;
    $("everything-keep").onclick = keepEverything;
    $("everything-clear").onclick = hideEverything;
    $("export-coco").onclick = () =>
      download(new Blob([JSON.stringify(cocoExport())], { type: "application/json" }), `${baseName()}-coco.json`);
    $("export-png").onclick = exportPngs;
    $("export-labels").onclick = exportLabels;
    $("text-go").onclick = runText;
    $("text-prompt").addEventListener("keydown", (e) => { if (e.key === "Enter") runText(); });
    $("hover-toggle").addEventListener("change", () => { if (!$("hover-toggle").checked) cancelHover(); });
    setUpPointer();
    setUpKeys();
    setUpDrop();
    window.addEventListener("resize", layout);
    renderCandidates();
    loadModels();
  }

  window.samserve = {
    ready: false, state, counters, stats, cocoExport, decodeRle, crc32,
    openDemo, keepCurrent, clearPrompt, segmentEverything,
  };
  init();
})();
