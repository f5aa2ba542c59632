// Image generation: OpenAI's streamed generations and edits, with the platform's opt-in previews
// (partial_images) and step progress (stream_progress); image-to-image and inpainting from a source image
// with a mask painted on it.
import { call, modelsByService, sseEvents } from "./api.js";
import { PanelView, seconds } from "./ui.js";

export async function setUp() {
  const view = new PanelView("panel-imagegen");
  const value = (id) => document.getElementById(id).value;
  const mode = document.getElementById("imagegen-mode");
  const sourceBox = document.getElementById("imagegen-source");
  const sourceCanvas = document.getElementById("imagegen-source-canvas");
  const mask = new MaskPainter(document.getElementById("imagegen-mask-canvas"));
  const progress = document.getElementById("imagegen-progress");
  const preview = document.getElementById("imagegen-preview");
  const result = document.getElementById("imagegen-result");
  const runButton = document.getElementById("imagegen-run");
  let model = null;
  let hasSource = false;

  mode.addEventListener("change", () => { sourceBox.hidden = mode.value === "text"; });
  document.getElementById("imagegen-brush").addEventListener("input", (e) => { mask.brush = Number(e.target.value); });
  document.getElementById("imagegen-mask-center").addEventListener("click", () => mask.paintCentre());
  document.getElementById("imagegen-mask-clear").addEventListener("click", () => mask.clear());
  document.getElementById("imagegen-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    const bitmap = await createImageBitmap(file);
    const context = sourceCanvas.getContext("2d");
    context.drawImage(bitmap, 0, 0, sourceCanvas.width, sourceCanvas.height);
    hasSource = true;
  });

  runButton.closest("form").addEventListener("submit", (event) => {
    event.preventDefault();
    view.run(runButton, async () => {
      if (mode.value !== "text" && !hasSource) throw new Error("choose a source image first");
      const fields = {
        model: model?.id, prompt: value("imagegen-prompt"), size: `${value("imagegen-width")}x${value("imagegen-height")}`,
        steps: Number(value("imagegen-steps")), seed: Number(value("imagegen-seed")), scheduler: value("imagegen-scheduler") || undefined,
        partial_images: Number(value("imagegen-previews")), stream: true, stream_progress: true,
        response_format: "b64_json",
      };
      let response;
      if (mode.value === "text") {
        response = await call("v1/images/generations", {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(fields),
        });
      } else {
        const body = new FormData();
        for (const [name, field] of Object.entries({ ...fields, strength: Number(value("imagegen-strength")) })) {
          if (field !== undefined) body.append(name, String(field));
        }
        body.append("image", await pngOf(sourceCanvas), "source.png");
        if (mode.value === "inpaint") body.append("mask", await mask.png(), "mask.png");
        response = await call("v1/images/edits", { method: "POST", body });
      }
      preview.hidden = true;
      result.hidden = true;
      progress.value = 0;
      const started = performance.now();
      let previews = 0;
      for await (const update of sseEvents(response)) {
        if (update.type.endsWith(".progress")) {
          progress.max = update.total_steps;
          progress.value = update.step;
          view.status(`step ${update.step} of ${update.total_steps}`);
        } else if (update.type.endsWith(".partial_image")) {
          previews += 1;
          preview.src = `data:image/${update.output_format ?? "png"};base64,${update.b64_json}`;
          preview.hidden = false;
          preview.dataset.previews = String(previews);
        } else if (update.type.endsWith(".completed")) {
          result.src = `data:image/${update.output_format ?? "png"};base64,${update.b64_json}`;
          result.hidden = false;
          view.status(`seed ${update.seed}: ${previews} previews, done in ${seconds(performance.now() - started)}`);
        }
      }
    });
  });

  try {
    model = ((await modelsByService()).imagegen ?? [])[0] ?? null;
    const scheduler = document.getElementById("imagegen-scheduler");
    scheduler.replaceChildren(new Option("model default", ""), ...(model?.schedulers ?? []).map((name) => new Option(name)));
    if (model?.default_size) {
      const [width, height] = model.default_size.split("x");
      document.getElementById("imagegen-width").value = width;
      document.getElementById("imagegen-height").value = height;
    }
  } catch (error) {
    view.error(error);
  }
}

function pngOf(canvas) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// The mask, painted with the pointer (or the buttons, from the keyboard). Sent as OpenAI's mask: transparent
// where the model redraws, opaque where it keeps the image.
class MaskPainter {
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.brush = 16;
    let painting = false;
    const paint = (event) => {
      if (!painting) return;
      const box = canvas.getBoundingClientRect();
      const x = ((event.clientX - box.left) / box.width) * canvas.width;
      const y = ((event.clientY - box.top) / box.height) * canvas.height;
      this.context.fillStyle = "rgba(255, 40, 40, 0.55)";
      this.context.beginPath();
      this.context.arc(x, y, this.brush / 2, 0, Math.PI * 2);
      this.context.fill();
    };
    canvas.addEventListener("pointerdown", (event) => {
      painting = true;
      canvas.setPointerCapture(event.pointerId);
      paint(event);
    });
    canvas.addEventListener("pointermove", paint);
    canvas.addEventListener("pointerup", () => { painting = false; });
  }

  paintCentre() {
    const { width, height } = this.canvas;
    this.context.fillStyle = "rgba(255, 40, 40, 0.55)";
    this.context.fillRect(width / 4, height / 4, width / 2, height / 2);
  }

  clear() {
    this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  png() {
    const out = document.createElement("canvas");
    out.width = this.canvas.width;
    out.height = this.canvas.height;
    const context = out.getContext("2d");
    context.fillStyle = "black";
    context.fillRect(0, 0, out.width, out.height);
    context.globalCompositeOperation = "destination-out"; // painted pixels become transparent
    context.drawImage(this.canvas, 0, 0);
    return pngOf(out);
  }
}
