// Speech synthesis: the voice picker from /v1/voices, speech played as its PCM chunks stream in (OpenAI's
// 24 kHz pcm), a WAV download, and voice conversion of an uploaded or recorded clip.
import { call, voices } from "./api.js";
import { PcmPlayer, recordButton } from "./audio.js";
import { fillVoices, PanelView, seconds, showAudio } from "./ui.js";

const PCM_RATE = 24000;

export async function setUp() {
  const view = new PanelView("panel-tts");
  const voiceSelect = document.getElementById("tts-voice");
  const speed = document.getElementById("tts-speed");
  speed.addEventListener("input", () => {
    document.getElementById("tts-speed-value").textContent = Number(speed.value).toFixed(2);
  });
  const runButton = document.getElementById("tts-run");
  document.getElementById("tts-form").addEventListener("submit", (event) => {
    event.preventDefault();
    view.run(runButton, async () => {
      view.status("synthesizing…");
      const started = performance.now();
      const response = await call("v1/audio/speech", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          model: "tts-1", input: document.getElementById("tts-text").value, voice: voiceSelect.value,
          speed: Number(speed.value), response_format: "pcm", stream: true,
        }),
      });
      const player = new PcmPlayer(PCM_RATE);
      const reader = response.body.getReader();
      let firstChunk = null;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (firstChunk === null) {
          firstChunk = performance.now();
          view.status(`playing: first audio after ${seconds(firstChunk - started)}…`);
        }
        player.push(value);
      }
      showAudio(document.getElementById("tts-audio"), player.wav(), document.getElementById("tts-download"));
      const voiceUsed = response.headers.get("x-modelserve-voice") ?? voiceSelect.value;
      view.status(`voice ${voiceUsed}: first audio after ${seconds((firstChunk ?? started) - started)}, `
        + `whole speech after ${seconds(performance.now() - started)}`);
    });
  });

  let clip = null;
  const useClip = (blob, name) => {
    clip = { blob, name };
    view.status(`${name}: ready to convert`);
  };
  const fileInput = document.getElementById("vc-file");
  fileInput.addEventListener("change", () => fileInput.files[0] && useClip(fileInput.files[0], fileInput.files[0].name));
  recordButton(document.getElementById("vc-record"), (blob) => useClip(blob, "recording.wav"), (e) => view.error(e));
  const convertButton = document.getElementById("vc-run");
  document.getElementById("vc-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!clip) {
      view.error(new Error("choose a clip or record one first"));
      return;
    }
    view.run(convertButton, async () => {
      view.status("converting…");
      const body = new FormData();
      body.append("file", clip.blob, clip.name);
      body.append("voice", voiceSelect.value);
      body.append("response_format", "wav");
      const response = await call("v1/audio/conversions", { method: "POST", body });
      showAudio(document.getElementById("vc-audio"), await response.blob(), document.getElementById("vc-download"));
      view.status(`converted to ${voiceSelect.value}`);
    });
  });

  try {
    fillVoices(voiceSelect, await voices());
  } catch (error) {
    view.error(error);
  }
}
