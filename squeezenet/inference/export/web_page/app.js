// The exported page: classify the chosen or dropped photo in this page and draw the top-5.
// index.html?image=URL classifies that image on load and writes the result as JSON (top-5
// and logits) into #result, for tests and scripts.
"use strict";

const $ = (id) => document.getElementById(id);
const folder = new URL("./", document.baseURI).href;

function showError(err) {
  $("timing").textContent = "";
  $("error").textContent = err.message || String(err);
  $("error").hidden = false;
  $("result").textContent = JSON.stringify({ error: $("error").textContent });
}

async function classify(classifier, blob) {
  $("error").hidden = true;
  $("results").replaceChildren();
  $("timing").textContent = "classifying…";
  const preview = $("preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $("hint").hidden = true;
  try {
    const result = await classifier.classify(blob);
    showBars(result.top);
    const { width, height } = result.image;
    $("timing").textContent =
      `in this browser: ${result.ms.toFixed(0)} ms (decode, preprocess and network) · ` +
      `${width}x${height} photo`;
    $("result").textContent = JSON.stringify({ top: result.top, logits: result.logits });
  } catch (err) {
    showError(err);
  }
}

async function main() {
  let classifier;
  try {
    classifier = await SqueezeNet.load(folder);
  } catch (err) {
    $("model").textContent = "the model could not be loaded";
    showError(err);
    return;
  }
  const info = classifier.info;
  $("model").textContent =
    `${info.arch} · ${info.num_classes} classes · ${info.preprocess.name} preprocessing · ` +
    `${info.int8 ? "int8" : "fp32"} · onnxruntime-web ${info.onnxruntime_web} (WebAssembly)`;
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) classify(classifier, event.target.files[0]);
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
    if (event.dataTransfer.files.length) classify(classifier, event.dataTransfer.files[0]);
  });
  const image = new URLSearchParams(location.search).get("image");
  if (image) {
    try {
      const response = await fetch(image);
      if (!response.ok) throw new Error(`${image}: HTTP ${response.status}`);
      await classify(classifier, await response.blob());
    } catch (err) {
      showError(err);
    }
  }
}

main();
