"""Consumer benchmarks: task latency against raw `docker run`, makespan of two consumers, memory on a 1 GiB output.

Starts its own RabbitMQ container (RABBITMQ_IMAGE), the private API and consumers as subprocesses, and builds the
tiny busybox test images. `python -m bench consumer_tasks [--runs N] [--tasks N] [--output-mb N] [--skip ...]
[--step-times]`. With `--step-times` the consumers log at DEBUG and the median time of each step of a task is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import docker
import httpx
import pika
import pika.exceptions

from bench.common import MIB, ROOT, RssSampler, ServerProcess, free_port, median, print_table, write_results
from common.messages import CPU_QUEUE
from tests.images.build import build_model_images

TOKEN = "bench-internal-token-0123456789abcdef"
LABEL = {"inference-server.bench": "consumer"}
LABEL_ARG = "inference-server.bench=consumer"
_TIMINGS = re.compile(r"task (\S+) timings: (.*); total ([0-9.]+) s")


def start_rabbitmq(client: docker.DockerClient) -> tuple[str, Any]:
    """A RabbitMQ container of our own; its URL and the container."""
    port = free_port()
    image = os.environ.get("RABBITMQ_IMAGE", "inference-server-ci/rabbitmq:3")
    container = client.containers.run(
        image,
        detach=True,
        name=f"bench-consumer-rabbitmq-{secrets.token_hex(4)}",
        ports={"5672/tcp": ("127.0.0.1", port)},
        labels=LABEL,
    )
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    deadline = time.monotonic() + 120
    while True:
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
            return url, container
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                container.remove(force=True)
                raise RuntimeError("RabbitMQ did not start") from None
            time.sleep(1)


def start_consumer(
    api_url: str, amqp_url: str, work: Path, name: str, log_level: str = "WARNING"
) -> subprocess.Popen[bytes]:
    """`python -m job_consumer` with a unique id."""
    env = {
        **os.environ,
        "RABBITMQ_URL": amqp_url,
        "PRIVATE_API_URL": api_url,
        "INTERNAL_TOKEN": TOKEN,
        "CONSUMER_ID": f"bench-{name}-{secrets.token_hex(3)}",
        "GPU_DEVICE": "",
        "WORK_DIR": str(work / name),
        "PULL_MISSING_IMAGES": "false",
        "LOG_LEVEL": log_level,
    }
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "job_consumer"], cwd=ROOT, env=env, stdout=log, stderr=log)


class Api:
    """The calls the benchmark makes to the private API."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"X-Internal-Token": TOKEN}, timeout=120)

    def model(self, tag: str, **params: Any) -> str:
        """Register a CPU model; its id."""
        hid = f"bench-{secrets.token_hex(4)}"
        query = {
            "container_tag": tag,
            "human_readable_id": hid,
            "use_gpu": False,
            "timeout": 600,
            "mem_limit": "256m",
            "cpus": 1,
            **params,
        }
        response = self.http.post("/api/models/", params=query)
        response.raise_for_status()
        return hid

    def submit(self, hid: str, data: bytes) -> str:
        """Post a task; its uid (accepted when this returns)."""
        response = self.http.post("/api/tasks/", params={"human_readable_id": hid}, files={"zip_file": ("i.zip", data)})
        response.raise_for_status()
        return str(json.loads(response.content))

    def wait(self, uid: str, poll: float = 0.02, timeout: float = 900) -> dict[str, Any]:
        """Poll until the task is final; its status JSON."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = dict(self.http.get(f"/api/tasks/{uid}/status").json())
            if body["status"] in ("finished", "failed", "cancelled"):
                if body["status"] != "finished":
                    raise RuntimeError(f"task {uid} {body['status']}: {body.get('error')}")
                return body
            time.sleep(poll)
        raise RuntimeError(f"task {uid} did not finish in {timeout} s")


def wait_for_consumers(amqp_url: str, count: int, timeout: float = 120) -> None:
    """Wait until `count` consumers take messages from the CPU queue (a consumer process needs a while to start)."""
    deadline = time.monotonic() + timeout
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        while True:
            consumers = channel.queue_declare(queue=CPU_QUEUE, durable=True, passive=True).method.consumer_count
            if consumers >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {consumers} of {count} consumers are consuming after {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        connection.close()


def step_medians(logs: list[Path]) -> dict[str, float]:
    """The median seconds of each task step, from the consumers' DEBUG `timings:` lines (steps a task skipped: 0)."""
    tasks: list[dict[str, float]] = []
    for path in logs:
        for match in _TIMINGS.finditer(path.read_text(errors="replace")):
            steps = {"total": float(match.group(3))}
            for part in match.group(2).split(", "):
                name, _, seconds = part.rpartition(" ")
                steps[name] = float(seconds)
            tasks.append(steps)
    names = list(dict.fromkeys(name for steps in tasks for name in steps))
    return {name: median(steps.get(name, 0.0) for steps in tasks) for name in names}


