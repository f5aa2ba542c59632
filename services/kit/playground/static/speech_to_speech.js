// Speech-to-speech translation: the page chains three public calls (transcribe, translate, speak) and shows
// each stage as it completes.
import { call, callJson, modelsByService, voices } from "./api.js";
import { recordButton } from "./audio.js";
import { fillPairs, fillVoices, PanelView, seconds, showAudio } from "./ui.js";

export async function setUp() {
  const view = new PanelView("panel-s2s");
  const pairSelect = document.getElementById("s2s-pair");
  const voiceSelect = document.getElementById("s2s-voice");
  const transcriptOut = document.getElementById("s2s-transcript");
  const translationOut = document.getElementById("s2s-translation");
  const audio = document.getElementById("s2s-audio");
  const runButton = document.getElementById("s2s-run");
  let clip = null;

  const useClip = (blob, name) => {
    clip = { blob, name };
    view.status(`${name}: ready`);
  };
  const fileInput = document.getElementById("s2s-file");
  fileInput.addEventListener("change", () => fileInput.files[0] && useClip(fileInput.files[0], fileInput.files[0].name));
  recordButton(document.getElementById("s2s-record"), (blob) => useClip(blob, "recording.wav"), (e) => view.error(e));

  runButton.closest("form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!clip) {
      view.error(new Error("choose a clip or record one first"));
      return;
    }
    view.run(runButton, async () => {
      const [source, target] = pairSelect.value.split("-");
      for (const out of [transcriptOut, translationOut]) out.textContent = "";
      audio.hidden = true;
      const started = performance.now();
      view.status("1/3 transcribing…");
      const form = new FormData();
      form.append("file", clip.blob, clip.name);
      form.append("model", "whisper-1");
      form.append("language", source);
      const transcript = await (await call("v1/audio/transcriptions", { method: "POST", body: form })).json();
      transcriptOut.textContent = transcript.text;
      view.status(`2/3 translating… (transcript after ${seconds(performance.now() - started)})`);
      const translated = await callJson("v1/translate", {
        text: transcript.text, source_lang: source, target_lang: target,
        max_new_tokens: Number(document.getElementById("s2s-max-tokens").value),
      });
      translationOut.textContent = translated.translations[0];
      view.status(`3/3 speaking… (translation after ${seconds(performance.now() - started)})`);
      const speech = await call("v1/audio/speech", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          model: "tts-1", input: translated.translations[0], voice: voiceSelect.value, response_format: "wav",
        }),
      });
      showAudio(audio, await speech.blob());
      view.status(`done in ${seconds(performance.now() - started)}`);
    });
  });

  try {
    const [models, voiceList] = await Promise.all([modelsByService(), voices()]);
    fillPairs(pairSelect, models.translation ?? []);
    fillVoices(voiceSelect, voiceList);
  } catch (error) {
    view.error(error);
  }
}
