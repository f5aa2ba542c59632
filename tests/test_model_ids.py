"""The Hub ids users copy (the README's real-checkpoint examples and the settings' defaults) are the ones the
Kubernetes ConfigMaps deploy, so a checkpoint that leaves the Hub is replaced in one review, everywhere."""

import re
from pathlib import Path

from services.asr.settings import ASRSettings
from services.imagegen.settings import ImageGenSettings
from services.translation.settings import TranslationSettings
from services.tts.settings import TTSSettings

REPO = Path(__file__).resolve().parents[1]
HUB_ID = re.compile(r"(?<![\w/.-])[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9]\b")


def deployed_ids() -> set[str]:
    text = "".join(path.read_text() for path in (REPO / "k8s" / "base").glob("*/kustomization.yaml"))
    return set(HUB_ID.findall(text))


def readme_ids() -> set[str]:
    readme = (REPO / "README.md").read_text()
    exports = [
        line for line in readme.splitlines() if re.match(r"export (TRANSLATION|ASR|TTS|IMAGEGEN)_", line)
    ]
    return {hub_id for line in exports for hub_id in HUB_ID.findall(line)}


def test_readme_examples_use_the_deployed_model_ids():
    ids = readme_ids()
    assert {"stable-diffusion-v1-5/stable-diffusion-v1-5", "openai/whisper-large-v2"} <= ids
    assert ids <= deployed_ids()


def test_settings_default_to_the_deployed_model_ids():
    defaults = {
        ASRSettings.model_fields["model"].default,
        ASRSettings.model_fields["assistant_model"].default,
        TTSSettings.model_fields["model"].default,
        TTSSettings.model_fields["vocoder"].default,
        TTSSettings.model_fields["vc_model"].default,
        ImageGenSettings.model_fields["model"].default,
        *TranslationSettings.model_fields["models"].default_factory().values(),
    }
    assert defaults <= deployed_ids()
