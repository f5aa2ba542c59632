// Vision: an image sent to TensorFlow Serving's REST predict API (the model's top_k signature), its top five
// labels drawn as bars. The TF Serving server may be on another port (the platform runs ViT on :8501).
import { call, callJson } from "./api.js";
import { PanelView, seconds } from "./ui.js";

const TOP = 5;

export function tfServingUrl(config) {
  if (config.services.includes("vit")) return location.origin;
  return config.tf_serving_url || `${location.protocol}//${location.hostname}:8501`;
}

export async function setUp(config) {
  const view = new PanelView("panel-vit");
  const urlInput = document.getElementById("vit-url");
  const modelInput = document.getElementById("vit-model");
  urlInput.value = tfServingUrl(config);
  const base = () => urlInput.value.replace(/\/+$/, "");
  const drop = document.getElementById("vit-drop");
  const fileInput = document.getElementById("vit-file");

  const classify = (file) => view.run(fileInput, async () => {
    const image = document.getElementById("vit-image");
    image.src = URL.createObjectURL(file);
    image.hidden = false;
    view.status("classifying…");
    const started = performance.now();
    const result = await callJson(`${base()}/v1/models/${encodeURIComponent(modelInput.value)}:predict`, {
      signature_name: "top_k", instances: [{ b64: await base64Of(file) }],
    });
    const { labels, scores } = result.predictions[0];
    showBars(labels.slice(0, TOP), scores.slice(0, TOP));
    view.status(`${modelInput.value}: ${seconds(performance.now() - started)}`);
  });

  fileInput.addEventListener("change", () => fileInput.files[0] && classify(fileInput.files[0]));
  drop.addEventListener("click", () => fileInput.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) classify(file);
  });

  // Whether a TF Serving API answers for the model: the panel says so when none does.
  try {
    await call(`${base()}/v1/models/${encodeURIComponent(modelInput.value)}`);
  } catch (error) {
    if (error.status === 0) view.off(`Vision is not served here: no TensorFlow Serving REST API answered at ${base()}.`);
    else view.error(error);
  }
}

function showBars(labels, scores) {
  const list = document.getElementById("vit-labels");
  list.replaceChildren(...labels.map((label, i) => {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, scores[i] * 100)}%`;
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuenow", scores[i].toFixed(3));
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "1");
    bar.setAttribute("aria-label", label);
    const score = document.createElement("span");
    score.textContent = `${(scores[i] * 100).toFixed(1)} %`;
    item.append(name, bar, score);
    return item;
  }));
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
