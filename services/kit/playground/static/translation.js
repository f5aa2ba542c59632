// Translation: the served pairs (GET /v1/models), beam search controls and alternatives.
import { callJson, modelsByService } from "./api.js";
import { fillPairs, PanelView, seconds } from "./ui.js";

export async function setUp() {
  const view = new PanelView("panel-translation");
  const pairSelect = document.getElementById("translation-pair");
  const out = document.getElementById("translation-out");
  const runButton = document.getElementById("translation-run");
  const number = (id) => Number(document.getElementById(id).value);

  runButton.closest("form").addEventListener("submit", (event) => {
    event.preventDefault();
    view.run(runButton, async () => {
      const [source, target] = pairSelect.value.split("-");
      const text = document.getElementById("translation-text").value.split("\n").filter((line) => line.trim());
      view.status("translating…");
      const started = performance.now();
      const result = await callJson("v1/translate", {
        text, source_lang: source, target_lang: target, num_beams: number("translation-beams"),
        num_return_sequences: number("translation-alternatives"),
        length_penalty: number("translation-length-penalty"), max_new_tokens: number("translation-max-tokens"),
      });
      out.replaceChildren(...result.translations.map((translation, i) => {
        const item = document.createElement("li");
        item.append(document.createTextNode(translation));
        const alternatives = result.alternatives?.[i] ?? [];
        if (alternatives.length) {
          const list = document.createElement("ul");
          list.setAttribute("aria-label", "Alternatives, best first");
          list.append(...alternatives.map((alternative) => {
            const entry = document.createElement("li");
            entry.textContent = alternative;
            return entry;
          }));
          item.append(list);
        }
        return item;
      }));
      view.status(`${result.model}: ${seconds(performance.now() - started)}`);
    });
  });

  try {
    fillPairs(pairSelect, (await modelsByService()).translation ?? []);
  } catch (error) {
    view.error(error);
  }
}
