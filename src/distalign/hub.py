"""Reaching the Hugging Face Hub, or knowing at once that it cannot be reached.

Without a network, huggingface_hub retries each request for half a minute or more before
transformers or datasets give up. Before the first hub download, ``offline_if_unreachable``
looks the hub's host up (once per process). When it does not resolve, the libraries switch to
offline mode, as ``HF_HUB_OFFLINE=1`` would have them: a model or data set already in the local
Hugging Face cache loads from there, anything else fails at once, and the error says why.

    why = offline_if_unreachable()   # None: the hub answers, or offline mode was already on
"""

from __future__ import annotations

import logging
import os
import socket
from functools import cache
from urllib.parse import urlparse

log = logging.getLogger(__name__)


@cache
def offline_if_unreachable() -> str | None:
    """Why the hub cannot be reached (its host does not resolve), after switching the
    libraries to offline mode and saying so; None when it can, or when offline mode is on."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    host = urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT
    try:
        socket.getaddrinfo(host, 443)
        return None
    except OSError as e:
        why = f"{host} does not resolve ({e.strerror or e})"
    go_offline()
    log.warning("%s: no network, so only the local Hugging Face cache is read (offline mode)", why)
    return why


def go_offline() -> None:
    """Offline mode for huggingface_hub, transformers and datasets in this process and its
    children (each library reads the switch once, at import)."""
    import datasets
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # huggingface_hub and transformers
    datasets.config.HF_HUB_OFFLINE = True


def in_cache(repo_id: str, filename: str, repo_type: str = "model") -> bool:
    """Whether ``filename`` of ``repo_id`` (its default revision) is in the local cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=repo_type), str)
    except HFValidationError:  # not a repo id at all
        return False
