// What every panel shows the same way: progress, the API's error message, busy buttons, voice pickers.

export class PanelView {
  constructor(id) {
    this.root = document.getElementById(id);
    this.statusLine = this.root.querySelector(".status");
    this.errorLine = this.root.querySelector(".error");
  }

  status(text) {
    this.statusLine.textContent = text;
  }

  error(error) {
    // fetch's TypeError: the connection failed or an answer broke off (the server gave up mid-stream).
    const broken = error instanceof TypeError ? "the connection failed or the answer broke off: " : "";
    this.errorLine.textContent = error ? broken + (error.message || String(error)) : "";
  }

  // Runs `work` with `button` disabled, the error line cleared before and filled if it fails.
  async run(button, work) {
    button.disabled = true;
    this.error(null);
    try {
      await work();
    } catch (error) {
      this.error(error);
      this.status("");
    } finally {
      button.disabled = false;
    }
  }

  off(message) {
    this.root.classList.add("off");
    const note = this.root.querySelector(".unavailable");
    note.textContent = message;
    note.hidden = false;
  }
}

export function fillVoices(select, voiceList) {
  select.replaceChildren(...voiceList.map((voice) => {
    const label = voice.alias_of ? `${voice.id} (alias of ${voice.alias_of})` : voice.id;
    const option = new Option(label, voice.id, false, Boolean(voice.default));
    return option;
  }));
}

export function fillPairs(select, translationModels) {
  select.replaceChildren(...translationModels.map((model) => {
    const pair = `${model.source_lang}-${model.target_lang}`;
    return new Option(`${model.source_lang} → ${model.target_lang} (${model.id})`, pair);
  }));
}

export function seconds(milliseconds) {
  return `${(milliseconds / 1000).toFixed(2)} s`;
}

export function showAudio(audio, blob, link) {
  const url = URL.createObjectURL(blob);
  audio.src = url;
  audio.hidden = false;
  if (link) {
    link.href = url;
    link.hidden = false;
  }
}
