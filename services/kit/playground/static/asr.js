// Speech recognition: the transcript as it streams (stream=true), then, with word timing, the words of a
// verbose_json answer highlighted while the audio plays.
import { call, sseEvents } from "./api.js";
import { recordButton } from "./audio.js";
import { PanelView, seconds, showAudio } from "./ui.js";

export function setUp() {
  const view = new PanelView("panel-asr");
  const fileInput = document.getElementById("asr-file");
  const audio = document.getElementById("asr-audio");
  const transcript = document.getElementById("asr-transcript");
  const wordsOut = document.getElementById("asr-words-out");
  const runButton = document.getElementById("asr-run");
  let clip = null;

  const useClip = (blob, name) => {
    clip = { blob, name };
    showAudio(audio, blob);
    view.status(`${name}: ready to transcribe`);
  };
  fileInput.addEventListener("change", () => fileInput.files[0] && useClip(fileInput.files[0], fileInput.files[0].name));
  recordButton(document.getElementById("asr-record"), (blob) => useClip(blob, "recording.wav"), (e) => view.error(e));

  const form = (fields) => {
    const body = new FormData();
    body.append("file", clip.blob, clip.name);
    body.append("model", "whisper-1");
    const language = document.getElementById("asr-language").value.trim();
    if (language) body.append("language", language);
    body.append("decoding", document.getElementById("asr-decoding").value);
    for (const [name, value] of fields) body.append(name, value);
    return body;
  };

  runButton.closest("form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!clip) {
      view.error(new Error("choose an audio file or record one first"));
      return;
    }
    view.run(runButton, async () => {
      transcript.textContent = "";
      wordsOut.replaceChildren();
      view.status("transcribing…");
      const started = performance.now();
      let firstText = null;
      const response = await call("v1/audio/transcriptions", {
        method: "POST", body: form([["stream", "true"], ["response_format", "json"]]),
      });
      let path = response.headers.get("x-asr-decoding");
      for await (const event of sseEvents(response)) {
        if (event.type === "transcript.text.delta") {
          firstText ??= performance.now();
          transcript.textContent += event.delta;
        } else if (event.type === "transcript.text.done") {
          transcript.textContent = event.text;
          path = event.decoding ?? path;
        }
      }
      const total = performance.now() - started;
      const first = firstText === null ? "" : `, first text after ${seconds(firstText - started)}`;
      view.status(`decoding path: ${path ?? "?"}; ${seconds(total)} in all${first}`);
      if (document.getElementById("asr-words").checked) await showWords(view, form, wordsOut, audio);
    });
  });

  // The word being spoken, highlighted while the audio plays.
  audio.addEventListener("timeupdate", () => {
    for (const span of wordsOut.children) {
      const speaking = audio.currentTime >= span.dataset.start && audio.currentTime < span.dataset.end;
      span.classList.toggle("speaking", speaking);
    }
  });
}

async function showWords(view, form, wordsOut, audio) {
  const response = await call("v1/audio/transcriptions", {
    method: "POST",
    body: form([["response_format", "verbose_json"], ["timestamp_granularities[]", "word"]]),
  });
  const result = await response.json();
  const words = result.words ?? [];
  wordsOut.replaceChildren(...words.map((word) => {
    const span = document.createElement("span");
    span.textContent = word.word;
    span.dataset.start = word.start;
    span.dataset.end = word.end;
    span.title = `${word.start.toFixed(2)}–${word.end.toFixed(2)} s`;
    return span;
  }));
  view.status(`${view.statusLine.textContent}; ${words.length} timed words (play the audio to follow them)`);
  audio.hidden = false;
}
