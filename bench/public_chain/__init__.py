"""Benchmark of the public chain (issue 4): Traefik (HTTPS) -> public API -> private API, against the private API alone.

Run: `python -m bench public_chain [--size-mib 1024] [--repeat 3] [--poll-repeat 7] [--polls 500] [--concurrency 4]`.

The issue's comparison: what a client gets through the whole chain over HTTPS (Traefik terminating TLS, then the
public API relaying over HTTP) against what the same client gets from the private API directly over plain HTTP. The
same client does both: httpx, HTTP/1.1, one keep-alive connection per polling thread, the same requests. The public
API alone over plain HTTP (no Traefik, no TLS) is measured too, to tell the relay's share from Traefik's and TLS's.
Each transfer is measured `--repeat` times and each polling figure `--poll-repeat` times, the three paths interleaved
(in a rotating order), and reported as the median; CPU time per
request (or per MiB) of each process (client thread, Traefik, public API, private API) says where the time goes.

- polling: a pending task (answer 551), `--polls` sequential requests on one connection, and the same spread over
  `--concurrency` threads with a connection each;
- upload: a `--size-mib` stored zip posted as a task (multipart, as users do); download: a task's output of that size;
- the public API's peak VmRSS growth over the chain's uploads and downloads (sampled every 5 ms).
Starts a private API (SQLite) and a public API as local processes and Traefik (`TRAEFIK_IMAGE`, default traefik:v3)
in a labelled container on the host network with the compose file's entry point settings; without a Traefik image
the chain is measured without it and the results say so. Prints tables; writes bench/results/public_chain.json.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see bench/public_chain/run.py), print the tables, write the results."""
    from bench.public_chain.run import run

    return run(argv)
