"""The mixed-traffic scenario: which user classes run and how many users each gets.

Kept free of Locust imports (Locust monkey-patches the standard library on import), so the runner
can plan a test without becoming a load generator itself.
"""

from services.registry import entries

# Every declared service (services/<name>/registry.py): its share of users in the mixed scenario (cheap,
# frequent calls such as translation and classification more often than image generation), the class-name
# spelling of its users (acronyms stay upper-case: ASRRestUser; ViT keeps its own) and the module holding them.
REGISTRY = entries()
SERVICES = tuple(REGISTRY)
PROTOCOLS = ("rest", "grpc")
WEIGHTS = {name: entry.load_weight for name, entry in REGISTRY.items()}
CLASS_PREFIXES = {name: entry.title for name, entry in REGISTRY.items()}
USER_MODULES = {name: entry.load_users for name, entry in REGISTRY.items()}


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
