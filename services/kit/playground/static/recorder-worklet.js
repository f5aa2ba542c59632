// Copies the microphone's samples (first channel) to the page, block by block.
class SampleCollector extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0]?.[0];
    if (channel?.length) this.port.postMessage(channel.slice());
    return true;
  }
}

registerProcessor("sample-collector", SampleCollector);
