"""Which path an `auto` request is decoded by, from measurement: the assistant's speculative decoding, or plain
decoding (the continuous decode loop for short greedy clips, whole-request batches otherwise).

Which one is faster depends on the hardware, the models, the audio and the load: alone, assisted decoding needs
fewer main-model passes; under load, plain decoding shares each pass among many sequences. So no threshold is
fixed: every decode reports its model seconds per token (the encoder included: the audio must be encoded on
either path), and an exponentially weighted average is kept for each path per load level: the plain path's cost
per request falls as more sequences share a pass, and an assisted decode, one request at a time whatever waits,
costs more when the requests arriving meanwhile take the other cores to parse their uploads (so a decode under
load must not make the assistant look slow alone). A decision takes the lower estimate for the current load, and
keeps the path it took last time at that load unless the other is lower by more than 5 % (clips differ more than
two close paths do). Each estimate first gets a few live measurements, and then now and again a decision at a
load level tries the other path, so an estimate that went stale (the machine got busier, the audio changed) is
corrected: the `explore_every`-th decision first, then, while explorations keep confirming the preferred path,
twice as far apart each time (up to 8x), back to every `explore_every`-th once the preference changes. An
exploration costs a request the slower path; backing off keeps that cost small where one path is steadily
faster. Warm-up timings seed every load level's estimates until the first live measurement there replaces them.
"""

import threading
from dataclasses import dataclass

from .domain import DecodingPath

PATHS: tuple[DecodingPath, DecodingPath] = ("assisted", "plain")


def load_level(waiting: float) -> int:
    """The load level a number of waiting (or running) requests falls in: 1, 2, 4, 8, ... (the next power of 2),
    so that neighbouring loads share one estimate of each path."""
    return 1 << (max(1, round(waiting)) - 1).bit_length()


@dataclass
class Estimate:
    seconds_per_token: float | None = None
    samples: int = 0  # live measurements; a warm-up seed counts none

    def update(self, value: float, smoothing: float) -> None:
        if self.samples == 0 or self.seconds_per_token is None:
            self.seconds_per_token = value  # the first live measurement replaces a seed outright
        else:
            self.seconds_per_token += smoothing * (value - self.seconds_per_token)
        self.samples += 1


class MeasuredPathChoice:
    """Running estimates of each path's seconds per token, and the decisions they imply. Thread-safe: decisions
    are made in the model thread, but a test or a metrics reader may look from another."""

    max_backoff = 8  # explorations at most `explore_every` x this apart
    # The preferred path changes only when the other one is measured this much faster: each request's seconds per
    # token vary with its clip more than two close paths differ, and every flip brings explorations back.
    switch_margin = 0.05

    def __init__(self, smoothing: float = 0.25, explore_every: int = 16, min_samples: int = 2):
        self.smoothing, self.explore_every, self.min_samples = smoothing, explore_every, min_samples
        self.estimates: dict[tuple[DecodingPath, int], Estimate] = {}
        self.seeds: dict[DecodingPath, float] = {}  # seconds per token at warm-up
        self.decisions: dict[int, int] = {}
        # Per load level: the decision count of the next exploration, the current spacing, and what the last
        # exploration found preferred.
        self.next_exploration: dict[int, int] = {}
        self.spacing: dict[int, int] = {}
        self.explored_against: dict[int, DecodingPath] = {}
        self.incumbent: dict[int, DecodingPath] = {}  # per load level, what the last decision preferred
        self._lock = threading.Lock()

    def estimate(self, path: DecodingPath, load: float = 1) -> Estimate:
        key = (path, load_level(load))
        if key not in self.estimates:
            self.estimates[key] = Estimate(self.seeds.get(path))
        return self.estimates[key]

    def seed(self, path: DecodingPath, seconds: float, tokens: int) -> None:
        """A warm-up timing: used at each load level until the path's first live measurement there."""
        with self._lock:
            self.seeds[path] = seconds / max(tokens, 1)
            for (seeded, _), estimate in self.estimates.items():
                if seeded == path and estimate.samples == 0:
                    estimate.seconds_per_token = self.seeds[path]

    def record(self, path: DecodingPath, seconds: float, tokens: int, load: float = 1) -> None:
        """A served decode: `seconds` of model time that produced `tokens` tokens (end-of-text steps included),
        under `load`: sequences decoded together on average (plain), or requests present while it ran
        (assisted)."""
        with self._lock:
            self.estimate(path, load).update(seconds / max(tokens, 1), self.smoothing)

    def preferred(self, load: float) -> DecodingPath:
        """The path with the lower estimate at this load, with no exploration; unmeasured paths first."""
        with self._lock:
            return self._preferred(load)

    def choose(self, load: float) -> DecodingPath:
        """The decision for a request decoded with `load` requests waiting (itself included): the preferred path,
        except at this load level's explorations, which try the other one."""
        with self._lock:
            level = load_level(load)
            decision = self.decisions[level] = self.decisions.get(level, 0) + 1
            best = self.incumbent[level] = self._preferred(load, self.incumbent.get(level))
            if not self._measured_enough(load) or decision < self.next_exploration.get(level, self.explore_every):
                return best
            spacing = self.spacing.get(level, self.explore_every)
            if self.explored_against.get(level) == best:  # the last exploration confirmed it: look less often
                spacing = min(2 * spacing, self.max_backoff * self.explore_every)
            else:
                spacing = self.explore_every
            self.spacing[level], self.explored_against[level] = spacing, best
            self.next_exploration[level] = decision + spacing
            return PATHS[1 - PATHS.index(best)]

    def _measured_enough(self, load: float) -> bool:
        return all(self.estimate(path, load).samples >= self.min_samples for path in PATHS)

    def _preferred(self, load: float, incumbent: DecodingPath | None = None) -> DecodingPath:
        estimates = {path: self.estimate(path, load) for path in PATHS}
        # Paths short of live measurements first (the fewer, the sooner), so that both get measured here.
        short = [path for path in PATHS if estimates[path].samples < self.min_samples]
        if len(short) == 1:
            return short[0]
        if len(short) == 2 and estimates["assisted"].samples != estimates["plain"].samples:
            return min(short, key=lambda path: estimates[path].samples)
        known = [path for path in PATHS if estimates[path].seconds_per_token is not None]
        if not known:
            return "assisted"
        best = min(known, key=lambda path: estimates[path].seconds_per_token)
        if incumbent in known and incumbent != best:
            kept, other = estimates[incumbent].seconds_per_token, estimates[best].seconds_per_token
            if other * (1 + self.switch_margin) >= kept:
                return incumbent  # not faster by the margin: no flip
        return best
