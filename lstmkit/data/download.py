"""Download of aclImdb: a progress bar, a pinned sha256, a cache directory, and a way out when offline."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from lstmkit.errors import DataError

log = logging.getLogger(__name__)

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
# 84,125,825 bytes. From tensorflow/datasets, tensorflow_datasets/url_checksums/imdb_reviews.txt (commit 333639b3);
# the same sha256 is pinned, independently, by other public loaders of this URL (Julia DataDeps registrations,
# a Rust and a Go IMDB loader). Its md5 7c2ac02c03563afcf9b574c7e56c153a is the one torchtext and Paddle pin.
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"


def default_cache_dir() -> Path:
    """$LSTMKIT_CACHE, else ~/.cache/lstmkit."""
    env = os.environ.get("LSTMKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lstmkit"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def download_imdb(
    cache_dir: str | os.PathLike | None = None,
    url: str = IMDB_URL,
    sha256: str | None = IMDB_SHA256,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """The path of aclImdb_v1.tar.gz in the cache, downloaded first unless a verified copy is there.

    Downloads to `<cache>/<name>.part` with a progress bar (tqdm), checks the sha256, then renames, so the
    cache never holds a half file under the real name. `sha256=None` verifies nothing (and says so).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = cache / (Path(urllib.parse.urlparse(url).path).name or "aclImdb_v1.tar.gz")
    by_hand = (f"download {url} by hand and save it as {dest}, or pass its path (or the unpacked aclImdb folder) "
               "with --data PATH")
    if dest.is_file():
        if sha256 is None:
            log.warning("using cached %s; no sha256 is pinned, so it is not verified", dest)
            return dest
        if _sha256_of(dest) == sha256:
            return dest
        log.warning("cached %s does not match its sha256; downloading it again", dest)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the cache folder {cache} ({error.strerror or error}); "
                        "set LSTMKIT_CACHE to a writable folder") from None
    part = dest.with_name(dest.name + ".part")
    digest, received, total = hashlib.sha256(), 0, None
    bar = None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress:
                from lstmkit.progress import progress_bar

                bar = progress_bar(total, unit="B", unit_scale=True, desc=dest.name)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({_failure_reason(error)}); {by_hand}") from None
    finally:
        if bar is not None:
            bar.close()
    if total is not None and received != total:
        part.unlink(missing_ok=True)
        raise DataError(f"download of {url} stopped after {received:,} of {total:,} bytes; try again, or {by_hand}")
    if sha256 is None:
        log.warning("no sha256 is pinned for %s: the download is not verified", url)
    elif digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {url}: sha256 {digest.hexdigest()}, expected {sha256}; the download "
                        f"was damaged or the file changed. Try again, or {by_hand}")
    os.replace(part, dest)
    return dest
