"""The mixed-traffic scenario: which user classes run and how many users each gets.

Kept free of Locust imports (Locust monkey-patches the standard library on import), so the runner
can plan a test without becoming a load generator itself.
"""

SERVICES = ("translation", "asr", "tts", "imagegen", "vit")
PROTOCOLS = ("rest", "grpc")

# Share of users per service in the mixed scenario: cheap, frequent calls (translation,
# classification) more often than expensive ones (image generation).
WEIGHTS = {"translation": 4, "asr": 2, "tts": 2, "imagegen": 1, "vit": 4}


# Class-name spelling of each service: acronyms stay upper-case (ASRRestUser), ViT keeps its own.
CLASS_PREFIXES = {
    "translation": "Translation",
    "asr": "ASR",
    "tts": "TTS",
    "imagegen": "ImageGen",
    "vit": "ViT",
}


def user_class(service: str, protocol: str) -> str:
    """The Locust user class for a service and protocol, e.g. TranslationGrpcUser (see users.py)."""
    return f"{CLASS_PREFIXES[service]}{protocol.capitalize()}User"


def split_users(users: int, classes: dict[str, float]) -> dict[str, int]:
    """Users per class in proportion to the weights, every class at least one (largest remainders).

    Locust's own weighted spawning leaves light classes without users when there are few users;
    exact counts keep a small test (CI's 10 users) exercising every service and protocol.
    """
    if users < len(classes):
        raise ValueError(
            f"{users} users cannot cover {len(classes)} user classes; use at least {len(classes)}"
        )
    spare = users - len(classes)
    total = sum(classes.values())
    shares = {name: spare * weight / total for name, weight in classes.items()}
    counts = {name: 1 + int(share) for name, share in shares.items()}
    by_remainder = sorted(classes, key=lambda name: shares[name] - int(shares[name]), reverse=True)
    for name in by_remainder[: users - sum(counts.values())]:
        counts[name] += 1
    return counts
