"""Downloads against a local HTTP server serving the data directory: sha256 check, caching."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import json
import logging
import re
import socket
import threading

import pytest

from alignment import main
from alignment.data import download, sources
from configs import evaluate as evaluate_config


@pytest.fixture(scope="module")
def server(data_dir):
  """An HTTP server on 127.0.0.1 serving ../shared/data; records each requested path."""
  requests: list[str] = []

  class Handler(http.server.SimpleHTTPRequestHandler):

    def log_message(self, *args):  # keep test output quiet
      pass

    def do_GET(self):
      requests.append(self.path)
      super().do_GET()

  httpd = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(Handler, directory=str(data_dir)))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
  httpd.shutdown()
  httpd.server_close()


def test_download_once_and_verify(server, tmp_path, data_dir):
  base_url, requests = server
  source = sources.get_source("xstest")
  path = download.fetch(source, tmp_path, base_url=base_url)
  assert path == tmp_path / source.path
  assert path.read_bytes() == (data_dir / source.path).read_bytes()
  n = len(requests)
  assert download.fetch(source, tmp_path, base_url=base_url) == path
  assert len(requests) == n  # cached: no second request
  path.write_text("tampered")  # a corrupted cache is fetched again
  assert download.fetch(source, tmp_path, base_url=base_url).read_bytes() == (
      data_dir / source.path).read_bytes()
  assert len(requests) == n + 1


def test_wrong_sha256_is_rejected_and_not_kept(server, tmp_path):
  base_url, _ = server
  bad = dataclasses.replace(sources.get_source("q_harm"), sha256="0" * 64)
  with pytest.raises(download.DownloadError, match="sha256 .* expected 0{64}; the file was not"):
    download.fetch(bad, tmp_path, base_url=base_url)
  assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_http_error_names_the_url(server, tmp_path):
  base_url, _ = server
  missing = dataclasses.replace(sources.get_source("q_harm"), path="no/such/file.json")
  with pytest.raises(download.DownloadError, match="no/such/file.json.*404"):
    download.fetch(missing, tmp_path, base_url=base_url)


def test_load_with_download_and_no_data_dir(server, tmp_path, monkeypatch):
  base_url, _ = server
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
  records = sources.load("hh_harmless", download=True, cache_dir=tmp_path, base_url=base_url)
  assert len(records) == 2312
  with pytest.raises(ValueError, match="ALIGNMENT_DATA_DIR"):
    sources.load("hh_harmless", download=False)  # download=False needs the data directory


def test_published_locations_are_pinned(data_dir):
  for s in sources.SOURCES.values():
    url, rel, sha = download.remote(s)
    assert url.startswith("https://") and re.search(r"/[0-9a-f]{40}/", url), s.name
    assert url.endswith(rel.split("/")[-1]), s.name
  # Alpaca is stored gzipped; the published file is the decompressed one, byte for byte.
  alpaca = sources.get_source("alpaca")
  raw = gzip.decompress((data_dir / alpaca.path).read_bytes())
  assert hashlib.sha256(raw).hexdigest() == download.remote(alpaca)[2]



# ---------------------------------------------------------------------------------------------
# A fresh machine: no data directory, the jobs fetch what they read.


def _fresh_machine(monkeypatch, tmp_path, mirror):
  """No data directory; a mirror (or none) and an empty cache in tmp_path."""
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
  monkeypatch.delenv(sources.OFFLINE_ENV, raising=False)
  monkeypatch.setenv(download.MIRROR_ENV, mirror)
  cache = tmp_path / "cache"
  monkeypatch.setenv(download.CACHE_DIR_ENV, str(cache))
  return cache


def test_fresh_machine_job_downloads_its_files_and_runs(server, tmp_path, monkeypatch, caplog):
  """The evaluate job's tiny preset with no data directory: each set it reads arrives in the
  cache from the loopback mirror with its registered sha256, announced by one line, and the
  job writes its report."""
  base_url, requests = server
  cache = _fresh_machine(monkeypatch, tmp_path, base_url)
  config = evaluate_config.get_config("tiny")
  config.workdir = str(tmp_path / "run")
  caplog.set_level(logging.INFO)
  main.run_job(config)
  names = list(config.sets)
  for name in names:
    source = sources.get_source(name)
    path = cache / source.path
    assert path.is_file(), name
    assert download.sha256_file(path) == source.sha256, name
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith(f"downloading {name} from ")]
    assert lines == [f"downloading {name} from {base_url}/{source.path} to {path}"]
  assert sorted(requests[-len(names):]) == sorted(f"/{sources.get_source(n).path}"
                                                  for n in names)
  assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written
  # The evaluation's progress: a rate and an ETA per batch (2 prompts of 8 sets, 4 a batch).
  progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("answered")]
  assert len(progress) == 4, progress
  for k, line in enumerate(progress, 1):
    assert re.fullmatch(rf"answered batch {k}/4 \({4 * k}/16 prompts\), [\d.e+-]+ answers/s, "
                        r"eta \S+", line), line
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert {s for s in result["sets"]} >= set(names) - {"xstest"}


def test_offline_error_names_the_file_and_the_two_ways(tmp_path, monkeypatch):
  _fresh_machine(monkeypatch, tmp_path, "")
  monkeypatch.setenv(sources.OFFLINE_ENV, "1")
  with pytest.raises(sources.DataUnavailableError) as info:
    sources.load("xstest")
  message = str(info.value)
  for part in ("'xstest'", "xstest/xstest_prompts.csv", "downloads are off",
               "ALIGNMENT_DATA_DIR", "data_dir", "allow the download", "ALIGNMENT_OFFLINE",
               sources.get_source("xstest").url):
    assert part in message, (part, message)
  assert not (tmp_path / "cache").exists()  # nothing was fetched


def test_unreachable_mirror_error_says_why_and_the_two_ways(tmp_path, monkeypatch):
  # A loopback port nothing listens on: the connection is refused at once.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  _fresh_machine(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")
  with pytest.raises(sources.DataUnavailableError) as info:
    sources.load("q_harm")
  message = str(info.value)
  assert f"http://127.0.0.1:{port}/safety-tuned-llamas/data/evaluation/Q-Harm.json failed" in message
  assert "ALIGNMENT_DATA_DIR" in message and "allow the download" in message
  assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
