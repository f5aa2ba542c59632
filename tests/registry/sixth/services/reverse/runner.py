"""The sixth service's model: reverses each text (no weights to load)."""


class ReverseRunner:
    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def predict_batch(self, works) -> list[str]:
        return [work.payload.text[::-1] for work in works]
