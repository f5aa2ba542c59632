// Sets up a panel per service this server has (from /playground/config.json); the others say they are not
// served here. Speech-to-speech needs speech recognition, translation and speech synthesis together.
import { apiKey, askForKey, setApiKey } from "./api.js";
import * as asr from "./asr.js";
import * as imagegen from "./imagegen.js";
import * as speechToSpeech from "./speech_to_speech.js";
import * as translation from "./translation.js";
import * as tts from "./tts.js";
import * as vision from "./vision.js";
import { PanelView } from "./ui.js";

const PANELS = {
  asr: { services: ["asr"], module: asr, name: "Speech recognition" },
  tts: { services: ["tts"], module: tts, name: "Speech synthesis" },
  translation: { services: ["translation"], module: translation, name: "Translation" },
  imagegen: { services: ["imagegen"], module: imagegen, name: "Image generation" },
  s2s: { services: ["asr", "translation", "tts"], module: speechToSpeech, name: "Speech-to-speech translation" },
};

function showKeyState() {
  const key = apiKey();
  document.getElementById("key-state").textContent = key
    ? "An API key is set for this tab (sent as Authorization: Bearer)."
    : "No API key set: one is asked for when the server wants it.";
  document.getElementById("key-forget").hidden = !key;
}

async function main() {
  showKeyState();
  document.addEventListener("api-key-changed", showKeyState);
  document.getElementById("key-set").addEventListener("click", () => askForKey(""));
  document.getElementById("key-forget").addEventListener("click", () => setApiKey(null));

  const config = await (await fetch("playground/config.json")).json();
  const setUps = [vision.setUp(config)];
  for (const [id, panel] of Object.entries(PANELS)) {
    const missing = panel.services.filter((service) => !config.services.includes(service));
    if (missing.length) {
      new PanelView(`panel-${id}`).off(`${panel.name} is not served here (this server has no ${missing.join(", ")}).`);
    } else {
      setUps.push(panel.module.setUp());
    }
  }
  await Promise.allSettled(setUps);
  document.body.dataset.ready = "true"; // for scripts and tests: every panel has loaded its choices
}

main();
