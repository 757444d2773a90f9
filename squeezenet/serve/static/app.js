// The page: send the chosen or dropped photo to POST /v1/classify and draw the top-5 as bars;
// or, with "run in this browser" ticked, classify it in the page with onnxruntime-web, from the
// files the server gives under /web/ (the same as `squeezenet export --format web` writes).
"use strict";

const $ = (id) => document.getElementById(id);
let inBrowser = null; // the promise of the page's own classifier, once the box is ticked

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
  showBars(result.top);
  const t = result.timing;
  $("timing").textContent =
    `server ${t.total_ms.toFixed(1)} ms (decode ${t.decode_ms.toFixed(1)}, ` +
    `queue ${t.queue_ms.toFixed(1)}, network ${t.inference_ms.toFixed(1)} ms ` +
    `in a batch of ${result.batch_size}) · round trip ${roundTripMs.toFixed(0)} ms`;
}

// A script from /web/, after checking that the server has it (its 404 says what is missing).
async function loadScript(src) {
  const response = await fetch(src);
  if (!response.ok) throw new Error((await response.json()).detail || `${src}: HTTP ${response.status}`);
  await new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`${src} could not be loaded`));
    document.head.append(script);
  });
}

async function browserClassifier() {
  await loadScript("/web/ort.wasm.min.js");
  await loadScript("/web/squeezenet.js");
  return SqueezeNet.load(new URL("/web/", location.href).href);
}

async function classifyHere(file) {
  const result = await (await inBrowser).classify(file);
  showBars(result.top);
  $("timing").textContent =
    `in this browser: ${result.ms.toFixed(0)} ms (decode, preprocess and network), ` +
    `nothing uploaded`;
}

async function classifyOnServer(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const start = performance.now();
  const response = await fetch("/v1/classify?topk=5", { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  showResults(body, performance.now() - start);
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
  try {
    await ($("in-browser").checked ? classifyHere(file) : classifyOnServer(file));
  } catch (err) {
    $("timing").textContent = "";
    $("error").textContent = err.message;
    $("error").hidden = false;
  }
}

$("in-browser").addEventListener("change", (event) => {
  if (event.target.checked && !inBrowser) {
    inBrowser = browserClassifier();
    inBrowser.catch(() => (inBrowser = null)); // a failed load is tried again next time
  }
});
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
