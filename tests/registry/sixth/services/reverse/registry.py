"""What the platform, images, tools and load tests need to know about the sixth service."""

from services.registry import ServiceEntry

SERVICE = ServiceEntry(
    name="reverse",
    env_prefix="REVERSE_",
    title="Reverse",
    # No checkpoints to build; its load-test users live in its own folder.
    load_users="services.reverse.load",
)
