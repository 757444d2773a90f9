// The top-5 as labelled bars in the list #results: drawn alike by the exported page and by
// `squeezenet serve`'s page (which loads this file from /web/).
"use strict";

function showBars(top) {
  const list = document.getElementById("results");
  list.replaceChildren();
  for (const entry of top) {
    const item = document.createElement("li");
    const label = document.createElement("div");
    label.className = "label";
    const name = document.createElement("span");
    name.textContent = entry.label;
    const percent = document.createElement("span");
    percent.textContent = `${(100 * entry.prob).toFixed(1)}%`;
    label.append(name, percent);
    const track = document.createElement("div");
    track.className = "track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * entry.prob).toFixed(2)}%`;
    track.append(bar);
    item.append(label, track);
    list.append(item);
  }
}
