// The florence-vl page: pick an image and a Florence-2 task, POST /v1/florence2/tasks, show the drawing and JSON.
// Plain browser JavaScript, no build step, nothing fetched from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, dataUrl: null, tasks: {}, region: null, drag: null };

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key-input").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

// -- the image --------------------------------------------------------------------------------------

function setImage(dataUrl, name) {
  const img = new Image();
  img.onload = () => {
    state.image = img;
    state.dataUrl = dataUrl;
    state.region = null;
    $("region-input").value = "";
    $("image-info").textContent = `${name || "image"} — ${img.naturalWidth}×${img.naturalHeight} px`;
    $("preview").hidden = false;
    drawPreview();
    updateForm();
  };
  img.onerror = () => showError("that file is not an image this browser can show");
  img.src = dataUrl;
}

function readFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { showError(`${file.name} is not an image`); return; }
  showError("");
  const reader = new FileReader();
  reader.onload = () => setImage(reader.result, file.name);
  reader.readAsDataURL(file);
}

function sampleImage() {
  const c = document.createElement("canvas");
  c.width = 480; c.height = 320;
  const g = c.getContext("2d");
  g.fillStyle = "#e8eef7"; g.fillRect(0, 0, 480, 320);
  g.fillStyle = "#d62828"; g.beginPath(); g.arc(120, 150, 70, 0, 2 * Math.PI); g.fill();
  g.fillStyle = "#1d4ed8"; g.fillRect(260, 80, 150, 150);
  g.fillStyle = "#111"; g.font = "bold 28px sans-serif"; g.fillText("HELLO 42", 170, 290);
  setImage(c.toDataURL("image/png"), "sample.png");
}

function drawPreview() {
  const c = $("preview"), img = state.image;
  if (!img) return;
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0);
  const r = state.region;
  if (r) {
    g.lineWidth = Math.max(2, Math.round(c.width / 200));
    g.strokeStyle = "#f59e0b";
    g.strokeRect(r[0], r[1], r[2] - r[0], r[3] - r[1]);
  }
}

function imagePoint(event) {  // mouse position in pixels of the original image
  const c = $("preview"), box = c.getBoundingClientRect();
  const x = (event.clientX - box.left) * c.width / box.width;
  const y = (event.clientY - box.top) * c.height / box.height;
  return [Math.max(0, Math.min(c.width, Math.round(x))), Math.max(0, Math.min(c.height, Math.round(y)))];
}

function setupImageInput() {
  $("file-input").addEventListener("change", (e) => readFile(e.target.files[0]));
  $("sample-button").addEventListener("click", sampleImage);
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    readFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
    if (item) { e.preventDefault(); readFile(item.getAsFile()); }
  });
  const c = $("preview");
  c.addEventListener("mousedown", (e) => { if (needsRegion()) state.drag = imagePoint(e); });
  c.addEventListener("mousemove", (e) => {
    if (!state.drag) return;
    const [x, y] = imagePoint(e), [x0, y0] = state.drag;
    state.region = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    $("region-input").value = state.region.join(",");
    drawPreview();
  });
  window.addEventListener("mouseup", () => { state.drag = null; });
  $("region-input").addEventListener("input", () => {
    const v = $("region-input").value.split(/[\s,]+/).filter(Boolean).map(Number);
    state.region = v.length === 4 && v.every(Number.isFinite) ? v : null;
    drawPreview();
  });
}

// -- the task ---------------------------------------------------------------------------------------

function plainWords(description) { return description.replace(/--(text|region)/g, "the $1"); }
function currentTask() { return state.tasks[$("task-select").value]; }
function needsRegion() { const t = currentTask(); return t && t.input === "region"; }

function updateForm() {
  const task = currentTask();
  $("text-row").hidden = !task || task.input !== "text";
  $("region-row").hidden = !task || task.input !== "region";
  $("task-description").textContent = task ? plainWords(task.description) : "";
  $("run-button").disabled = !(task && state.dataUrl);
}

function summary(token, output) {
  if (typeof output === "string") return output || "(empty text)";
  const parts = [];
  for (const key of ["bboxes", "quad_boxes", "polygons"]) {
    if (Array.isArray(output[key])) parts.push(`${output[key].length} ${key.replace("_", " ")}`);
  }
  const labels = output.labels || output.bboxes_labels || [];
  if (labels.length) parts.push("labels: " + labels.slice(0, 12).join(", ") + (labels.length > 12 ? ", …" : ""));
  return parts.join(" · ") || "(nothing found)";
}

async function run(event) {
  event.preventDefault();
  const task = currentTask();
  const body = { image: state.dataUrl, task: task.name, draw: true,
                 num_beams: Number($("beams-input").value) || undefined,
                 max_new_tokens: Number($("tokens-input").value) || undefined };
  if (task.input === "text") body.text = $("text-input").value;
  if (task.input === "region") body.region = $("region-input").value;
  showError("");
  $("run-button").disabled = true;
  $("result-status").textContent = "running…";
  const started = performance.now();
  try {
    const response = await fetch("/v1/florence2/tasks", { method: "POST", headers: headers(),
                                                          body: JSON.stringify(body) });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((answer.error && answer.error.message) || `HTTP ${response.status}`);
    const shown = Object.assign({}, answer);
    delete shown.drawing;
    $("result-json").textContent = JSON.stringify(shown, null, 2);
    $("result-summary").textContent = summary(answer.task, answer.result[answer.task]);
    $("result-image").src = answer.drawing;
    $("result-image").hidden = false;
    $("result-status").textContent = `${answer.task} in ${Math.round(performance.now() - started)} ms`;
    document.body.dataset.result = "done";
  } catch (error) {
    showError(error.message);
    $("result-status").textContent = "";
    document.body.dataset.result = "error";
  } finally {
    updateForm();
  }
}

async function init() {
  $("key-input").value = localStorage.getItem("florence-vl-key") || "";
  $("key-input").addEventListener("change", () => localStorage.setItem("florence-vl-key", $("key-input").value));
  setupImageInput();
  $("task-select").addEventListener("change", updateForm);
  $("task-form").addEventListener("submit", run);
  try {
    const health = await getJSON("/health");
    $("server-status").textContent = `model ${health.models.join(", ")} · batches of up to ` +
      `${health.batching.max_batch_size}` + (health.auth ? " · API key required" : "");
    $("key-row").hidden = !health.auth;
    const table = await getJSON("/v1/florence2/tasks");
    for (const task of table.data) {
      state.tasks[task.name] = task;
      $("task-select").add(new Option(`${task.name} — ${plainWords(task.description).split(":")[0]}`, task.name));
    }
    $("beams-input").max = table.limits.max_beams;
    $("beams-input").value = table.limits.default_beams;
    $("tokens-input").max = table.limits.max_new_tokens;
    $("tokens-input").value = Math.min(256, table.limits.max_new_tokens);
  } catch (error) {
    showError("cannot reach the server: " + error.message);
  }
  updateForm();
  document.body.dataset.ready = "true";
}

init();
