"""Images kept in memory for `response_format="url"`, served back by GET /v1/images/files/{id}.

Ids are unguessable (secrets.token_urlsafe); each image answers until its time is up, and the store
is bounded by count and bytes, the oldest images evicted first. The store lives in one process:
behind several replicas a link answers only from the replica that made it, so such deployments
need session affinity or b64_json.
"""

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Gauge

from services.kit.errors import PayloadTooLarge

STORED_IMAGES = Gauge("imagegen_url_store_images", "Images held for response_format=url links")
STORED_BYTES = Gauge("imagegen_url_store_bytes", "Encoded bytes held for response_format=url links")


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    media_type: str
    expires_at: float  # on the store's clock


class ImageStore:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_images: int,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ttl_s = ttl_s
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.clock = clock
        self._images: OrderedDict[str, StoredImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # responses are encoded in worker threads

    def put(self, data: bytes, media_type: str) -> str:
        """Keep an image and return its id; older images make room."""
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(
                f"response_format: a {len(data)}-byte image exceeds the link store's "
                f"{self.max_bytes} bytes (IMAGEGEN_URL_STORE_MAX_BYTES); ask for b64_json",
                field="response_format",
            )
        image_id = secrets.token_urlsafe(24)
        with self._lock:
            self._drop_expired()
            while self._images and (
                len(self._images) >= self.max_images or self._bytes + len(data) > self.max_bytes
            ):
                self._remove(next(iter(self._images)))
            self._images[image_id] = StoredImage(data, media_type, self.clock() + self.ttl_s)
            self._bytes += len(data)
            self._publish()
        return image_id

    def get(self, image_id: str) -> StoredImage | None:
        """The image, or None when the id is unknown, expired or evicted."""
        with self._lock:
            image = self._images.get(image_id)
            if image is None:
                return None
            if image.expires_at <= self.clock():
                self._remove(image_id)
                self._publish()
                return None
            return image

    def remaining_s(self, image: StoredImage) -> float:
        return max(0.0, image.expires_at - self.clock())

    def _drop_expired(self) -> None:
        now = self.clock()
        # Insertion order is expiry order: every image gets the same time to live.
        while self._images:
            oldest_id, oldest = next(iter(self._images.items()))
            if oldest.expires_at > now:
                break
            self._remove(oldest_id)

    def _remove(self, image_id: str) -> None:
        self._bytes -= len(self._images.pop(image_id).data)

    def _publish(self) -> None:
        STORED_IMAGES.set(len(self._images))
        STORED_BYTES.set(self._bytes)
