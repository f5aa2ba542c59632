// Audio in the browser: WAV files from samples, the microphone as a WAV recording, streamed PCM playback.

export function wavBlob(samples, sampleRate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, value) => [...value].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((sample, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, sample)) * 0x7fff, true));
  return new Blob([view], { type: "audio/wav" });
}

// A toggle button: first press records from the microphone, second press stops and hands `onDone` a WAV Blob.
export function recordButton(button, onDone, onError) {
  let session = null;
  button.addEventListener("click", async () => {
    if (session) {
      const finished = session;
      session = null;
      button.textContent = "Record";
      button.setAttribute("aria-pressed", "false");
      onDone(await finished.stop());
      return;
    }
    if (!navigator.mediaDevices?.getUserMedia) {
      onError(new Error("recording needs the page over https (or on localhost)"));
      return;
    }
    try {
      session = await startRecording((secondsSoFar) => {
        button.textContent = `Stop (${secondsSoFar.toFixed(1)} s)`;
      });
      button.setAttribute("aria-pressed", "true");
    } catch (error) {
      onError(new Error(`microphone: ${error.message}`));
    }
  });
}

async function startRecording(onProgress) {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  const context = new AudioContext();
  await context.audioWorklet.addModule(new URL("recorder-worklet.js", import.meta.url));
  const source = context.createMediaStreamSource(stream);
  const collector = new AudioWorkletNode(context, "sample-collector");
  const chunks = [];
  let count = 0;
  collector.port.onmessage = (message) => {
    chunks.push(message.data);
    count += message.data.length;
    onProgress(count / context.sampleRate);
  };
  source.connect(collector);
  return {
    async stop() {
      collector.port.onmessage = null; // blocks still in flight would relabel the button
      source.disconnect();
      stream.getTracks().forEach((track) => track.stop());
      const samples = new Float32Array(count);
      let offset = 0;
      for (const chunk of chunks) {
        samples.set(chunk, offset);
        offset += chunk.length;
      }
      const blob = wavBlob(samples, context.sampleRate);
      await context.close();
      return blob;
    },
  };
}

// Plays 16-bit little-endian mono PCM as its chunks arrive, and keeps the samples for a WAV file at the end.
export class PcmPlayer {
  constructor(sampleRate) {
    this.sampleRate = sampleRate;
    this.samples = [];
    this.pendingByte = null;
    this.context = new AudioContext({ sampleRate });
    this.startAt = this.context.currentTime + 0.05;
  }

  push(bytes) {
    if (this.pendingByte !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.pendingByte;
      joined.set(bytes, 1);
      bytes = joined;
    }
    this.pendingByte = bytes.length % 2 ? bytes[bytes.length - 1] : null;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length - (bytes.length % 2));
    const chunk = new Float32Array(view.byteLength / 2);
    for (let i = 0; i < chunk.length; i++) chunk[i] = view.getInt16(i * 2, true) / 0x8000;
    if (!chunk.length) return;
    this.samples.push(chunk);
    const buffer = this.context.createBuffer(1, chunk.length, this.sampleRate);
    buffer.copyToChannel(chunk, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    this.startAt = Math.max(this.startAt, this.context.currentTime);
    source.start(this.startAt);
    this.startAt += buffer.duration;
  }

  wav() {
    const all = new Float32Array(this.samples.reduce((sum, chunk) => sum + chunk.length, 0));
    let offset = 0;
    for (const chunk of this.samples) {
      all.set(chunk, offset);
      offset += chunk.length;
    }
    return wavBlob(all, this.sampleRate);
  }
}
