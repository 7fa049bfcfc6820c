"""Downloads against a local HTTP server serving the data directory: sha256 check, caching."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import re
import threading

import pytest

from alignment.data import download, sources


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
    sources.load("hh_harmless")  # without download=True the data directory is required


def test_published_locations_are_pinned(data_dir):
  for s in sources.SOURCES.values():
    url, rel, sha = download.remote(s)
    assert url.startswith("https://") and re.search(r"/[0-9a-f]{40}/", url), s.name
    assert url.endswith(rel.split("/")[-1]), s.name
  # Alpaca is stored gzipped; the published file is the decompressed one, byte for byte.
  alpaca = sources.get_source("alpaca")
  raw = gzip.decompress((data_dir / alpaca.path).read_bytes())
  assert hashlib.sha256(raw).hexdigest() == download.remote(alpaca)[2]