def input_zip(size: int) -> bytes:
    """A zip holding `size` random bytes."""
    path = Path(tempfile.mkstemp(suffix=".zip")[1])
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("scan.bin", os.urandom(size))
    data = path.read_bytes()
    path.unlink()
    return data


def raw_docker_run(tag: str, data: bytes, work: Path) -> float:
    """Seconds for `docker run` of the image with bind mounts (unzip and zip of the output included)."""
    root = Path(tempfile.mkdtemp(dir=work))
    (root / "in").mkdir()
    (root / "out").mkdir()
    (root / "in.zip").write_bytes(data)
    started = time.monotonic()
    with zipfile.ZipFile(root / "in.zip") as archive:
        archive.extractall(root / "in")
    subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            LABEL_ARG,
            "-v",
            f"{root / 'in'}:/input:ro",
            "-v",
            f"{root / 'out'}:/output",
            tag,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with zipfile.ZipFile(root / "out.zip", "w") as archive:
        for path in (root / "out").rglob("*"):
            archive.write(path, path.relative_to(root / "out"))
    elapsed = time.monotonic() - started
    subprocess.run(["rm", "-rf", str(root)], check=False)
    return elapsed


def raw_docker_lanes(tag: str, tasks: int, lanes: int) -> float:
    """Seconds for `tasks` plain `docker run --rm` of the image, `lanes` at a time (the engine's own floor)."""
    counts = [tasks // lanes + (1 if i < tasks % lanes else 0) for i in range(lanes)]

    def lane(count: int) -> None:
        for _ in range(count):
            subprocess.run(
                ["docker", "run", "--rm", "--network", "none", "--label", LABEL_ARG, "-v", "/output", tag],
                check=True,
                stdout=subprocess.DEVNULL,
            )

    threads = [threading.Thread(target=lane, args=(count,)) for count in counts]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def main() -> int:
    """Run the three consumer benchmarks and print their tables."""
    parser = argparse.ArgumentParser(prog="python -m bench consumer_tasks")
    parser.add_argument("--runs", type=int, default=7, help="latency samples of each kind")
    parser.add_argument("--tasks", type=int, default=40, help="one-second tasks for the makespan")
    parser.add_argument("--output-mb", type=int, default=1024, help="output size for the memory benchmark")
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "makespan", "memory"])
    parser.add_argument("--step-times", action="store_true", help="consumers log at DEBUG; print each step's median")
    options = parser.parse_args()
    log_level = "DEBUG" if options.step_times else "WARNING"
    client = docker.from_env(timeout=300)
    images = build_model_images(client)
    amqp_url, rabbit = start_rabbitmq(client)
    work = Path(tempfile.mkdtemp(prefix="bench-consumer-"))
    results: dict[str, Any] = {}
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "private_api"],
        port=port,
        log_path=work / "private-api.log",
        env={
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DATA_DIR": str(work / "data"),
            "DATABASE_URL": "",
            "RABBITMQ_URL": amqp_url,
            "INTERNAL_TOKEN": TOKEN,
            "LOG_LEVEL": "WARNING",
        },
    )
    consumers: list[subprocess.Popen[bytes]] = []
    try:
        server.wait_healthy()
        api = Api(server.url)
        consumers.append(start_consumer(server.url, amqp_url, work, "one", log_level))
        wait_for_consumers(amqp_url, 1)
        if "latency" not in options.skip:
            data = input_zip(MIB)
            hid = api.model(images["trivial"])
            api.wait(api.submit(hid, data))  # warm-up: first use of the image and connections
            raw, served = [], []
            for _ in range(options.runs):
                raw.append(raw_docker_run(images["trivial"], data, work))
                started = time.monotonic()
                api.wait(api.submit(hid, data))
                served.append(time.monotonic() - started)
            results["latency"] = {
                "raw_median_s": median(raw),
                "consumer_median_s": median(served),
                "ratio": median(served) / median(raw),
                "runs": options.runs,
            }
            if options.step_times:
                results["latency"]["step_medians_s"] = step_medians([work / "one.log"])
        if "makespan" not in options.skip:
            consumers.append(start_consumer(server.url, amqp_url, work, "two", log_level))
            hid = api.model(images["sleep1"])
            data = input_zip(1024)
            # Both consumers must be taking messages before the clock starts (a process needs seconds to start).
            wait_for_consumers(amqp_url, 2)
            raw_lanes = raw_docker_lanes(images["sleep1"], options.tasks, 2)
            mark = (work / "one.log").stat().st_size
            started = time.monotonic()
            uids = [api.submit(hid, data) for _ in range(options.tasks)]
            for uid in uids:
                api.wait(uid, poll=0.2)
            makespan = time.monotonic() - started
            # 1 s of work per task, two consumers side by side.
            ideal = options.tasks * 1.0 / 2
            results["makespan"] = {
                "tasks": options.tasks,
                "consumers": 2,
                "makespan_s": makespan,
                "ideal_s": ideal,
                "ratio": makespan / ideal,
                "raw_docker_two_lanes_s": raw_lanes,
                "ratio_to_raw_docker": makespan / raw_lanes,
            }
            if options.step_times:
                tail = work / "one-makespan.log"
                with open(work / "one.log", "rb") as source:
                    source.seek(mark)
                    tail.write_bytes(source.read())
                results["makespan"]["step_medians_s"] = step_medians([tail, work / "two.log"])
            consumers.pop().terminate()
        if "memory" not in options.skip:
            hid = api.model(images["big_output"])
            with RssSampler(consumers[0].pid, interval=0.05) as sampler:
                uid = api.submit(hid, input_zip(1024))
                status = api.wait(uid, poll=0.5, timeout=1800)
            results["memory"] = {
                "output_mb": options.output_mb,
                "output_zip_bytes": status.get("output_size"),
                "rss_growth_mib": sampler.growth / MIB,
                "peak_rss_mib": sampler.peak_bytes / MIB,
            }
    finally:
        for process in consumers:
            process.terminate()
            process.wait(60)
        server.stop()
        rabbit.remove(force=True, v=True)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    rows = []
    if "latency" in results:
        r = results["latency"]
        rows.append(
            (
                "latency, 1 MiB input, trivial model (median)",
                f"{r['consumer_median_s']:.2f} s vs raw docker run {r['raw_median_s']:.2f} s",
                f"{r['ratio']:.2f}x (goal <= 1.5x)",
            )
        )
    if "makespan" in results:
        r = results["makespan"]
        rows.append(
            (
                f"makespan, {r['tasks']} one-second tasks, 2 consumers",
                f"{r['makespan_s']:.1f} s, ideal {r['ideal_s']:.1f} s; "
                f"2 lanes of raw docker run {r['raw_docker_two_lanes_s']:.1f} s",
                f"{r['ratio']:.2f}x (goal <= 1.1x); {r['ratio_to_raw_docker']:.2f}x raw docker",
            )
        )
    if "memory" in results:
        r = results["memory"]
        rows.append(
            (f"{r['output_mb']} MiB output", f"consumer RSS growth {r['rss_growth_mib']:.1f} MiB", "goal < 64 MiB")
        )
    print_table(("benchmark", "measured", "result"), rows)
    for name in ("latency", "makespan"):
        if "step_medians_s" in results.get(name, {}):
            print(f"\nmedian seconds per task step ({name}):")
            print_table(("step", "median s"), [(k, f"{v:.3f}") for k, v in results[name]["step_medians_s"].items()])
    write_results("consumer_tasks", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
