// The page: send the chosen or dropped photo to POST /v1/classify and draw the top-5 as bars.
"use strict";

const $ = (id) => document.getElementById(id);

async function showModel() {
  try {
    const model = (await (await fetch("/v1/models")).json()).models[0];
    $("model").textContent =
      `${model.arch} · ${model.id} · ${model.num_classes} classes · ` +
      `${model.preprocess.name} preprocessing · backend ${model.serving.backend}`;
  } catch (err) {
    $("model").textContent = `model information unavailable (${err})`;
  }
}

function showResults(result, roundTripMs) {
  const list = $("results");
  list.replaceChildren();
  for (const top of result.top) {
    const item = document.createElement("li");
    const label = document.createElement("div");
    label.className = "label";
    const name = document.createElement("span");
    name.textContent = top.label;
    const percent = document.createElement("span");
    percent.textContent = `${(100 * top.prob).toFixed(1)}%`;
    label.append(name, percent);
    const track = document.createElement("div");
    track.className = "track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * top.prob).toFixed(2)}%`;
    track.append(bar);
    item.append(label, track);
    list.append(item);
  }
  const t = result.timing;
  $("timing").textContent =
    `server ${t.total_ms.toFixed(1)} ms (decode ${t.decode_ms.toFixed(1)}, ` +
    `queue ${t.queue_ms.toFixed(1)}, network ${t.inference_ms.toFixed(1)} ms ` +
    `in a batch of ${result.batch_size}) · round trip ${roundTripMs.toFixed(0)} ms`;
}

async function classify(file) {
  $("error").hidden = true;
  $("results").replaceChildren();
  $("timing").textContent = "classifying…";
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("hint").hidden = true;
  const form = new FormData();
  form.append("file", file, file.name);
  const start = performance.now();
  try {
    const response = await fetch("/v1/classify?topk=5", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
    showResults(body, performance.now() - start);
  } catch (err) {
    $("timing").textContent = "";
    $("error").textContent = err.message;
    $("error").hidden = false;
  }
}

$("file").addEventListener("change", (event) => {
  if (event.target.files.length) classify(event.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
});
showModel();
