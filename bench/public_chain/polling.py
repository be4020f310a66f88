"""Polling a pending task: sequential on one connection, and spread over threads with a connection each."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from functools import partial

import httpx

from bench.public_chain.measure import Samples, measure, rotated
from bench.public_chain.options import PATHS
from bench.public_chain.stack import Processes


def poll_once(client: httpx.Client, uid: str) -> None:
    """One poll of the pending task; it must answer 551."""
    res = client.get(f"/api/tasks/{uid}")
    if res.status_code != 551:
        raise RuntimeError(f"polling answered {res.status_code}, not 551: {res.text[:200]}")


def poll_sequential(client: httpx.Client, uid: str, polls: int) -> float:
    """Polls per second on one keep-alive connection, one after another."""
    for _ in range(20):
        poll_once(client, uid)
    start = time.perf_counter()
    for _ in range(polls):
        poll_once(client, uid)
    return polls / (time.perf_counter() - start)


def poll_concurrent(make_client: Callable[[], httpx.Client], uid: str, polls: int, threads: int) -> float:
    """Polls per second with `threads` threads, each on its own connection, `polls` in all."""
    clients = [make_client() for _ in range(threads)]
    for client in clients:
        poll_once(client, uid)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def work(client: httpx.Client) -> None:
        barrier.wait()
        try:
            for _ in range(polls // threads):
                poll_once(client, uid)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(client,)) for client in clients]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    for client in clients:
        client.close()
    if errors:
        raise errors[0]
    return (polls // threads) * threads / elapsed


def measure_polling(
    processes: Processes,
    client: dict[str, httpx.Client],
    make_client: Callable[[str], httpx.Client],
    pending: str,
    args: argparse.Namespace,
) -> tuple[Samples, Samples]:
    """The sequential and the concurrent polling measurements of each path, `--poll-repeat` rounds interleaved."""
    polls: Samples = {path: [] for path in PATHS}
    concurrent: Samples = {path: [] for path in PATHS}
    for run in range(args.poll_repeat):
        for path in rotated(PATHS, run):
            polls[path].append(
                measure(processes, partial(poll_sequential, client[path], pending, args.polls), args.polls)
            )
        for path in rotated(PATHS, run):
            concurrent[path].append(
                measure(
                    processes,
                    partial(poll_concurrent, partial(make_client, path), pending, args.polls, args.concurrency),
                    args.polls,
                )
            )
    return polls, concurrent
