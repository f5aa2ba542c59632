"""What the check measured, written as a markdown table (results.md) and as JSON (results.json)."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Throughput:
    """One timed workload: `requests` requests sent one at a time or all at once."""

    workload: str
    mode: str
    requests: int
    seconds: float
    # What the requests produced or consumed, per second of wall time: images, audio seconds (TTS output, ASR input).
    output_unit: str | None = None
    output_amount: float | None = None
    mean_batch_size: float | None = None  # requests per model call, from the server's own metrics

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def output_per_s(self) -> float | None:
        return None if self.output_amount is None else self.output_amount / self.seconds

    @property
    def real_time_factor(self) -> float | None:
        """Wall seconds per second of audio (below 1: faster than real time); audio workloads only."""
        if self.output_unit != "audio s" or not self.output_amount:
            return None
        return self.seconds / self.output_amount


@dataclass
class Exactness:
    """Whether two ways of serving the same requests gave the same results."""

    check: str
    matched: int
    total: int
    detail: str = ""

    @property
    def all_matched(self) -> bool:
        return self.matched == self.total


@dataclass
class ServiceReport:
    name: str
    ready_s: float | None = None
    rest: str = "not run"  # "ok" or what failed
    grpc: str = "not run"
    error: str | None = None
    throughput: list[Throughput] = field(default_factory=list)
    exactness: list[Exactness] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.rest == "ok" and self.grpc == "ok"


@dataclass
class Report:
    device: str
    dtype: str
    sizes: str
    models: dict[str, str]  # the settings naming each service's models
    settings: dict[str, str] = field(default_factory=dict)  # other settings the services were given
    services: list[ServiceReport] = field(default_factory=list)
    build_s: float | None = None
    total_s: float | None = None

    @property
    def ok(self) -> bool:
        return bool(self.services) and all(s.ok for s in self.services)

    def to_json(self) -> dict:
        def service(s: ServiceReport) -> dict:
            data = asdict(s)
            data["throughput"] = [
                {**asdict(t), "requests_per_s": t.requests_per_s, "output_per_s": t.output_per_s,
                 "real_time_factor": t.real_time_factor}
                for t in s.throughput
            ]
            data["exactness"] = [{**asdict(e), "all_matched": e.all_matched} for e in s.exactness]
            data["ok"] = s.ok
            return data

        return {
            "device": self.device,
            "dtype": self.dtype,
            "sizes": self.sizes,
            "models": self.models,
            "settings": self.settings,
            "build_s": self.build_s,
            "total_s": self.total_s,
            "ok": self.ok,
            "services": [service(s) for s in self.services],
        }

    def to_markdown(self) -> str:
        def num(value: float | None, digits: int = 2) -> str:
            return "" if value is None else f"{value:.{digits}f}"

        lines = [
            f"# GPU check: {self.device}, {self.dtype}, {self.sizes} sizes",
            "",
            "| service | ready (s) | REST | gRPC | workload | mode | requests | seconds | requests/s | output/s "
            "| RTF | mean batch |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in self.services:
            head = f"| {s.name} | {num(s.ready_s, 1)} | {s.rest} | {s.grpc}"
            if not s.throughput:
                lines.append(f"{head} | {s.error or 'no workload ran'} | | | | | | | |")
            for i, t in enumerate(s.throughput):
                output = "" if t.output_per_s is None else f"{t.output_per_s:.2f} {t.output_unit}/s"
                lines.append(
                    f"{head if i == 0 else '| ' + s.name + ' | | |'} | {t.workload} | {t.mode} | {t.requests} "
                    f"| {num(t.seconds)} | {num(t.requests_per_s)} | {output} | {num(t.real_time_factor, 3)} "
                    f"| {num(t.mean_batch_size, 1)} |"
                )
        lines += [
            "",
            "RTF: wall seconds per second of audio (ASR: audio in, TTS: audio out); below 1 is faster than real "
            "time. Mean batch: requests per model call, from the server's serving_batch_size metric.",
            "",
            "| service | exactness check | matched | detail |",
            "|---|---|---|---|",
        ]
        for s in self.services:
            for e in s.exactness:
                verdict = f"{e.matched}/{e.total}" + ("" if e.all_matched else " (MISMATCH)")
                lines.append(f"| {s.name} | {e.check} | {verdict} | {e.detail} |")
        failures = [s for s in self.services if not s.ok]
        built = "" if self.build_s is None else f"models built in {self.build_s:.1f} s, "
        lines += [
            "",
            f"models: {json.dumps(self.models)}",
            f"settings: {json.dumps(self.settings)}",
            "",
            f"{built}check finished in {num(self.total_s, 1)} s: " + (
                "every service started, served and answered over REST and gRPC" if self.ok else
                "FAILED: " + "; ".join(f"{s.name}: {s.error or s.rest + ' / ' + s.grpc}" for s in failures)
            ),
        ]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        markdown, data = out_dir / "results.md", out_dir / "results.json"
        markdown.write_text(self.to_markdown(), encoding="utf-8")
        data.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return markdown, data
