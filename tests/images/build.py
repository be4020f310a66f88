"""Build the test model images from the host's busybox-static binary: `FROM scratch`, no registry involved."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import docker

__all__ = ["BASE_TAG", "MODELS", "build_base", "build_model_images", "busybox_binary"]

HERE = Path(__file__).parent
MODELS = sorted(p.stem for p in (HERE / "models").glob("*.sh"))
REPO = "inference-server-test/consumer"
BASE_TAG = f"{REPO}-base:latest"


def busybox_binary() -> Path:
    """The static busybox on this machine (Debian package busybox-static); FileNotFoundError when absent."""
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("busybox is not installed: apt-get install busybox-static")


def _build(client: docker.DockerClient, context: Path, tag: str) -> str:
    """Build context into tag (quietly, reusing layers) and return the tag."""
    client.images.build(path=str(context), tag=tag, rm=True, forcerm=True, labels={"inference-server.test": "consumer"})
    return tag


def build_base(client: docker.DockerClient) -> str:
    """A busybox image built from scratch (with /tmp and a shell); returns its tag."""
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        shutil.copy2(busybox_binary(), context / "busybox")
        (context / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /tmp /usr/bin '
            '&& chmod 1777 /tmp"]\n'
            "ENV PATH=/bin:/usr/bin\n"
            'CMD ["sh"]\n'
        )
        return _build(client, context, BASE_TAG)


def build_model_images(client: docker.DockerClient) -> dict[str, str]:
    """Build one image per script in models/ on top of the base; returns {model name: image tag}."""
    base = build_base(client)
    tags: dict[str, str] = {}
    for name in MODELS:
        script = (HERE / "models" / f"{name}.sh").read_bytes()
        tag = f"{REPO}-{name.replace('_', '-')}:{hashlib.sha256(script).hexdigest()[:12]}"
        with tempfile.TemporaryDirectory() as tmp:
            context = Path(tmp)
            (context / "run.sh").write_bytes(script)
            (context / "Dockerfile").write_text(f'FROM {base}\nCOPY run.sh /run.sh\nCMD ["sh", "/run.sh"]\n')
            tags[name] = _build(client, context, tag)
    return tags
