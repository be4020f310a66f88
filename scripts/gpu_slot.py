"""Start replica i of a GPU host's consumers on the i-th GPU: GPU_DEVICES (comma-separated) or 0..GPU_COUNT-1.

docker-compose.gpu-host.yaml runs GPU_COUNT replicas of one service with this as their command. Compose numbers
replicas 1..N and keeps the numbers across re-creation, so replica i always takes the same GPU and CONSUMER_ID
(`<host>-gpu<device>`, the engine's host name unless GPU_HOST_NAME is set). A device `cpu` makes that replica a
CPU-only consumer (`<host>-cpu<i>`): a host that lends its CPUs, or a test on a machine without GPUs.
"""

from __future__ import annotations

import os
import socket
import sys

import docker


def main() -> None:
    """Find this container's replica number, pick its GPU and name, then become `python -m job_consumer`."""
    client = docker.from_env()
    try:
        number = int(client.containers.get(socket.gethostname()).labels["com.docker.compose.container-number"])
        host = os.environ.get("GPU_HOST_NAME") or str(client.info()["Name"])
    finally:
        client.close()
    count = int(os.environ.get("GPU_COUNT") or "1")
    devices = [d.strip() for d in os.environ.get("GPU_DEVICES", "").split(",") if d.strip()]
    devices = devices or [str(index) for index in range(count)]
    if number > len(devices):
        sys.exit(f"gpu slot: replica {number} has no GPU: GPU_DEVICES lists {len(devices)}, GPU_COUNT is {count}")
    device = devices[number - 1]
    cpu_only = device.lower() == "cpu"
    os.environ["GPU_DEVICE"] = "" if cpu_only else device
    if not os.environ.get("CONSUMER_ID"):
        name = f"{host}-cpu{number}" if cpu_only else f"{host}-gpu{device}"
        os.environ["CONSUMER_ID"] = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
    os.execv(sys.executable, [sys.executable, "-m", "job_consumer", *sys.argv[1:]])


if __name__ == "__main__":
    main()
